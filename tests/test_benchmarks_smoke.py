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
    from transformers import LlamaForCausalLM

    gpu = _load("bench_gpu_step")
    shape = dict(hidden=32, intermediate=48, layers=3, heads=4, kv_heads=2, vocab=40)
    model = LlamaForCausalLM(gpu.llama_config(shape))
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


# ---------------------------------------------------------------------------------------------
# The GPU acceptance run (`make gpu-check`, benchmarks/gpu_check.py): arithmetic, targets, CPU smoke
# ---------------------------------------------------------------------------------------------

TWO_LN2 = 2 * math.log(2)


def _meta_llama(shape: dict):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(_load("bench_gpu_step").llama_config(shape))


@pytest.mark.parametrize("name", ["SHAPE_7B", "SHAPE_1B"])
def test_gpu_flop_count_matches_the_real_shapes_linear_weights(name):
    """N of the FLOP formula = the decoder's nn.Linear weights of the model built (on meta) from the shape."""
    pytest.importorskip("transformers")
    gpu = _load("bench_gpu_step")
    shape = getattr(gpu, name)
    model = _meta_llama(shape)
    linears = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    )
    f = gpu.step_flops(
        shape, mode="full", seq_len=1024, response_len=512, n_seqs=4, n_lora=0, recompute=False
    )
    assert f["n_matmul_params"] == linears
    total = sum(p.numel() for p in model.parameters())
    expected = {"SHAPE_7B": 7.24e9, "SHAPE_1B": 1.10e9}[name]  # Mistral-7B, TinyLlama-1.1B
    assert abs(total - expected) / expected < 0.01


def test_gpu_flops_reference_forward_and_mfu_identity():
    gpu = _load("bench_gpu_step")
    s = gpu.SHAPE_1B
    kw = dict(seq_len=1024, response_len=512, n_seqs=8, n_lora=1000, recompute=True)
    plain = gpu.step_flops(s, mode="qlora", **kw)
    assert plain == gpu.step_flops(s, mode="lora", **kw)  # qlora counted like lora
    with_ref = gpu.step_flops(s, mode="lora", ref_forward=True, **kw)
    n, d, L, V = plain["n_matmul_params"], s["hidden"], s["layers"], s["vocab"]
    ref = 8 * 1024 * (2 * n + 2 * L * d * 1024) + 8 * 512 * 2 * V * d  # one forward + the head on responses
    assert with_ref["ref_flops"] == ref and with_ref["model_flops"] - plain["model_flops"] == ref
    assert gpu.step_flops(s, mode="fsdp2", **kw) == gpu.step_flops(s, mode="full", **kw)
    # MFU = FLOPs per step / seconds per step / peak FLOP/s
    assert gpu.mfu(4.0e14, 2.0, 989.4) == pytest.approx(4.0e14 / 2.0 / 989.4e12, rel=1e-12)
    assert gpu.mfu(1.0, 1.0, None) is None and gpu.mfu(1.0, 0.0, 100.0) is None


def _row(**kw):
    row = dict(mode="lora", k=4, prompts=4, seq_len=1024, shape="7b", device="NVIDIA H100 80GB HBM3")
    row |= {"step_s": {"median": 1.5}, "tokens_per_s_per_gpu": 10922.7}
    return row | {"mfu": 0.5, "peak_memory_gib": 30.0, "step0_loss": TWO_LN2} | kw


