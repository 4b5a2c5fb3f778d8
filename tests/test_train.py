"""scale/train.py's loop (ncakit.scale.train) on CPU with the offline tiny kit: the tiny-cpu recipe learns,
TRL-named metrics are logged, resume / gradient accumulation / 2 processes reproduce the plain run,
the LoRA adapter-disabled reference equals the precomputed one, NCA keeps the chosen reward above
DPO's, and configuration errors surface before training.

Tolerances: a resumed run replays exactly the same float32 operations in the same order on CPU
(optimizer, scheduler and RNG states are restored bit for bit), so its parameters must match to
1e-6 (they come out bit-identical here). Gradient accumulation and two processes change only the
summation order (per-prompt losses averaged in different groupings, and differently padded
batches), so gradients agree to ~1e-7 relative; after a few Adam steps (whose update divides by
sqrt(v)) the parameters agree to a small fraction of one update: max |Δθ_a − Δθ_b| ≤ 2e-3 · max |Δθ_a|.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from ncakit.scale import model as modelmod  # noqa: E402
from ncakit.scale import prepare as prepmod  # noqa: E402
from ncakit.scale import train as trainmod  # noqa: E402
from ncakit.scale.tinylm import ensure_tiny_kit  # noqa: E402

datasets.disable_progress_bars()
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scale" / "recipes" / "tiny-cpu.yaml"
TRL_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
LN4 = 2 * math.log(2.0)  # MATH.md anchor: NCA = 2 ln 2 at policy = reference (any K, any rewards)


from _accelerate import reset_accelerate as _reset_accelerate  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_accelerate_state")


# A small kit for the equivalence tests (fast), the recipe's own kit for the behaviour tests.
SMALL = dict(n_train=24, n_test=6, k=4, hidden=32, layers=2, sft_steps=40, seed=0)


@pytest.fixture(scope="module")
def small_kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit-small")
    ensure_tiny_kit(root, **SMALL)
    return root


def small_args(kit_dir, out_dir, *extra) -> list[str]:
    return [
        "--model_name_or_path", "tinylm",
        "--dataset_name", "tinylm",
        "--tiny_kit_dir", str(kit_dir),
        "--tiny_n_train", str(SMALL["n_train"]),
        "--tiny_n_test", str(SMALL["n_test"]),
        "--tiny_hidden", str(SMALL["hidden"]),
        "--tiny_sft_steps", str(SMALL["sft_steps"]),
        "--max_length", "64",
        "--max_prompt_length", "48",
        "--loss", "nca",
        "--beta", "0.1",
        "--loss_kwargs", "{alpha: 0.1}",
        "--learning_rate", "1e-3",
        "--warmup_steps", "1",
        "--eval_split", "null",
        "--logging_steps", "1",
        "--progress", "false",
        "--save_final", "false",
        "--output_dir", str(out_dir),
        *extra,
    ]  # fmt: skip


def run(argv, **kw) -> trainmod.TrainResult:
    _reset_accelerate()
    return trainmod.train(trainmod.parse_config(argv), **kw)


def params(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in result.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def initial_params(small_kit):
    model = ensure_tiny_kit(small_kit, **SMALL).model
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# The tiny-cpu recipe: it learns, it logs TRL names, NCA vs DPO
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe_kit(tmp_path_factory):
    return tmp_path_factory.mktemp("kit-recipe")


@pytest.fixture(scope="module")
def recipe_run(recipe_kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe-nca")
    _reset_accelerate()
    result = trainmod.main(
        [
            "--config",
            str(RECIPE),
            "--output_dir",
            str(out),
            "--tiny_kit_dir",
            str(recipe_kit),
            "--progress",
            "false",
        ]
    )
    _reset_accelerate()
    return result


@pytest.mark.slow
def test_tiny_cpu_recipe_learns_and_logs_trl_names(recipe_run):
    res = recipe_run
    out = res.output_dir
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    trains = [r for r in records if "loss" in r]
    # step 0 is policy = reference: the cached reference must equal the policy's own log-probs,
    # so the eval loss is exactly the anchor 2 ln 2 and every implicit reward 0
    assert evals[0]["step"] == 0
    assert evals[0]["eval_loss"] == pytest.approx(LN4, abs=1e-5)
    assert abs(evals[0]["eval_rewards/chosen"]) < 1e-5
    # the loss falls: on the held-out prompts (2 ln 2 -> ~1.356 here) and over the training windows
    # (first 4 windows ~1.381 -> last 16 ~1.364; 8 prompts per window, hence the averaging)
    assert evals[-1]["eval_loss"] < LN4 - 0.01, evals[-1]["eval_loss"]
    first = sum(r["loss"] for r in trains[:4]) / 4
    last = sum(r["loss"] for r in trains[-16:]) / 16
    assert last < first - 0.005, (first, last)
    # TRL names + K = 4 rank metrics, every train record; eval ones prefixed eval_
    for r in trains:
        for name in (
            *TRL_NAMES,
            "rewards/rank_1",
            "rewards/rank_4",
            "learning_rate",
            "grad_norm",
            "num_tokens",
        ):
            assert name in r, name
    assert all(f"eval_{n}" in r for n in TRL_NAMES for r in evals)
    final = evals[-1]
    # the ranking was learnt on held-out prompts: the margin is positive, the best rank above the worst
    assert final["eval_rewards/margins"] > 0.05
    assert final["eval_rewards/rank_1"] > final["eval_rewards/rank_4"]
    # rank_1 is the chosen response
    assert final["eval_rewards/rank_1"] == pytest.approx(final["eval_rewards/chosen"], abs=1e-6)
    # files of a finished run
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["k"] == 4 and run_info["config"]["loss"] == "nca"
    assert run_info["max_steps"] == res.state.global_step == 256
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 256 and not summary["interrupted"]
    assert [p.name for p in out.glob("*checkpoint-*")] == ["checkpoint-192"], "save_total_limit: 1"


@pytest.mark.slow
def test_nca_keeps_chosen_reward_above_dpo(recipe_run, recipe_kit, tmp_path):
    """MATH.md, "What a toy bandit needs": with shared parameters DPO pushes the chosen likelihood
    down while NCA holds it near the reference. Same recipe, same prompts; DPO on (best, random
    lower) pairs of the same K = 4 data, so "chosen" is the best response in both runs."""
    dpo = run(
        [
            "--config", str(RECIPE), "--output_dir", str(tmp_path / "dpo"), "--tiny_kit_dir", str(recipe_kit),
            "--loss", "dpo", "--loss_kwargs", "{}", "--pairwise_from_k", "best_vs_random",
            "--progress", "false", "--save_steps", "0", "--save_final", "false",
        ]
    )  # fmt: skip
    nca_chosen = recipe_run.summary["eval"]["eval_rewards/chosen"]
    dpo_chosen = dpo.summary["eval"]["eval_rewards/chosen"]
    print(f"eval rewards/chosen: NCA {nca_chosen:+.4f}, DPO {dpo_chosen:+.4f}")
    assert nca_chosen > dpo_chosen + 0.2, (nca_chosen, dpo_chosen)
    assert dpo_chosen < 0, "DPO lowers the chosen likelihood below the reference"
    # both learnt to rank (a positive margin), so the difference is not a failure to train
    assert (
        dpo.summary["eval"]["eval_rewards/margins"] > 0
        and recipe_run.summary["eval"]["eval_rewards/margins"] > 0
    )


@pytest.mark.slow
def test_plot_dynamics_script_draws_the_run(recipe_run, tmp_path):
    import runpy
    import sys

    out_png = tmp_path / "dyn.png"
    argv = sys.argv
    sys.argv = ["plot_dynamics.py", str(recipe_run.output_dir), "--out", str(out_png)]
    try:
        runpy.run_path(str(REPO / "scale" / "plot_dynamics.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert out_png.is_file() and out_png.stat().st_size > 20_000

    from ncakit.scale.runlog import plot_run_dynamics, rank_keys, read_run

    log = read_run(recipe_run.output_dir)
    assert log.k == 4 and log.loss == "nca"
    assert rank_keys(log.eval, "eval_") == [f"eval_rewards/rank_{k}" for k in range(1, 5)]
    fig = plot_run_dynamics([log])
    left = fig.axes[0]
    # one line per rank for the eval curves and the train windows, + the reference line
    assert len(left.get_lines()) == 2 * 4 + 1


# ----------------------------------------------------------------------------------------------
# Resume, SIGTERM, gradient accumulation, two processes
# ----------------------------------------------------------------------------------------------


def test_sigterm_saves_and_resume_reproduces_uninterrupted_run(small_kit, tmp_path, initial_params):
    # 24 prompts, 2 per micro-batch, GA 2: 6 optimizer steps per epoch; 8 steps cross into epoch 1
    common = ("--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", "8")
    full = run(small_args(small_kit, tmp_path / "full", *common))
    assert full.state.global_step == 8 and not full.interrupted

    def stop_at_7(state):
        if state.global_step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    part = run(small_args(small_kit, tmp_path / "part", *common), callbacks=[stop_at_7])
    assert signal.getsignal(signal.SIGTERM) is handler_before, "the loop restores the signal handlers"
    assert part.interrupted and part.state.global_step == 7
    ckpt = tmp_path / "part" / "checkpoint-7"
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    assert saved["reason"] == "SIGTERM"
    assert (saved["epoch"], saved["batches_in_epoch"]) == (1, 2), (
        "epoch 1, one optimizer step (2 micro-batches) in"
    )
    assert not (tmp_path / "part" / "final").exists()

    resumed = run(small_args(small_kit, tmp_path / "part", *common, "--resume_from", "latest"))
    assert resumed.state.global_step == 8
    diff = max_diff(params(full), params(resumed))
    moved = max_diff(params(full), initial_params)
    print(f"resume: max |θ_full - θ_resumed| = {diff:.3e} (training moved θ by up to {moved:.3e})")
    assert moved > 1e-3
    assert diff <= 1e-6
    # the resumed run logged steps 8 only; with the interrupted part, the log covers 1..8 once each
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_a_run_that_builds_the_kit_equals_a_run_that_reloads_it(tmp_path):
    """Regression: the SFT warm-up used to leave its last gradients on the model, and the first
    optimizer step of the run that built the kit added them in."""
    kit = tmp_path / "fresh-kit"
    settings = ("--tiny_n_train", "24", "--tiny_n_test", "6", "--tiny_hidden", "32", "--tiny_sft_steps", "5")
    first = run(small_args(kit, tmp_path / "a", "--max_steps", "3", "--per_device_train_batch_size", "4")
                + list(settings))  # fmt: skip
    again = run(
        small_args(kit, tmp_path / "b", "--max_steps", "3", "--per_device_train_batch_size", "4")
        + list(settings)
    )
    assert max_diff(params(first), params(again)) == 0.0


@pytest.fixture(scope="module")
def batch4_run(small_kit, tmp_path_factory):
    """The reference run for GA and 2-process: 4 prompts per optimizer step, one process, GA 1."""
    out = tmp_path_factory.mktemp("b4")
    res = run(
        small_args(
            small_kit, out, "--per_device_train_batch_size", "4", "--max_steps", "3",
            "--eval_split", "test", "--per_device_eval_batch_size", "4", "--save_final", "true",
        )
    )  # fmt: skip
    _reset_accelerate()
    return res


def test_gradient_accumulation_matches_large_batch(small_kit, tmp_path, batch4_run, initial_params):
    ga = run(small_args(small_kit, tmp_path / "ga", "--per_device_train_batch_size", "1",
                        "--gradient_accumulation_steps", "4", "--max_steps", "3"))  # fmt: skip
    a, b = params(batch4_run), params(ga)
    update = max_diff(a, initial_params)
    diff = max_diff(a, b)
    print(f"GA: max |θ(b4xGA1) - θ(b1xGA4)| = {diff:.3e}, max update {update:.3e}")
    assert update > 1e-3
    assert diff <= 2e-3 * update
    # the logged step losses agree too (mean over the same 4 prompts)
    la = [h["loss"] for h in batch4_run.history if "loss" in h]
    lb = [h["loss"] for h in ga.history if "loss" in h]
    assert la == pytest.approx(lb, abs=1e-5)


def _two_process_worker(argv):
    trainmod.main(argv)


@pytest.mark.slow
def test_two_processes_match_one_process(small_kit, tmp_path, batch4_run, initial_params):
    from accelerate import debug_launcher
    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    argv = small_args(
        small_kit, out, "--per_device_train_batch_size", "2", "--max_steps", "3",
        "--eval_split", "test", "--per_device_eval_batch_size", "4", "--save_final", "true",
    )  # fmt: skip
    _reset_accelerate()
    debug_launcher(_two_process_worker, args=(argv,), num_processes=2)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["num_processes"] == 2 and run_info["global_batch_prompts"] == 4
    two = {k: v.float() for k, v in load_file(out / "final" / "model.safetensors").items()}
    one = {k: v.float() for k, v in load_file(batch4_run.output_dir / "final" / "model.safetensors").items()}
    update = max_diff(one, {k: initial_params[k] for k in one})
    diff = max_diff(one, two)
    print(f"2 processes: max |θ(1 proc) - θ(2 procs)| = {diff:.3e}, max update {update:.3e}")
    assert diff <= 2e-3 * update
    # the eval over the 6 held-out prompts (4 + 2, evened out across processes) is the same set
    ev2 = json.loads((out / "summary.json").read_text())["eval"]
    ev1 = batch4_run.summary["eval"]
    for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/margins", "eval_logps/chosen"):
        assert ev2[key] == pytest.approx(ev1[key], abs=1e-4), key
    # the reference was computed in two shards, one per process, and cached
    assert run_info["reference"]["train"]["shards"] == 2


# ----------------------------------------------------------------------------------------------
# LoRA with the adapter-disabled reference
# ----------------------------------------------------------------------------------------------


def test_lora_adapter_reference_equals_precomputed(small_kit, tmp_path):
    pytest.importorskip("peft")
    from ncakit.scale.data import KResponseCollator, load_k_dataset, tokenize_k_dataset
    from ncakit.scale.forward import batch_logps
    from ncakit.scale.reference import precompute_reference_logps, reference_logps_from_adapter

    lora = ("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
            "--lora_target_modules", "q_proj,v_proj,up_proj", "--learning_rate", "1e-2",
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--eval_split", "test",
            "--eval_on_start", "true", "--per_device_eval_batch_size", "8")  # fmt: skip
    by_adapter = run(small_args(small_kit, tmp_path / "adapter", *lora, "--reference", "adapter"))
    by_cache = run(
        small_args(small_kit, tmp_path / "cache", *lora, "--reference", "precompute")
        + ["--save_final", "true", "--merge_lora", "true"]
    )
    ev_a = [h for h in by_adapter.history if "eval_loss" in h]
    ev_c = [h for h in by_cache.history if "eval_loss" in h]
    # LoRA's B = 0 at init: policy = reference, the NCA anchor 2 ln 2, for both references
    assert ev_a[0]["eval_loss"] == pytest.approx(LN4, abs=1e-5)
    assert ev_c[0]["eval_loss"] == pytest.approx(LN4, abs=1e-5)
    # same reference numbers -> the same trajectory, step by step
    la = [h["loss"] for h in by_adapter.history if "loss" in h]
    lc = [h["loss"] for h in by_cache.history if "loss" in h]
    assert la == pytest.approx(lc, abs=1e-5)
    assert ev_a[-1]["eval_rewards/chosen"] == pytest.approx(ev_c[-1]["eval_rewards/chosen"], abs=1e-5)
    # the adapter really trained (so disabling it matters), only adapter weights changed
    model = by_adapter.model
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert max(float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n) > 1e-4
    # and the adapter-disabled reference of the TRAINED model equals the base model's precomputed one
    kit = ensure_tiny_kit(small_kit, **SMALL)
    loaded = load_k_dataset(str(kit.train_path), warn=False).dataset
    ds = tokenize_k_dataset(loaded, kit.tokenizer, max_length=64, max_prompt_length=48, warn=False).dataset
    collate = KResponseCollator(kit.tokenizer.pad_token_id, k=4)
    pre = precompute_reference_logps(kit.model, ds, collate, batch_size=8).dataset
    batch = collate([pre[i] for i in range(8)])
    on_the_fly = reference_logps_from_adapter(model, batch)
    torch.testing.assert_close(on_the_fly, batch["ref_logps"], atol=2e-5, rtol=1e-6)
    with torch.no_grad():
        policy = batch_logps(model.eval(), batch)
    assert float((policy - on_the_fly).abs().max()) > 1e-3, "the enabled adapter changes the log-probs"
    # final/: the adapter alone, and (merge_lora) the adapter merged into a fresh copy of the base,
    # whose log-probs equal the trained peft model's
    from transformers import AutoModelForCausalLM

    final = tmp_path / "cache" / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(final / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            batch_logps(merged, batch), batch_logps(by_cache.model.eval(), batch), atol=1e-4, rtol=1e-5
        )


# ----------------------------------------------------------------------------------------------
# Errors that surface before training
# ----------------------------------------------------------------------------------------------


def test_pairwise_loss_on_k4_data_fails_before_loading_the_model(small_kit, tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded before the data check")

    monkeypatch.setattr(prepmod, "load_model", no_model)
    with pytest.raises(
        ValueError, match=r"^loss: 'dpo' is pairwise and needs K = 2 data.*\{4: 24\}.*pairwise_from_k"
    ):
        run(small_args(small_kit, tmp_path / "x", "--loss", "dpo", "--loss_kwargs", "{}"))


def test_pairwise_twin_trains_on_k2(small_kit, tmp_path):
    res = run(small_args(small_kit, tmp_path / "pairs", "--loss", "nca_pair", "--loss_kwargs", "{}",
                         "--pairwise_from_k", "best_vs_worst", "--max_steps", "2",
                         "--per_device_train_batch_size", "4"))  # fmt: skip
    info = json.loads((tmp_path / "pairs" / "run.json").read_text())
    assert info["k"] == 2 and info["data"]["train"]["k_counts"] == {"2": 24}
    rec = [h for h in res.history if "loss" in h]
    assert "rewards/rank_1" not in rec[0], "no rank metrics for K = 2"
    # step 1 starts at policy = reference: pairwise NCA = 2 ln 2 (MATH.md anchor)
    assert rec[0]["loss"] == pytest.approx(LN4, abs=1e-5)


def test_resume_from_a_folder_that_is_not_a_checkpoint(small_kit, tmp_path):
    with pytest.raises(ValueError, match="^resume_from: .* is not a checkpoint folder"):
        run(small_args(small_kit, tmp_path / "r", "--resume_from", str(tmp_path)))
    with pytest.raises(ValueError, match="^resume_from: 'latest' but no checkpoint"):
        run(small_args(small_kit, tmp_path / "r", "--resume_from", "latest"))


# ----------------------------------------------------------------------------------------------
# GPU (skipped without CUDA): the single-GPU launch in bf16, QLoRA when bitsandbytes is present
# ----------------------------------------------------------------------------------------------


def _launch(args: list[str], tmp_path) -> dict:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "scale" / "accelerate" / "single_gpu.yaml"), str(REPO / "scale" / "train.py"), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "summary.json").read_text())


@pytest.mark.gpu
def test_gpu_single_gpu_bf16_launch(tmp_path):
    out = tmp_path / "gpu-bf16"
    summary = _launch(
        ["--config", str(RECIPE), "--output_dir", str(out), "--max_steps", "40", "--progress", "false"],
        tmp_path,
    )
    info = json.loads((out / "run.json").read_text())
    assert info["mixed_precision"] == "bf16" and info["device"].startswith("cuda")
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval_loss"' in x][0]
    assert first["eval_loss"] == pytest.approx(LN4, abs=1e-3)  # bf16 autocast: looser than fp32
    assert summary["eval"]["eval_loss"] < LN4


@pytest.mark.gpu
def test_gpu_qlora_launch(tmp_path):
    pytest.importorskip("bitsandbytes")
    kit_dir = tmp_path / "kit"
    ensure_tiny_kit(kit_dir, n_train=64, n_test=16, sft_steps=100)
    out = tmp_path / "qlora"
    summary = _launch(
        [
            "--config", str(RECIPE), "--output_dir", str(out), "--tiny_kit_dir", str(kit_dir),
            "--tiny_n_train", "64", "--tiny_n_test", "16", "--tiny_sft_steps", "100",
            "--model_name_or_path", str(kit_dir / "model"), "--tokenizer_name_or_path", str(kit_dir / "tokenizer"),
            "--use_peft", "true", "--load_in_4bit", "true", "--reference", "adapter",
            "--torch_dtype", "bfloat16", "--gradient_checkpointing", "true", "--max_steps", "10",
            "--progress", "false", "--save_steps", "0",
        ],
        tmp_path,
    )  # fmt: skip
    assert math.isfinite(summary["loss_last"]) and (out / "final" / "adapter_model.safetensors").is_file()


def test_frozen_reference_copy_and_precompute_only(small_kit, tmp_path, batch4_run):
    """reference: 'model' (a frozen copy, no cache) trains the same trajectory as the precomputed
    cache; --precompute_reference_only fills the cache and stops before training."""
    args = ("--per_device_train_batch_size", "4", "--max_steps", "3", "--eval_split", "test",
            "--per_device_eval_batch_size", "4")  # fmt: skip
    copy_ref = run(small_args(small_kit, tmp_path / "copy", *args, "--reference", "model"))
    assert not (tmp_path / "copy" / "ref_cache").exists()
    la = [h["loss"] for h in copy_ref.history if "loss" in h]
    lb = [h["loss"] for h in batch4_run.history if "loss" in h]
    assert la == pytest.approx(lb, abs=1e-5)
    assert copy_ref.summary["eval"]["eval_loss"] == pytest.approx(
        batch4_run.summary["eval"]["eval_loss"], abs=1e-5
    )

    only = run(small_args(small_kit, tmp_path / "only", *args, "--precompute_reference_only", "true"))
    assert only.state.global_step == 0 and only.summary["reference"]["train"]["shards"] == 1
    caches = list((tmp_path / "only" / "ref_cache").iterdir())
    assert len(caches) == 2, "train and eval splits cached"
    assert (
        not (tmp_path / "only" / "metrics.jsonl").exists()
        or not (tmp_path / "only" / "metrics.jsonl").read_text()
    )


def test_enable_checkpointing_turns_it_on_and_keeps_the_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).train()
        if checkpoint:
            modelmod.enable_checkpointing(model, {"use_reentrant": False})
        on = getattr(model, "is_activation_checkpointing", None)
        assert (on if on is not None else model.is_gradient_checkpointing) is checkpoint
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # recomputing activations in the backward pass changes memory, not the gradient
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_tinylm_is_resolved_once_into_plain_local_paths(small_kit, tmp_path):
    """``tinylm`` as model / dataset becomes the kit's local folders and files at set-up; other
    configurations are returned as they are."""
    from accelerate import Accelerator

    cfg = trainmod.parse_config(small_args(small_kit, tmp_path / "r", "--eval_split", "test"))
    resolved = trainmod.resolve_tiny_kit(cfg, Accelerator(cpu=True))
    assert resolved.model_name_or_path == str(small_kit / "model")
    assert resolved.tokenizer_name_or_path == str(small_kit / "tokenizer")
    assert (resolved.dataset_name, resolved.eval_dataset_name, resolved.eval_split) == (
        str(small_kit / "train.jsonl"),
        str(small_kit / "test.jsonl"),
        "test",
    )
    assert trainmod.resolve_tiny_kit(resolved, Accelerator(cpu=True)) is resolved


def test_a_non_finite_loss_stops_the_run_at_the_step():
    """The once-per-step check, before the optimizer step: the step's loss finiteness and the grad
    norm travel in the stop flag's reduce; the message names the step, the rows and the values."""
    from types import SimpleNamespace

    from ncakit.scale.checkpoint import StopFlag, TrainState

    def run_(bad: bool):
        return SimpleNamespace(
            accelerator=SimpleNamespace(reduce=lambda t, op: t),
            state=TrainState(global_step=6),
            cfg=SimpleNamespace(on_nonfinite="stop"),
            stop=StopFlag(),
            stop_requested=False,
            nonfinite=torch.tensor(bad),
            step_rows=[
                (
                    3,
                    torch.tensor([1.0, float("nan") if bad else 2.0]),
                    torch.tensor([[1.0, 0.0], [0.5, 0.25]]),
                )
            ],
        )

    assert trainmod.check_step(run_(False), torch.tensor(0.5)) is True
    with pytest.raises(
        ValueError,
        match=r"^loss: not finite at step 7 \(epoch 0; micro-batch 3 row 1: loss nan, rewards \[0.5, 0.25\]; grad_norm nan\)",
    ):
        trainmod.check_step(run_(True), torch.tensor(float("nan")))
    # a finite loss with a non-finite gradient norm stops too
    with pytest.raises(ValueError, match=r"^loss: not finite at step 7 .*grad_norm inf"):
        trainmod.check_step(run_(False), torch.tensor(float("inf")))
