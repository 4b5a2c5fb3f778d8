"""GPU training-step benchmark: Llama shapes from config (random weights), sequences of 1024 tokens, K
responses per prompt, one NCA optimizer step at a time. Never part of CI or ``run_all.py``; the one-command
acceptance run that drives it is ``benchmarks/gpu_check.py`` (``make gpu-check``).

Without CUDA it prints a message and exits 0 (nothing is measured, no result is written).
``--cpu-smoke`` runs a tiny configuration on the CPU through the same code (for the smoke tests only;
it writes no result file).

Setup (one FRESH process per (mode, K), so the peak memory is that configuration's own):
  model      ``LlamaConfig`` with Mistral-7B's shape (hidden 4096, MLP 14336, 32 layers, 32 heads / 8 KV
             heads, vocabulary 32000, untied head; 7.24 B parameters) or TinyLlama-1.1B's shape (hidden
             2048, MLP 5632, 22 layers, 32 heads / 4 KV heads, vocabulary 32000, untied head; 1.10 B),
             random weights; SDPA attention; gradient checkpointing on (``--no-gradient-checkpointing``);
             ncakit's ``LogprobHead`` installed as ``ncakit.scale.train`` does. Nothing is downloaded.
  modes
    lora     7B, bf16 weights built directly on the GPU; peft LoRA r=16, alpha=16 on q/k/v/o/gate/up/down
             (the recipes' targets), dropout 0; base frozen; AdamW (fp32 adapter weights and states);
    qlora    7B, 4-bit: built in bf16 on the GPU, ``save_pretrained`` to a temporary directory (safetensors,
             ~14.5 GB of disk), reloaded with ``BitsAndBytesConfig(load_in_4bit, nf4, double quantisation,
             bf16 compute)`` -- transformers' own quantising loader, no download -- then
             ``peft.prepare_model_for_kbit_training`` (non-quantised weights to fp32, checkpointing) and the
             same LoRA; needs CUDA and bitsandbytes;
    full     7B, every weight trainable in bf16 with AdamW whose states are bf16 too ("pure bf16": weights
             14.5 GB + gradients 14.5 GB + states 29 GB fit one 80 GB GPU); not in gpu_check's defaults;
    full1b   1.1B full fine-tuning with fp32 MASTER weights, gradients and AdamW states, compute under
             ``torch.autocast(bfloat16)`` (the usual mixed-precision recipe, not pure bf16);
    fsdp2    the same 1.1B model wrapped with ``torch.distributed.fsdp.fully_shard`` (each decoder layer,
             then the root) on a ONE-process group (nccl on a GPU, gloo on the CPU; a free local port),
             ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over fp32 sharded masters:
             the FSDP2 code path on one device (its overhead, not its scaling).
  reference  lora / qlora: the adapter-disabled model, recomputed EVERY step inside the timed step
             (``ncakit.scale.reference.reference_logps_from_adapter``; no second model). full / full1b /
             fsdp2: one no-grad forward of the same model before the first step (the initial model =
             the reference), not timed. Either way policy == reference at step 0 (LoRA's B = 0 at
             init), so the step-0 NCA loss is exactly 2 ln 2 (MATH.md); it is recorded as
             ``step0_loss`` and ``step0_loss_minus_2ln2``, with ``step0_max_abs_logratio`` = max |policy -
             reference| over the batch.
  batch      ``--prompts`` prompts x K responses, every sequence ``--prompt-len`` + ``--response-len``
             = 512 + 512 = 1024 tokens (random ids); one optimizer step = (reference forward) + forward +
             backward of the B*K sequences (``ncakit.scale.forward.batch_logps`` + ``ncakit.losses.nca``)
             + ``optimizer.step()``.

Measured: seconds per step (``--warmup`` untimed steps, then ``--steps`` timed, CUDA-synchronised; step 0
is the first warm-up step), tokens/s/GPU (B*K*1024 / median step time), peak memory
(``torch.cuda.max_memory_allocated`` over the timed steps, after the warm-up, so optimizer states are in it;
``peak_memory_gib_with_setup`` also covers building / quantising), and MFU. On the CPU (smoke) the peak is
the process's peak RSS.

FLOP count (model FLOPs; gradient-checkpointing recomputation NOT counted, so this is MFU, not HFU):
  N        = parameters of the decoder's matmuls (attention + MLP; embeddings and the head excluded)
  L, d, T  = layers, hidden size, sequence length;  causal attention counted as half of T^2
  forward per token        2 N + 2 L d T                (QK^T and AV: 2 x 2 d T per layer, halved)
  full  fwd+bwd per token  6 N + 6 L d T                (backward = 2 x forward: input and weight grads)
  LoRA  fwd+bwd per token  4 N + 6 L d T + 6 N_lora     (frozen weights: no weight gradients)
  head (response tokens only: LogprobHead projects only the scored positions)
        full 6 V d, LoRA 4 V d per response token
  reference forward inside the step (lora / qlora): + 2 N + 2 L d T per token + 2 V d per response token
        (it is work the step must do; ``ref_flops`` holds it separately)
  qlora is counted like lora (the 4-bit dequantisation is not counted).
  MFU = FLOPs per step / step time / peak dense bf16 FLOP/s of the device (H100 SXM and H200: 989 TFLOP/s,
  H100 PCIe 756, A100 312; ``--peak-tflops`` overrides). ``hfu`` adds the recomputed forward
  (2 N + 2 L d T per token) when gradient checkpointing is on.
Targets (``targets`` in each row, ``None`` where one does not apply): 7B LoRA bf16 at K = 4 on an H100/H200
``mfu>=0.40`` (published DPO anchors 19-27%); QLoRA 7B at 1 x 4 x 1024 tokens ``qlora_peak<=16GB`` (GiB,
i.e. what a "16 GB" card holds, 2^30 bytes each); ``step0_loss==2ln2`` (|loss - 2 ln 2| <= 1e-6).

Usage: python benchmarks/bench_gpu_step.py [--modes lora full] [--ks 2 4] [--prompts 2] [--steps 5]
Writes benchmarks/results/gpu_step.json (only when run on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, summarize, write_result  # noqa: E402

SHAPE_7B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000)
SHAPE_1B = dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000)
SHAPE_SMOKE = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512)
MODES = ["lora", "qlora", "full", "full1b", "fsdp2"]
MODE_SHAPE = {"lora": SHAPE_7B, "qlora": SHAPE_7B, "full": SHAPE_7B, "full1b": SHAPE_1B, "fsdp2": SHAPE_1B}
LORA_MODES = ("lora", "qlora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0)]
TWO_LN2 = 2 * math.log(2)
STEP0_TOL = 1e-6
MFU_TARGET = 0.40
QLORA_PEAK_TARGET_GIB = 16.0


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def step_flops(
    shape: dict,
    *,
    mode: str,
    seq_len: int,
    response_len: int,
    n_seqs: int,
    n_lora: int,
    recompute: bool,
    ref_forward: bool = False,
) -> dict:
    """Model FLOPs of one optimizer step (see the module docstring), and with recomputation.

    ``mode``: "full" (also full1b, fsdp2) or "lora" (also qlora); ``ref_forward``: the step also runs
    the reference forward (the adapter-disabled model), counted as model FLOPs."""
    mode = "lora" if mode in LORA_MODES else "full"
    d, L, f, V = shape["hidden"], shape["layers"], shape["intermediate"], shape["vocab"]
    head_dim = d // shape["heads"]
    kv = shape["kv_heads"] * head_dim
    n_matmul = L * (d * d + 2 * d * kv + d * d + 3 * d * f)  # q, k, v, o, gate, up, down
    tokens = n_seqs * seq_len
    attn_fwd = 2 * L * d * seq_len  # per token, causal half
    fwd = 2 * n_matmul + attn_fwd
    if mode == "full":
        per_token = 6 * n_matmul + 3 * attn_fwd
        head = 6 * V * d
    else:
        per_token = 4 * n_matmul + 3 * attn_fwd + 6 * n_lora
        head = 4 * V * d
    ref = tokens * fwd + n_seqs * response_len * 2 * V * d if ref_forward else 0
    model = tokens * per_token + n_seqs * response_len * head + ref
    return {
        "n_matmul_params": n_matmul,
        "tokens": tokens,
        "model_flops": float(model),
        "ref_flops": float(ref),
        "hardware_flops": float(model + (tokens * fwd if recompute else 0)),
    }


def mfu(flops: float, seconds: float, peak_tflops_value: float | None) -> float | None:
    """Model FLOPs utilisation: FLOPs per step / seconds per step / the device's peak FLOP/s."""
    if not peak_tflops_value or not seconds > 0:
        return None
    return flops / seconds / (peak_tflops_value * 1e12)