def test_gpu_targets_met_and_missed():
    gpu = _load("bench_gpu_step")
    t = lambda **kw: gpu.evaluate_targets(_row(**kw))[0]  # noqa: E731
    assert t(mfu=0.41)["mfu>=0.40"] is True and t(mfu=0.39)["mfu>=0.40"] is False
    assert t(mfu=0.41, device="NVIDIA H200")["mfu>=0.40"] is True
    assert t(mfu=0.9, device="NVIDIA A100-SXM4-80GB")["mfu>=0.40"] is None  # the target is H100/H200's
    assert t(mfu=0.9, k=2)["mfu>=0.40"] is None and t(mfu=0.9, mode="full1b")["mfu>=0.40"] is None
    assert t(mfu=0.9, shape="tiny")["mfu>=0.40"] is None
    q = dict(mode="qlora", prompts=1)
    assert t(peak_memory_gib=15.9, **q)["qlora_peak<=16GB"] is True
    assert t(peak_memory_gib=16.1, **q)["qlora_peak<=16GB"] is False
    assert t(peak_memory_gib=15.9, mode="qlora", prompts=2)["qlora_peak<=16GB"] is None  # 1 x 4 x 1024 only
    assert t(peak_memory_gib=1.0)["qlora_peak<=16GB"] is None  # not a qlora row
    assert t(step0_loss=TWO_LN2 + 5e-7)["step0_loss==2ln2"] is True
    assert t(step0_loss=TWO_LN2 + 2e-6)["step0_loss==2ln2"] is False
    assert t(step0_loss=None)["step0_loss==2ln2"] is None
    targets, values = gpu.evaluate_targets(_row(mfu=0.39, peak_memory_gib=15.0))
    assert values == {"mfu>=0.40": 0.39, "qlora_peak<=16GB": 15.0, "step0_loss==2ln2": TWO_LN2}
    check = _load("gpu_check")
    rows = [_row(mfu=0.39)]
    rows[0]["targets"], rows[0]["target_values"] = targets, values
    rows.append({"mode": "qlora", "k": 4, "skipped": "bitsandbytes is not installed"})
    overall = check.overall_targets(rows)
    assert overall["mfu>=0.40"] == {"met": False, "value": {"lora": 0.39}, "modes": ["lora"]}
    assert overall["qlora_peak<=16GB"]["met"] is None
    cells = check.table_cells(rows[0])
    assert "mfu>=0.40 MISSED (0.390)" in cells["targets met"] and cells["MFU"] == "39.0%"
    assert check.table_cells(rows[1])["targets met"].startswith("skipped: bitsandbytes")
    assert check.table_cells({"mode": "full1b", "k": 4, "error": "timed out after 5 s"})["targets met"] == (
        "ERROR: timed out after 5 s"
    )


def test_gpu_check_kills_a_step_past_its_timeout():
    check = _load("gpu_check")
    r = check.run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1.0)
    assert r["timed_out"] and r["seconds"] < 30


def test_the_readmes_gpu_section_is_gpu_checks_own(tmp_path):
    """One author: run_all renders section 5 with gpu_check.readme_section; gpu_check rewrites the
    README through run_all, never by editing it."""
    check, run_all = _load("gpu_check"), _load("run_all")
    text = run_all.render_readme()
    assert text.count("## 5.") == 1
    section = text[text.index("## 5.") :]
    expected = "\n".join(check.readme_section(run_all._load("gpu_check"))).rstrip()
    assert section.startswith(expected)
    readme = tmp_path / "README.md"
    check.update_readme(readme)
    assert readme.read_text() == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit path")
def test_gpu_check_without_cuda_measures_nothing(capsys):
    check = _load("gpu_check")
    before = sorted(p.name for p in (BENCH / "results").glob("gpu_*.json"))
    assert check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "nothing was measured" in out[0]
    assert sorted(p.name for p in (BENCH / "results").glob("gpu_*.json")) == before


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_the_whole_flow(tmp_path, capsys):
    """`gpu_check.py --cpu-smoke`: pytest step, each mode in its own process, table, files (into --out only)."""
    pytest.importorskip("peft")
    check = _load("gpu_check")
    results = BENCH / "results"
    before = {p.name: p.stat().st_mtime for p in results.glob("*.json")}
    pytest_args = "-m gpu tests/test_benchmarks_smoke.py -q -p no:cacheprovider"  # the gpu test: skipped here
    rc = check.main(["--cpu-smoke", "--out", str(tmp_path), "--pytest-args", pytest_args])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert {p.name: p.stat().st_mtime for p in results.glob("*.json")} == before  # nothing in results/
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README_gpu.md",
        "gpu_check.json",
        "gpu_fsdp2.json",
        "gpu_full1b.json",
        "gpu_full1b_fused.json",
        "gpu_lora.json",
        "gpu_lora_shared.json",
        "gpu_qlora.json",
    ]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["ok"] and summary["pytest"]["status"] == "passed" and summary["errors"] == []
    rows = {r["mode"]: r for r in summary["rows"]}
    assert "CUDA" in rows["qlora"]["skipped"]
    # issue 18's options: the same step-0 loss (policy == reference), reported as speed-ups
    assert rows["lora_shared"]["prompt_sharing"] is True and rows["lora_shared"]["bench_mode"] == "lora"
    assert rows["full1b_fused"]["fused_head"] is True and rows["lora"]["prompt_sharing"] is False
    assert rows["lora_shared"]["targets"]["mfu>=0.40"] is None
    assert set(summary["speedups"]) == {"lora_shared", "full1b_fused"}
    assert summary["speedups"]["lora_shared"] == pytest.approx(
        rows["lora"]["step_s"]["median"] / rows["lora_shared"]["step_s"]["median"]
    )
    for mode in ("lora", "full1b", "fsdp2", "lora_shared", "full1b_fused"):
        r = rows[mode]
        assert abs(r["step0_loss"] - TWO_LN2) <= 1e-6, mode
        assert r["targets"]["step0_loss==2ln2"] is True and r["k"] == 4
        # MFU = model FLOPs / median s per step / the (nominal, smoke) peak
        assert r["mfu"] == pytest.approx(r["model_flops"] / r["step_s"]["median"] / (r["peak_tflops"] * 1e12))
        assert r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens"] / r["step_s"]["median"])
        assert r["versions"]["torch"] == torch.__version__
        cells = check.table_cells(r)
        assert set(cells) == set(check.TABLE_COLUMNS)
        for col in ("s/step", "tokens/s", "MFU", "peak GiB", "step-0 loss"):
            assert math.isfinite(float(cells[col].rstrip("%"))), (mode, col, cells[col])
        assert (
            cells["targets met"] == "step0_loss==2ln2 met (+3.8e-09)"
            or "step0_loss==2ln2 met" in cells["targets met"]
        )
        per_mode = json.loads((tmp_path / f"gpu_{mode}.json").read_text())
        assert per_mode["targets"] == r["targets"] and per_mode["row"]["step0_loss"] == r["step0_loss"]
    assert rows["lora"]["reference"].startswith("adapter disabled")
    assert rows["fsdp2"]["reference"] == "initial model, once"
    for col in check.TABLE_COLUMNS:
        assert col in printed
    assert "CUDA" in json.loads((tmp_path / "gpu_qlora.json").read_text())["row"]["skipped"]
    section = (tmp_path / "README_gpu.md").read_text()
    assert "| lora | 4 |" in section
    for path in tmp_path.glob("gpu_*.json"):  # the README section names every file's date
        assert json.loads(path.read_text())["machine"]["date"] in section, path.name


