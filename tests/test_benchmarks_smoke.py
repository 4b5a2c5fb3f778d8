"""Smoke tests of the benchmark scripts: their arithmetic and plumbing, never their timings.

Speed is measured by ``benchmarks/run_all.py`` and written to files; here we check that the numbers a
benchmark reports are computed right (FLOP counts against parameter counts, the parity tolerance, the
heads' values against each other, the README built from the result files).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------
# Item 5: the FLOP formula must count exactly the decoder's matmul parameters
# ---------------------------------------------------------------------------------------------


def test_gpu_flop_count_matches_the_models_parameters():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    gpu = _load("bench_gpu_step")
    shape = dict(hidden=32, intermediate=48, layers=3, heads=4, kv_heads=2, vocab=40)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=shape["vocab"],
            hidden_size=shape["hidden"],
            intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"],
            tie_word_embeddings=False,
        )
    )
    f = gpu.step_flops(shape, mode="full", seq_len=10, response_len=4, n_seqs=3, n_lora=0, recompute=False)
    d, L, V = shape["hidden"], shape["layers"], shape["vocab"]
    norms = (2 * L + 1) * d  # two RMSNorms per layer + the final one: not matmuls
    embed_and_head = 2 * V * d
    assert f["n_matmul_params"] == sum(p.numel() for p in model.parameters()) - norms - embed_and_head
    # full - LoRA (no adapters): the weight gradients, 2 N per token, and 2 V d per response token
    lora = gpu.step_flops(shape, mode="lora", seq_len=10, response_len=4, n_seqs=3, n_lora=0, recompute=False)
    assert f["model_flops"] - lora["model_flops"] == 30 * 2 * f["n_matmul_params"] + 3 * 4 * 2 * V * d
    # recomputation adds one forward (2 N + 2 L d T per token) to the hardware count only
    rec = gpu.step_flops(shape, mode="full", seq_len=10, response_len=4, n_seqs=3, n_lora=0, recompute=True)
    assert rec["model_flops"] == f["model_flops"]
    assert rec["hardware_flops"] - f["model_flops"] == 30 * (2 * f["n_matmul_params"] + 2 * L * d * 10)


def test_gpu_peak_lookup_prefers_the_specific_name():
    gpu = _load("bench_gpu_step")
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0  # not the SXM value that "H100" alone matches
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu.peak_tflops("some other device") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit path")
def test_gpu_bench_exits_cleanly_without_cuda(capsys):
    gpu = _load("bench_gpu_step")
    assert gpu.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_worker_lora_trains_exactly_the_adapters():
    pytest.importorskip("peft")
    gpu = _load("bench_gpu_step")
    args = SimpleNamespace(
        cpu_smoke=True,
        attn="sdpa",
        no_gradient_checkpointing=False,
        prompts=1,
        prompt_len=5,
        response_len=3,
        steps=1,
        warmup=1,
        peak_tflops=None,
    )
    res = gpu.worker(args, "lora", 2)
    s = gpu.SHAPE_SMOKE
    d, f, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["hidden"] // s["heads"]
    # LoRA r = 16 on q, k, v, o, gate, up, down: r * (in + out) per module and layer
    per_layer = 16 * ((d + d) + (d + kv) + (d + kv) + (d + d) + 2 * (d + f) + (f + d))
    assert res["trainable_params"] == s["layers"] * per_layer
    assert res["tokens"] == 1 * 2 * (5 + 3)
    assert math.isfinite(res["step_s"]["median"])


# ---------------------------------------------------------------------------------------------
# Item 1: the parity verdict
# ---------------------------------------------------------------------------------------------


def _history(scale=1.0):
    h1 = {"step": 1, "loss": math.log(2), "grad_norm": 3.0, "logps/chosen": -50.0, "logps/rejected": -60.0}
    h1 |= {"rewards/chosen": 0.0, "rewards/margins": 0.0}
    h2 = {"step": 2, "loss": 0.5 * scale, "grad_norm": 2.0, "rewards/chosen": 0.2, "rewards/rejected": -0.3}
    h2 |= {"rewards/margins": 0.5, "rewards/accuracies": 1.0, "logps/chosen": -49.0, "logps/rejected": -61.0}
    return [h1, h2]


def test_parity_accepts_equal_runs_and_rejects_a_relative_gap_of_1e_3():
    e2e = _load("bench_e2e_trl")
    ours = {"history": _history()}
    same = e2e._parity(ours, {"history": _history(), "ids_mismatched": 0}, "sigmoid")
    assert same["ok"]
    off = e2e._parity(ours, {"history": _history(1 + 1e-3), "ids_mismatched": 0}, "sigmoid")
    assert not off["ok"] and not off["steps"][2]["loss"]["ok"] and off["steps"][1]["loss"]["ok"]
    # data that tokenises differently fails parity even when the numbers agree
    assert not e2e._parity(ours, {"history": _history(), "ids_mismatched": 1}, "sigmoid")["ok"]


# ---------------------------------------------------------------------------------------------
# Item 2: every head variant computes the same log-probs and gradients
# ---------------------------------------------------------------------------------------------


def test_head_variants_agree_in_values_and_gradients():
    head = _load("bench_logprob_head")
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(24, 16, generator=g, dtype=torch.float64)
    w0 = torch.randn(50, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 50, (24,), generator=g)
    ref = None
    for variant in ("naive", "ncakit_logits@7", "ncakit_hidden", "ncakit_hidden@5", "trl_chunked"):
        h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        out = head._step(variant, h, w, y)
        got = (out, h.grad, w.grad)
        if ref is None:
            ref = got
        else:
            # ncakit keeps float64 throughout; TRL's kernel holds its running statistics in float32
            tol = 1e-5 if variant == "trl_chunked" else 1e-9
            for a, b in zip(got, ref):
                torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=variant)
    with pytest.raises(ValueError, match="variant"):
        head._split("naive@64")  # only ncakit's heads take a chunk size


# ---------------------------------------------------------------------------------------------
# Item 3: the K-scaling batch has the fixed lengths it claims
# ---------------------------------------------------------------------------------------------


def test_k_scaling_batch_has_fixed_lengths():
    k_scaling = _load("bench_k_scaling")
    batch = k_scaling.make_batch(k=4, prompts=3, prompt_len=7, response_len=5, vocab=50)
    assert batch["input_ids"].shape == (12, 12)
    assert int(batch["attention_mask"].sum()) == 3 * 4 * (7 + 5)
    assert (batch["response_lengths"] == 5).all() and (batch["prompt_lengths"] == 7).all()
    assert batch["ref_logps"].shape == (3, 4)


# ---------------------------------------------------------------------------------------------
# Item 4 / README: built from the result files, each with its date
# ---------------------------------------------------------------------------------------------


def test_readme_is_built_from_the_result_files():
    run_all = _load("run_all")
    text = run_all.render_readme()
    assert text.startswith("# Benchmarks")
    for path in sorted((BENCH / "results").glob("*.json")):
        d = json.loads(path.read_text())
        date = d.get("machine", {}).get("date")
        if date and path.stem != "run_all":
            assert date in text, path.name  # every table says when (and on what) it was measured