def is_h100_class(device_name: str | None) -> bool:
    return bool(device_name) and ("H100" in device_name or "H200" in device_name)


def evaluate_targets(row: dict) -> tuple[dict, dict]:
    """``(targets, target_values)``: each target met (True), missed (False) or not applicable (None),
    and the measured value it was judged on. A missed target is a result, not an error."""
    mode, k = row.get("mode"), row.get("k")
    full_size = row.get("seq_len") == 1024 and row.get("shape") == "7b"
    value_mfu = row.get("mfu")
    mfu_ok = None
    if mode == "lora" and k == 4 and full_size and is_h100_class(row.get("device")) and value_mfu is not None:
        mfu_ok = value_mfu >= MFU_TARGET
    peak = row.get("peak_memory_gib")
    peak_ok = None
    if mode == "qlora" and k == 4 and full_size and row.get("prompts") == 1 and peak is not None:
        peak_ok = peak <= QLORA_PEAK_TARGET_GIB
    s0 = row.get("step0_loss")
    s0_ok = None if s0 is None else bool(abs(s0 - TWO_LN2) <= STEP0_TOL)
    targets = {"mfu>=0.40": mfu_ok, "qlora_peak<=16GB": peak_ok, "step0_loss==2ln2": s0_ok}
    values = {"mfu>=0.40": value_mfu, "qlora_peak<=16GB": peak, "step0_loss==2ln2": s0}
    return targets, values


