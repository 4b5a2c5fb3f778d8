"""Distributed launches on CPU (issue 15, items 1-3): ``accelerate launch`` with 2 processes over gloo
-- DDP (``ACCELERATE_USE_CPU=true`` with ``scale/accelerate/ddp.yaml``), FSDP2 and DeepSpeed ZeRO-3
(``NCAKIT_SHARDED_ON_CPU=true`` with ``scale/accelerate/fsdp2.yaml`` / ``zero3.yaml``: the shims,
:func:`ncakit.scale.launch.sharded_on_cpu`) -- against one process with the same global batch. The
reference log-probs (``reference: precompute``) are computed inside each run, by the prepared model:
no second launch, also under ZeRO-3 (whose ``zero.Init`` partitions the weights as they load).

Reasons for the tolerances:
- fp32 equivalence, 1e-5: the 2-process runs see the same prompts per optimizer step (2 x 2 vs 1 x 4)
  and average the same per-prompt losses; only the order of float32 additions differs (the gradient
  all-reduce, FSDP2's reduce-scatter), a few ulps per step (measured ~1e-6 over 6 steps).
- exact resume under FSDP2: the resumed run repeats the uninterrupted one's float32 operations in the
  same order (sharded weights, optimizer shards, sampler and RNG states restored): max |dtheta| = 0.
- bf16 step 0: the reference log-probs are computed by the prepared model, the very forward (FSDP2's
  bf16 MixedPrecisionPolicy, accelerate's autocast) the policy trains with, so at step 0 every
  implicit reward is exactly 0 and the NCA loss is exactly 2 ln 2 (MATH.md: NCA at policy = reference).
LoRA runs use ``lora_dropout 0``: a dropout mask depends on the process's RNG stream, so 2 processes
could not equal one. Each launch is a real ``accelerate launch`` subprocess (~10-30 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("datasets")

from safetensors.torch import load_file  # noqa: E402

from ncakit.scale.tinylm import ensure_tiny_kit  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_train=24, n_test=6, k=4, hidden=32, layers=2, sft_steps=40, seed=0)
LAUNCH = {
    "one": ("cpu.yaml", 1, {}),
    "ddp": ("ddp.yaml", 2, {"ACCELERATE_USE_CPU": "true"}),
    "fsdp2": ("fsdp2.yaml", 2, {"NCAKIT_SHARDED_ON_CPU": "true"}),
    "zero3": ("zero3.yaml", 2, {"NCAKIT_SHARDED_ON_CPU": "true", "DS_BUILD_OPS": "0"}),
}
ENGINE = {"one": "NO", "ddp": "MULTI_CPU", "fsdp2": "FSDP", "zero3": "DEEPSPEED"}
try:
    import deepspeed  # noqa: F401

    HAVE_DEEPSPEED = True
except ImportError:  # make test installs it (Makefile: .stamp-deepspeed)
    HAVE_DEEPSPEED = False
needs_deepspeed = pytest.mark.skipif(not HAVE_DEEPSPEED, reason="deepspeed is not installed")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit-dist")
    ensure_tiny_kit(root, **SMALL)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kit_dir, out: Path, how: str, *extra: str, mixed_precision: str = "no") -> list[dict]:
    """One ``accelerate launch`` of scale/train.py; the global batch is 4 prompts per optimizer step
    (1 x 4, or 2 processes x 2); 24 prompts: 6 steps; eval (6 prompts) at step 0 and every 3 steps."""
    config, n, env = LAUNCH[how]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "scale/accelerate" / config),
        "--num_processes", str(n), "--mixed_precision", mixed_precision, "--main_process_port", str(free_port()),
        str(REPO / "scale/train.py"),
        "--tiny_kit_dir", str(kit_dir), "--tiny_n_train", "24", "--tiny_n_test", "6", "--tiny_hidden", "32",
        "--tiny_sft_steps", "40", "--max_length", "64", "--max_prompt_length", "48",
        "--loss", "nca", "--beta", "0.1", "--loss_kwargs", "{alpha: 0.1}", "--learning_rate", "1e-3",
        "--warmup_steps", "1", "--logging_steps", "1", "--eval_steps", "3", "--eval_on_start", "true",
        "--per_device_eval_batch_size", "2", "--progress", "false",
        "--per_device_train_batch_size", str(4 // n), "--output_dir", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO), **env}  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["num_processes"] == n
    assert run["distributed_type"].endswith(ENGINE[how])
    if run["reference"]:  # reference: precompute (the adapter reference has no pass)
        assert run["reference"]["train"]["cache_hit"] is False, "the reference pass ran inside this launch"
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def initial_weights(kit_dir: Path, like: dict, peft: bool) -> dict:
    """The weights the run started from: the kit's model, or zeros for LoRA's B (A is random)."""
    if peft:
        return {k: v if "lora_A" in k else v.new_zeros(v.shape) for k, v in like.items()}
    return load_file(Path(kit_dir) / "model" / "model.safetensors")


def final_weights(out: Path) -> dict:
    final = out / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(final / name)


def compare(
    a: list[dict], b: list[dict], keys=("loss", "grad_norm", "eval_loss", "eval_rewards/chosen")
) -> float:
    """Largest |difference| of the logged values, record by record (the same steps logged)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys if k in x)


def weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize(
    "peft, launches",
    [
        (False, ("ddp", "fsdp2")),
        (True, ("ddp", "fsdp2")),
        pytest.param(False, ("zero3",), marks=needs_deepspeed),
    ],
    ids=["full", "lora", "full-zero3"],
)
def test_two_processes_equal_one_process(kit, tmp_path, peft, launches):
    # LoRA: the reference is the policy with its adapter disabled (the precomputed one is tested in full)
    extra = ["--use_peft", "true", "--lora_dropout", "0", "--reference", "adapter"] if peft else []
    logs = {how: launch(kit, tmp_path / how, how, *extra) for how in ("one", *launches)}
    weights = {how: final_weights(tmp_path / how) for how in logs}
    assert sum("loss" in r for r in logs["one"]) == 6 and sum("eval_loss" in r for r in logs["one"]) == 3
    # the runs moved the weights (LoRA's B starts at 0), so equality is not the trivial one
    moved = initial_weights(kit, weights["one"], peft)
    assert weight_diff(weights["one"], moved) > 1e-4
    for how in launches:
        assert compare(logs["one"], logs[how]) <= 1e-5, how
        assert weight_diff(weights["one"], weights[how]) <= 1e-5, how


def test_fsdp2_resume_is_exact(kit, tmp_path):
    """A 6-step FSDP2 run saves a sharded checkpoint (weights and optimizer state) at step 3 and goes
    on; a new launch, into a new folder, resumes that checkpoint: steps 4-6 and the final weights equal
    the uninterrupted run's exactly."""
    whole = launch(kit, tmp_path / "whole", "fsdp2", "--save_steps", "3")
    ckpt = tmp_path / "whole" / "checkpoint-3"
    assert (ckpt / "COMPLETE").exists() and any(ckpt.glob("pytorch_model_fsdp_0*"))
    assert any(ckpt.glob("optimizer_0*"))
    resumed = launch(kit, tmp_path / "resumed", "fsdp2", "--save_steps", "3", "--resume_from", str(ckpt))
    assert [r["step"] for r in resumed if "loss" in r] == [4, 5, 6]
    assert compare([r for r in whole if r["step"] > 3], resumed) == 0.0
    assert weight_diff(final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")) == 0.0


@pytest.mark.parametrize("how", ["ddp", "fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_bf16_step_zero_rewards_are_exactly_zero(kit, tmp_path, how):
    """The reference from the prepared model, policy == reference at step 0 in bf16: exactly on the
    held-out set (the same batches as the reference pass: the same padding, the same kernels); on the
    first training batches (shuffled, so other padding, which may change a bf16 kernel's blocking) within
    one bf16 ulp of the summed log-prob, 2^(floor(log2 |logp|) - 7)."""
    logs = launch(kit, tmp_path / how, how, "--max_steps", "1", mixed_precision="bf16")
    run = json.loads((tmp_path / how / "run.json").read_text())
    assert run["mixed_precision"] == "bf16"
    first_eval, first_train = logs[0], next(r for r in logs if "loss" in r)
    assert first_eval["step"] == 0 and first_train["step"] == 1
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first_eval[f"eval_{key}"] == 0.0, key
    assert first_eval["eval_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    beta = 0.1
    for side in ("chosen", "rejected"):
        ulp = 2.0 ** (math.floor(math.log2(abs(first_train[f"logps/{side}"]))) - 7)
        assert abs(first_train[f"rewards/{side}"]) / beta <= ulp, side
    assert first_train["loss"] == pytest.approx(2 * math.log(2), abs=1e-4)


def test_prompt_sharing_under_ddp_and_fsdp2_equals_the_unshared_run(kit, tmp_path):
    """Issue 18: the shared-prompt forward (the prompt pass, then the responses against its cache,
    both through the wrapper's forward with the log-prob head armed) under DDP and FSDP2 equals one
    unshared process, within the same 1e-5 (only the order of float32 additions differs)."""
    logs = {"one": launch(kit, tmp_path / "one", "one", "--prompt_sharing", "false")}
    for how in ("ddp", "fsdp2"):
        logs[how] = launch(kit, tmp_path / how, how, "--prompt_sharing", "true")
        sharing = json.loads((tmp_path / how / "run.json").read_text())["prompt_sharing"]
        assert sharing["policy"] is True and sharing["reference"] is True, how
        assert compare(logs["one"], logs[how]) <= 1e-5, how
        assert weight_diff(final_weights(tmp_path / "one"), final_weights(tmp_path / how)) <= 1e-5, how


def test_fused_loss_head_is_refused_under_ddp_before_any_work(kit, tmp_path):
    with pytest.raises(
        AssertionError, match="fused_loss_head: true runs in a single process, got 2 processes"
    ):
        launch(kit, tmp_path / "ddp", "ddp", "--fused_loss_head", "true")
    assert not (tmp_path / "ddp" / "ref_cache").exists(), "refused before the reference pass"