@pytest.mark.gpu
def test_gpu_tiny_modes_on_cuda_reach_2ln2_at_step_0():
    """On a GPU: the real dtypes (bf16, 4-bit, FSDP2 excluded: it needs its own process) on the tiny shape."""
    gpu = _load("bench_gpu_step")
    modes = ["lora", "full1b"]
    try:
        import bitsandbytes  # noqa: F401

        modes.append("qlora")
    except ImportError:
        pass
    args = ["--tiny", "--prompts", "1", "--prompt-len", "16", "--response-len", "16", "--steps", "1"]
    for mode in modes:
        a = gpu.build_parser().parse_args([*args, "--warmup", "1"])
        r = gpu.worker(a, mode, 4)
        assert r["device"] != "cpu (smoke)" and r["peak_memory_gib"] > 0
        # the strict 1e-6 target is gpu_check's to report; here: close, finite, and the reference path taken
        assert abs(r["step0_loss"] - TWO_LN2) <= 1e-4, (mode, r["step0_loss"], r["step0_max_abs_logratio"])
        assert all(math.isfinite(x) for x in r["losses"])


def test_fused_head_variants_agree_in_values_and_gradients():
    """bench_fused_head.py: naive, ncakit's head and the fused head (its chunk sizes) time the same
    computation: the same [B] loss and gradients on a small batch."""
    fused = _load("bench_fused_head")
    hidden, labels, ref, rewards = fused.make_batch(3, 5, 16, 50)
    hidden, ref, rewards = hidden.double(), ref.double(), rewards.double()
    w0 = torch.randn(50, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = None
    for variant in ("naive", "ncakit_head", "fused", "fused_small", "fused@3", "fused@7"):
        h, w = hidden.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        got = (fused._step(variant, h, w, labels, ref, rewards), h.grad, w.grad)
        want = got if want is None else want
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=variant)
    with pytest.raises(ValueError, match="variant"):
        fused._split("naive@64")  # only the fused head takes a chunk size


def test_prompt_sharing_benchmark_smoke(tmp_path):
    """bench_prompt_sharing.py on a tiny shape, both units: the shared and unshared log-probs agree to
    float32 round-off (the same weights, before any step), and the targets name their unit."""
    bench = _load("bench_prompt_sharing")
    out = tmp_path / "ps.json"
    argv = ["--hidden", "32", "--layers", "1", "--vocab", "64", "--shapes", "8x8x1", "6x5x2",
            "--ks", "4", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    d = json.loads(out.read_text())
    assert {r["unit"] for r in d["rows"]} == {"step", "fwdbwd"}
    for r in d["rows"]:
        assert r["max_abs_logp_diff"] <= 1e-5 * r["max_abs_logp"], r
        assert r["tokens_ratio"] == pytest.approx(
            4 * (r["prompt_len"] + r["response_len"]) / (r["prompt_len"] + 4 * r["response_len"])
        )
    assert all(t["unit"] == "step" for t in d["targets"])