def versions() -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        out["cudnn"] = torch.backends.cudnn.version()
    for mod in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed here
            out[mod] = None
    return out


def llama_config(shape: dict, attn: str = "sdpa"):
    """The Llama config of a shape dict (hidden, intermediate, layers, heads, kv_heads, vocab), untied head."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        attn_implementation=attn,
    )


def _build(config, device, dtype):
    """A random-weight LlamaForCausalLM built directly on ``device`` in ``dtype``."""
    import torch
    from transformers import LlamaForCausalLM

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.config.use_cache = False
    return model


def _build_4bit(config, tmpdir: str | None, attn: str) -> tuple[object, dict]:
    """7B in bf16 on the GPU -> save_pretrained (temp dir) -> from_pretrained with a 4-bit nf4 config."""
    import shutil
    import tempfile

    import torch
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    times = {}
    t = time.perf_counter()
    model = _build(config, torch.device("cuda"), torch.bfloat16)
    times["build_bf16_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="gpu_check_qlora_", dir=tmpdir) as d:
        free = shutil.disk_usage(d).free
        need = 2 * sum(p.numel() for p in model.parameters()) * 1.05
        if free < need:
            raise RuntimeError(
                f"qlora: {free / 1e9:.1f} GB free under {d}, the bf16 checkpoint needs {need / 1e9:.1f} GB "
                "(set --tmpdir / TMPDIR to a larger disk)"
            )
        t = time.perf_counter()
        model.save_pretrained(d)
        times["save_s"] = time.perf_counter() - t
        del model
        torch.cuda.empty_cache()
        t = time.perf_counter()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = LlamaForCausalLM.from_pretrained(
            d, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}, attn_implementation=attn
        )
        times["load_4bit_s"] = time.perf_counter() - t
    model.config.use_cache = False
    return model, times


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrap_fsdp2(model, device):
    """fully_shard each decoder layer, then the root, on a 1-process group (bf16 params, fp32 reduce)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (1,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def worker(a, mode: str, k: int) -> dict:
    import contextlib

    import torch

    from ncakit.losses import nca
    from ncakit.scale.data import KResponseCollator
    from ncakit.scale.forward import batch_logps, fused_batch_loss, install_logprob_head
    from ncakit.scale.model import enable_checkpointing
    from ncakit.scale.reference import reference_logps_from_adapter

    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    smoke = a.cpu_smoke
    if mode == "qlora" and smoke:
        raise ValueError("qlora: bitsandbytes 4-bit needs CUDA; not part of the CPU smoke")
    device = torch.device("cpu" if smoke else "cuda")
    tiny = smoke or getattr(a, "tiny", False)
    shape = SHAPE_SMOKE if tiny else MODE_SHAPE[mode]
    if mode in ("full1b", "fsdp2"):
        dtype = torch.float32  # fp32 master weights; bf16 compute via autocast / FSDP2's policy
    else:
        dtype = torch.float32 if smoke else torch.bfloat16
    config = llama_config(shape, a.attn)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    build_times = {}
    if mode == "qlora":
        model, build_times = _build_4bit(config, getattr(a, "tmpdir", None), a.attn)
    else:
        model = _build(config, device, dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    install_logprob_head(model)
    gc = not a.no_gradient_checkpointing
    gc_kwargs = {"use_reentrant": False}
    if gc and mode != "qlora":  # peft's k-bit preparation turns checkpointing on itself
        enable_checkpointing(model, gc_kwargs)
    n_lora = 0
    if mode in LORA_MODES:
        from peft import LoraConfig, get_peft_model

        if mode == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs=gc_kwargs
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
            ),
        )
        # peft keeps the adapters in fp32 over a bf16 base (autocast_adapter_dtype=True, its default)
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if gc:
            model.enable_input_require_grads()
    if mode == "fsdp2":
        model = _wrap_fsdp2(model, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    if mode == "full1b" and device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext

    g = torch.Generator().manual_seed(0)
    P, R, V = a.prompt_len, a.response_len, shape["vocab"]
    rows = [
        {
            "prompt_ids": torch.randint(3, V, (P,), generator=g).tolist(),
            "response_ids": [torch.randint(3, V, (R,), generator=g).tolist() for _ in range(k)],
            "rewards": torch.rand(k, generator=g).tolist(),
        }
        for _ in range(a.prompts)
    ]
    batch = KResponseCollator(pad_token_id=0, k=k)(rows)
    batch = {key: v.to(device) for key, v in batch.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    share = bool(getattr(a, "prompt_sharing", False))
    fused = bool(getattr(a, "fused_head", False))
    if fused and mode == "fsdp2":
        raise ValueError("fused_head: single process, unwrapped models only (not fsdp2)")
    fixed_ref = None
    if mode not in LORA_MODES:  # the initial model is the reference: one no-grad forward, not timed
        model.eval()
        with torch.no_grad(), autocast():
            fixed_ref = batch_logps(model, batch, share_prompt=share).detach()
        model.train()

    losses, logratio = [], []

    def step():
        if fixed_ref is None:  # adapter disabled, no grad, [B, K]
            ref = reference_logps_from_adapter(model, batch, share_prompt=share)
        else:
            ref = fixed_ref
        with autocast():
            if fused:  # the head and the loss together (ncakit.fused), fp32 head outside autocast
                out, policy = fused_batch_loss(model, batch, ref, "nca", beta=0.1, share_prompt=share)
            else:
                policy = batch_logps(model, batch, share_prompt=share)  # [B, K] fp32
        if not fused:
            out = nca(policy, ref, batch["rewards"], beta=0.1, mask=batch["mask"])
        loss = out.loss.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        logratio.append((policy.detach() - ref).abs().max())

    for _ in range(a.warmup):
        step()
    sync()
    peak_setup = None
    if device.type == "cuda":
        peak_setup = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    n_seqs = a.prompts * k
    flops = step_flops(
        shape,
        mode=mode,
        seq_len=P + R,
        response_len=R,
        n_seqs=n_seqs,
        n_lora=n_lora,
        recompute=gc,
        ref_forward=fixed_ref is None,
    )
    step_s = summarize(times)
    med = step_s["median"]  # the same median the row reports
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)"
    peak = a.peak_tflops or peak_tflops(name)
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        peak_kind = "torch.cuda.max_memory_allocated over the timed steps"
        peak_setup = max(peak_setup, peak_mem)
    else:
        peak_mem = peak_setup = peak_rss_mib() / 1024
        peak_kind = "process peak RSS (CPU smoke)"
    step0 = float(losses[0]) if losses else None
    res = {
        "mode": mode,
        "k": k,
        "prompts": a.prompts,
        "sequences": n_seqs,
        "seq_len": P + R,
        "shape": "tiny" if tiny else ("7b" if shape is SHAPE_7B else "1b"),
        "shape_dims": shape,
        "precision": {
            "lora": "bf16 base, fp32 adapters + AdamW states",
            "qlora": "nf4 base (double quant), bf16 compute, fp32 adapters + AdamW states",
            "full": "pure bf16 (weights, grads, AdamW states)",
            "full1b": "fp32 master weights/grads/AdamW, bf16 autocast",
            "fsdp2": "fp32 sharded masters, FSDP2 MixedPrecisionPolicy(param bf16, reduce fp32)",
        }[mode]
        + (" (CPU smoke: fp32 compute)" if smoke and mode != "fsdp2" else ""),
        "reference": "adapter disabled, every step (timed)" if fixed_ref is None else "initial model, once",
        "params": n_params,
        "trainable_params": n_trainable,
        "gradient_checkpointing": gc,
        # the FLOPs below are the unshared step's either way: with prompt sharing, MFU is "effective"
        "prompt_sharing": share,
        "fused_head": fused,
        "attn_implementation": a.attn,
        "device": name,
        "versions": versions(),
        "build_s": build_s,
        **build_times,
        "warmup": a.warmup,
        "step_s": step_s,
        "tokens_per_s_per_gpu": flops["tokens"] / med,
        "peak_memory_gib": peak_mem,
        "peak_memory_gb": peak_mem * 2**30 / 1e9,
        "peak_memory_gib_with_setup": peak_setup,
        "peak_memory_kind": peak_kind,
        "peak_tflops": peak,
        **flops,
        "achieved_tflops": flops["model_flops"] / med / 1e12,
        "losses": [float(x) for x in losses],
        "step0_loss": step0,
        "step0_loss_minus_2ln2": None if step0 is None else step0 - TWO_LN2,
        "step0_max_abs_logratio": float(logratio[0]) if logratio else None,
    }
    if peak:
        res["mfu"] = mfu(flops["model_flops"], med, peak)
        res["hfu"] = mfu(flops["hardware_flops"], med, peak)
    res["targets"], res["target_values"] = evaluate_targets(res)
    if mode == "fsdp2":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return res


WORKER_FLAGS = ("prompts", "prompt_len", "response_len", "steps", "warmup", "attn")


def worker_command(a, mode: str, k: int) -> list[str]:
    """The command line of one fresh worker process for (mode, K) with ``a``'s settings."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, str(k)]
    for flag in WORKER_FLAGS:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    if a.no_gradient_checkpointing:
        cmd.append("--no-gradient-checkpointing")
    if a.peak_tflops:
        cmd += ["--peak-tflops", str(a.peak_tflops)]
    if getattr(a, "tmpdir", None):
        cmd += ["--tmpdir", str(a.tmpdir)]
    if getattr(a, "tiny", False):
        cmd.append("--tiny")
    if getattr(a, "prompt_sharing", False):
        cmd.append("--prompt-sharing")
    if getattr(a, "fused_head", False):
        cmd.append("--fused-head")
    if a.cpu_smoke:
        cmd.append("--cpu-smoke")
    return cmd


def parse_worker_output(stdout: str) -> dict:
    """The worker's result: the last line of its stdout that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("worker printed no JSON result line")


def build_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=MODES)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (B); B*K sequences")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, flash_attention_2, eager")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument(
        "--prompt-sharing",
        action="store_true",
        help="batch_logps(share_prompt=True) for the policy and the reference (scale/train.py's prompt_sharing)",
    )
    p.add_argument(
        "--fused-head",
        action="store_true",
        help="the LM head and the NCA loss fused (ncakit.fused; scale/train.py's fused_loss_head)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--tmpdir", default=None, help="where qlora writes its temporary bf16 checkpoint")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU, prints only (tests)")
    p.add_argument("--tiny", action="store_true", help="the tiny shape on the GPU (the gpu-marked test)")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    return p


