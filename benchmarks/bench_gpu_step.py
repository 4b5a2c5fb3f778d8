"""GPU training-step benchmark: a 7B-shaped Llama from config, bf16, LoRA and full fine-tuning, sequences
of 1024 tokens, K = 2 and 4 responses per prompt. Never part of CI or ``run_all.py``.

Without CUDA it prints a message and exits 0 (nothing is measured, no result is written).
``--cpu-smoke`` runs a tiny configuration on the CPU through the same code (for the smoke test only;
it writes no result file).

Setup (one FRESH process per (mode, K), so the peak memory is that configuration's own):
  model      ``LlamaConfig`` with Mistral-7B's shape (hidden 4096, MLP 14336, 32 layers, 32 heads / 8 KV
             heads, vocabulary 32000, untied head; 7.24 B parameters), random weights, built directly on
             the GPU in bf16; SDPA attention; gradient checkpointing on (``--no-gradient-checkpointing``);
             ncakit's ``LogprobHead`` installed as ``ncakit.scale.train`` does;
  lora       peft LoRA r=16, alpha=16 on q/k/v/o/gate/up/down (the recipes' targets), dropout 0; base
             weights frozen; AdamW (fp32 adapter weights and states);
  full       every weight trainable in bf16 with AdamW whose states are bf16 too ("pure bf16": weights
             14.5 GB + gradients 14.5 GB + states 29 GB fit one 80 GB GPU; a real 7B full run keeps fp32
             master weights sharded over GPUs with FSDP2 / ZeRO-3, see scale/recipes);
  batch      ``--prompts`` prompts x K responses, every sequence ``--prompt-len`` + ``--response-len``
             = 512 + 512 = 1024 tokens (random ids), reference log-probs precomputed (no reference
             forward timed); one optimizer step = forward + backward of the B*K sequences
             (``ncakit.scale.forward.batch_logps`` + ``ncakit.losses.nca``) + ``optimizer.step()``.

Measured: seconds per step (``--warmup`` untimed steps, then ``--steps`` timed, CUDA-synchronised),
tokens/s/GPU (B*K*1024 / step time), peak memory (``torch.cuda.max_memory_allocated``), and MFU.

FLOP count (model FLOPs; gradient-checkpointing recomputation NOT counted, so this is MFU, not HFU):
  N        = parameters of the decoder's matmuls (attention + MLP; embeddings and the head excluded)
  L, d, T  = layers, hidden size, sequence length;  causal attention counted as half of T^2
  forward per token        2 N + 2 L d T                (QK^T and AV: 2 x 2 d T per layer, halved)
  full  fwd+bwd per token  6 N + 6 L d T                (backward = 2 x forward: input and weight grads)
  LoRA  fwd+bwd per token  4 N + 6 L d T + 6 N_lora     (frozen weights: no weight gradients)
  head (response tokens only: LogprobHead projects only the scored positions)
        full 6 V d, LoRA 4 V d per response token
  MFU = FLOPs per step / step time / peak dense bf16 FLOP/s of the device (H100 SXM and H200: 989 TFLOP/s,
  H100 PCIe 756, A100 312; ``--peak-tflops`` overrides). ``hfu`` adds the recomputed forward
  (2 N + 2 L d T per token) when gradient checkpointing is on.
Goal: MFU >= 40%; published DPO anchors are ~20-27% MFU on H100.

Usage: python benchmarks/bench_gpu_step.py [--modes lora full] [--ks 2 4] [--prompts 2] [--steps 5]
Writes benchmarks/results/gpu_step.json (only when run on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summarize, write_result  # noqa: E402

SHAPE_7B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000)
SHAPE_SMOKE = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0)]


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def step_flops(
    shape: dict, *, mode: str, seq_len: int, response_len: int, n_seqs: int, n_lora: int, recompute: bool
) -> dict:
    """Model FLOPs of one optimizer step (see the module docstring), and with recomputation."""
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
    model = tokens * per_token + n_seqs * response_len * head
    return {
        "n_matmul_params": n_matmul,
        "tokens": tokens,
        "model_flops": float(model),
        "hardware_flops": float(model + (tokens * fwd if recompute else 0)),
    }


def worker(a, mode: str, k: int) -> dict:
    import torch

    from ncakit.losses import nca
    from ncakit.scale.data import KResponseCollator
    from ncakit.scale.forward import batch_logps, install_logprob_head
    from ncakit.scale.train import enable_checkpointing

    smoke = a.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    shape = SHAPE_SMOKE if smoke else SHAPE_7B
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        attn_implementation=a.attn,
    )
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model.config.use_cache = False
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    install_logprob_head(model)
    gc = not a.no_gradient_checkpointing
    if gc:
        enable_checkpointing(model, {"use_reentrant": False})
    n_lora = 0
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

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
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    g = torch.Generator().manual_seed(0)
    P, R, V = a.prompt_len, a.response_len, shape["vocab"]
    rows = [
        {
            "prompt_ids": torch.randint(3, V, (P,), generator=g).tolist(),
            "response_ids": [torch.randint(3, V, (R,), generator=g).tolist() for _ in range(k)],
            "rewards": torch.rand(k, generator=g).tolist(),
            "ref_logps": (-torch.rand(k, generator=g) * R * 10).tolist(),
        }
        for _ in range(a.prompts)
    ]
    batch = KResponseCollator(pad_token_id=0, k=k)(rows)
    batch = {key: v.to(device) for key, v in batch.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        policy = batch_logps(model, batch)  # [B, K] fp32
        out = nca(policy, batch["ref_logps"], batch["rewards"], beta=0.1, mask=batch["mask"])
        out.loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    n_seqs = a.prompts * k
    flops = step_flops(
        shape, mode=mode, seq_len=P + R, response_len=R, n_seqs=n_seqs, n_lora=n_lora, recompute=gc
    )
    med = sorted(times)[len(times) // 2]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)"
    peak = a.peak_tflops or peak_tflops(name)
    res = {
        "mode": mode,
        "k": k,
        "prompts": a.prompts,
        "sequences": n_seqs,
        "seq_len": P + R,
        "params": n_params,
        "trainable_params": sum(p.numel() for p in params),
        "gradient_checkpointing": gc,
        "attn_implementation": a.attn,
        "device": name,
        "build_s": build_s,
        "step_s": summarize(times),
        "tokens_per_s_per_gpu": flops["tokens"] / med,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "peak_tflops": peak,
        **flops,
        "achieved_tflops": flops["model_flops"] / med / 1e12,
    }
    if peak:
        res["mfu"] = res["achieved_tflops"] / peak
        res["hfu"] = flops["hardware_flops"] / med / 1e12 / peak
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (B); B*K sequences")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, flash_attention_2, eager")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU, prints only (tests)")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.cpu_smoke:
        a.prompt_len, a.response_len = min(a.prompt_len, 16), min(a.response_len, 16)
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
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
            cmd = [sys.executable, __file__, "--worker", mode, str(k)]
            for flag in ("prompts", "prompt_len", "response_len", "steps", "warmup", "attn"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
            if a.no_gradient_checkpointing:
                cmd.append("--no-gradient-checkpointing")
            if a.peak_tflops:
                cmd += ["--peak-tflops", str(a.peak_tflops)]
            if a.cpu_smoke:
                cmd.append("--cpu-smoke")
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-5:]
                print("\n".join(tail), file=sys.stderr)
                rows.append({"mode": mode, "k": k, "error": tail[-2:]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "n/a"
            mem = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
            print(
                f"{mode:<4} K={k}: {row['step_s']['median']:.3f} s/step, "
                f"{row['tokens_per_s_per_gpu']:.0f} tokens/s/GPU, peak {mem}, MFU {mfu}",
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
