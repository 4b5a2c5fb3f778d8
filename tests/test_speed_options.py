"""scale/train.py's speed options (issue 18): ``prompt_sharing`` (each prompt run once, its keys and
values reused by its K responses: :mod:`ncakit.scale.prefix`) and ``fused_loss_head`` (the loss
computed inside the LM head: :mod:`ncakit.fused`), against the plain run on the tiny kit.

Reasons for the tolerances: both options compute the same float32 quantities in another order (the
prompt's keys and values from a B-row forward instead of B*K rows; the head's gradient formed in
the forward), so 6 optimizer steps at learning rate 1e-3 stay within 1e-5 of the plain run, logged
values and final weights (measured ~1e-7 to 1e-6). The runs move the weights (checked), so equality
is not the trivial one. Multi-process runs (DDP, FSDP2, ZeRO-3) are in test_distributed.py."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402
from _tinykit import build_small_kit, run_train, small_args  # noqa: E402

from ncakit.scale.cli import parse_config  # noqa: E402

datasets.disable_progress_bars()
pytestmark = pytest.mark.usefixtures("clean_accelerate_state")
TOL = 1e-5
# timings; and the accuracies: counts of comparisons (r_chosen > r_rejected), which round-off flips
# where two implicit rewards are within ~1e-7 of each other (at the first steps, policy ~ reference)
UNEQUAL = ("runtime", "per_second", "accurac")
TOKEN_METRICS = ("entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = build_small_kit(tmp_path_factory, "kit-speed")
    (root / "ref_cache").mkdir()  # one reference cache for every run of this module
    return root


def run(kit_dir, out, *extra):
    """6 optimizer steps of 4 prompts x K = 4, eval on the kit's 6 held-out prompts at steps 0, 3, 6."""
    argv = small_args(
        kit_dir, out, "--eval_split", "test", "--eval_steps", "3", "--eval_on_start", "true",
        "--per_device_eval_batch_size", "3", "--save_final", "true",
        "--ref_cache_dir", str(kit_dir / "ref_cache"), *extra,
    )  # fmt: skip
    result = run_train(argv)
    info = json.loads((out / "run.json").read_text())
    return result, info


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def max_log_diff(a: list[dict], b: list[dict], *, skip=()) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    diffs = [
        abs(x[k] - y[k])
        for x, y in zip(a, b)
        for k in x
        if k in y and k not in skip and isinstance(x[k], float) and not any(w in k for w in UNEQUAL)
    ]
    assert len(diffs) > 30
    return max(diffs)


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def plain(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    result, info = run(kit, out, "--prompt_sharing", "false")
    return result, info


def test_prompt_sharing_equals_the_unshared_run(kit, plain, tmp_path):
    base, base_info = plain
    assert base_info["prompt_sharing"] == {
        "setting": False, "policy": False, "reference": False, "reason": "prompt_sharing: false"
    }  # fmt: skip
    shared, info = run(kit, tmp_path / "shared", "--prompt_sharing", "auto")
    # auto on the tiny kit (Llama, sdpa, K = 4): every forward shares its prompts
    assert info["prompt_sharing"] == {"setting": "auto", "policy": True, "reference": True, "reason": None}
    # the shared reference pass is another cache entry than the plain run's (equal to round-off, not
    # bits), in the same cache folder
    assert info["reference"]["train"]["cache_hit"] is False
    assert info["reference"]["train"]["key"] != base_info["reference"]["train"]["key"]
    assert max_log_diff(base.history, shared.history) <= TOL
    for key in TOKEN_METRICS:  # the token metrics come from the shared forward too
        assert any(key in r for r in shared.history), key
    w0, w1 = weights(base), weights(shared)
    assert max_weight_diff(w0, w1) <= TOL


def test_the_runs_moved_the_weights(kit, plain):
    from safetensors.torch import load_file

    base, _ = plain
    start = load_file(kit / "model" / "model.safetensors")
    final = weights(base)
    assert max(float((final[k] - start[k]).abs().max()) for k in start) > 1e-4


def test_prompt_sharing_with_lora_and_the_adapter_reference(kit, tmp_path):
    lora = ["--use_peft", "true", "--lora_dropout", "0", "--reference", "adapter"]
    a, _ = run(kit, tmp_path / "a", *lora, "--prompt_sharing", "false")
    b, info = run(kit, tmp_path / "b", *lora, "--prompt_sharing", "true")
    assert info["prompt_sharing"]["policy"] and info["prompt_sharing"]["reference"]
    assert max_log_diff(a.history, b.history) <= TOL
    assert max_weight_diff(weights(a), weights(b)) <= TOL


def test_gradient_checkpointing_shares_too_and_reentrant_does_not(kit, plain, tmp_path):
    result, info = run(kit, tmp_path / "gc", "--gradient_checkpointing", "true")
    assert info["prompt_sharing"] == {"setting": "auto", "policy": True, "reference": True, "reason": None}
    assert max_log_diff(plain[0].history, result.history) <= TOL
    assert max_weight_diff(weights(plain[0]), weights(result)) <= TOL
    reentrant = [
        "--gradient_checkpointing",
        "true",
        "--gradient_checkpointing_kwargs",
        "{use_reentrant: true}",
    ]
    result, info = run(kit, tmp_path / "reentrant", *reentrant)
    sharing = info["prompt_sharing"]
    assert sharing["policy"] is False and sharing["reference"] is True
    assert "reentrant gradient checkpointing" in sharing["reason"]
    assert max_log_diff(plain[0].history, result.history) <= TOL
    with pytest.raises(
        ValueError, match=r"^prompt_sharing: true, but prompt sharing is not supported with reentrant"
    ):
        run(kit, tmp_path / "reentrant-true", *reentrant, "--prompt_sharing", "true")


def test_prompt_sharing_values(tmp_path):
    for raw, want in (("auto", "auto"), ("true", True), ("false", False)):
        assert parse_config(["--prompt_sharing", raw, "--output_dir", str(tmp_path)]).prompt_sharing == want
    with pytest.raises((TypeError, ValueError), match="^prompt_sharing: expected one of .auto. or bool"):
        parse_config(["--prompt_sharing", "sometimes", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("share", ["false", "true"])
def test_fused_loss_head_equals_the_plain_run(kit, plain, tmp_path, share):
    base, _ = plain
    fused, info = run(kit, tmp_path / "fused", "--fused_loss_head", "true", "--prompt_sharing", share)
    assert info["config"]["fused_loss_head"] is True
    # the fused head has no token metrics; everything else it logs equals the plain run's
    assert not any(key in r for r in fused.history for key in TOKEN_METRICS)
    assert max_log_diff(base.history, fused.history, skip=TOKEN_METRICS) <= TOL
    assert max_weight_diff(weights(base), weights(fused)) <= TOL


def test_fused_loss_head_with_averaged_logps_and_infonca(kit, tmp_path):
    extra = ["--loss", "infonca", "--loss_kwargs", "{alpha: 0.5}", "--average_logps", "true"]
    a, _ = run(kit, tmp_path / "a", *extra)
    b, _ = run(kit, tmp_path / "b", *extra, "--fused_loss_head", "true")
    assert max_log_diff(a.history, b.history, skip=TOKEN_METRICS) <= TOL
    assert max_weight_diff(weights(a), weights(b)) <= TOL