def smoke_limits(a) -> None:
    """The tiny CPU-smoke sizes (at least one warm-up: step 0 is where the step-0 loss is read)."""
    a.prompt_len, a.response_len = min(a.prompt_len, 16), min(a.response_len, 16)
    a.steps, a.warmup = max(1, min(a.steps, 2)), max(1, min(a.warmup, 1))


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.cpu_smoke:
        smoke_limits(a)
    a.warmup = max(a.warmup, 1)
    if a.worker:
        print(json.dumps(worker(a, a.worker[0], int(a.worker[1]))))
        return 0

    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        print(
            "bench_gpu_step: no CUDA device here; nothing measured, no result written "
            "(run it on a GPU machine; --cpu-smoke checks the code path on a tiny model)."
        )
        return 0
    rows = []
    for mode in a.modes:
        for k in a.ks:
            if mode == "qlora" and a.cpu_smoke:
                rows.append({"mode": mode, "k": k, "skipped": "bitsandbytes 4-bit needs CUDA"})
                print(f"{mode:<6} K={k}: skipped (bitsandbytes 4-bit needs CUDA)", flush=True)
                continue
            cmd = worker_command(a, mode, k)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-5:]
                print("\n".join(tail), file=sys.stderr)
                rows.append({"mode": mode, "k": k, "error": tail[-2:]})
                continue
            row = parse_worker_output(proc.stdout)
            rows.append(row)
            mfu_s = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
            mem = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
            print(
                f"{mode:<6} K={k}: {row['step_s']['median']:.3f} s/step, "
                f"{row['tokens_per_s_per_gpu']:.0f} tokens/s/GPU, peak {mem}, MFU {mfu_s}, "
                f"step-0 loss - 2 ln 2 = {row['step0_loss_minus_2ln2']:.2e}",
                flush=True,
            )
    if a.cpu_smoke:
        return 0 if all("error" not in r for r in rows) else 1
    write_result(
        "gpu_step",
        {
            "goal": "MFU >= 40%; published DPO anchors ~20-27% on H100",
            "config": {
                k: getattr(a, k)
                for k in ("modes", "ks", "prompts", "prompt_len", "response_len", "steps", "warmup", "attn")
            }
            | {"gradient_checkpointing": not a.no_gradient_checkpointing, "shape": SHAPE_7B},
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
