"""Run safety of scale/train.py (issue 14, items 1-6): a fault-injection suite on the small tiny kit.

One run per output folder (a fresh run into a used folder stops before any model is loaded; a lock
file stops a second writer); resume checks the run's fingerprint; a non-finite step never updates
the weights nor reaches disk; checkpoints are atomic (crashes at chosen and seeded-random points,
inside the checkpoint write included, leave the last complete checkpoint, and a resumed run ends
bit-identical to an uninterrupted one: max |Δθ| = 0 on CPU, the same float32 operations in the same
order); a signal to the ``accelerate launch`` process reaches the trainer, which checkpoints and
exits; a tampered checkpoint (a pickle payload) is refused and its code never runs.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from ncakit.losses import LossOutput  # noqa: E402
from ncakit.scale import checkpoint as ckptmod  # noqa: E402
from ncakit.scale import prepare as prepmod  # noqa: E402
from ncakit.scale import train as trainmod  # noqa: E402
from ncakit.scale.runlock import LOCK_FILE, RunLock  # noqa: E402

datasets.disable_progress_bars()
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}  # fmt: skip


from _accelerate import reset_accelerate as _reset_accelerate  # noqa: E402
from _tinykit import build_small_kit, small_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_accelerate_state")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_small_kit(tmp_path_factory, "kit-safety")


def args(kit_dir, out_dir, *extra) -> list[str]:
    """24 prompts, 4 per step: 6 optimizer steps per epoch; no eval; log every step."""
    return small_args(kit_dir, out_dir, "--save_final", "false", *extra)


def run(argv, **kw) -> trainmod.TrainResult:
    _reset_accelerate()
    return trainmod.train(trainmod.parse_config(argv), **kw)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def ckpt_params(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(path / "model.safetensors").items()}


def steps_saved(out: Path) -> list[str]:
    return [p.name for p in ckptmod.list_checkpoints(out)]


@pytest.fixture(scope="module")
def full6(kit, tmp_path_factory):
    """The uninterrupted 6-step run every resumed run must equal bit for bit."""
    res = run(args(kit, tmp_path_factory.mktemp("full6"), "--max_steps", "6"))
    _reset_accelerate()
    return params(res.model)


# ----------------------------------------------------------------------------------------------
# 1. One run per output folder
# ----------------------------------------------------------------------------------------------


def test_fresh_run_into_a_used_folder_stops_before_loading_and_overwrite_starts_over(
    kit, tmp_path, monkeypatch
):
    """Reason: a fresh run used to continue silently in another run's folder (old checkpoints kept by
    rotation, then resumed by `latest`)."""
    out = tmp_path / "used"
    run(args(kit, out, "--max_steps", "4", "--save_steps", "2", "--save_total_limit", "3"))
    assert steps_saved(out) == ["checkpoint-2"]

    def no_model(*a, **k):
        raise AssertionError("no model may be loaded before the output-folder check")

    with monkeypatch.context() as m:
        m.setattr(prepmod, "load_model", no_model)
        with pytest.raises(
            ValueError, match=r"^output_dir: .* holds another run \(checkpoint-2, metrics.jsonl"
        ) as e:
            run(args(kit, out, "--max_steps", "2"))
    msg = str(e.value)
    assert "\n" not in msg and "--resume_from latest" in msg and "--overwrite_output_dir true" in msg
    assert not (out / LOCK_FILE).exists(), "the lock is released when the check fails"

    res = run(args(kit, out, "--max_steps", "3", "--save_steps", "1", "--overwrite_output_dir", "true"))
    assert res.state.global_step == 3
    # the old run's checkpoints and log are gone (rotation keeps only this run's), the kit cache stays
    assert steps_saved(out) == ["checkpoint-1", "checkpoint-2"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "ref_cache").is_dir()


def test_lock_fails_fast_on_a_live_holder_takes_over_a_stale_one_and_is_released_on_errors(
    kit, tmp_path, monkeypatch, caplog
):
    """Reason: two runs writing one folder both exited 0 and one run's results were lost."""
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
        (out / LOCK_FILE).write_text(json.dumps(record))
        t0 = time.perf_counter()
        with pytest.raises(
            ValueError, match=rf"^output_dir: .* is in use by another run \(pid {holder.pid} on "
        ):
            run(args(kit, out, "--max_steps", "1"))
        assert time.perf_counter() - t0 < 10, "fails fast, before loading anything"
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid, (
            "the holder's lock is untouched"
        )
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over with a warning
    with caplog.at_level("WARNING", logger="ncakit.scale.runlock"):
        res = run(args(kit, out, "--max_steps", "1"))
    assert res.state.global_step == 1
    assert any("stale lock" in r.getMessage() and str(holder.pid) in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_FILE).exists(), "released on a normal exit"

    def boom(*a, **k):
        raise RuntimeError("injected failure while loading the model")

    monkeypatch.setattr(prepmod, "load_model", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(args(kit, tmp_path / "err", "--max_steps", "1"))
    assert not (tmp_path / "err" / LOCK_FILE).exists(), "released when the run raises"


def test_every_process_of_a_launch_fails_when_another_run_holds_the_folder(kit, tmp_path):
    """Only the main process takes the lock; the others learn its verdict (a broadcast) and fail
    too, instead of training on alone or hanging in the first collective."""
    out = tmp_path / "held"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / LOCK_FILE).write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "x"})
        )
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(REPO / "scale" / "train.py"), *args(kit, out, "--max_steps", "2")]  # fmt: skip
        proc = subprocess.run(cmd, env={**ENV, "ACCELERATE_USE_CPU": "true"}, cwd=REPO, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("scale/train.py: error: output_dir:")]
    assert len(errors) == 2 and all(f"in use by another run (pid {holder.pid} on" in e for e in errors), (
        proc.stderr[-6000:]
    )
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("*checkpoint-*"))


def test_lock_file_records_pid_host_and_start_and_is_written_atomically(tmp_path):
    lock = RunLock(tmp_path).acquire()
    rec = json.loads((tmp_path / LOCK_FILE).read_text())
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["started"]
    assert not list(tmp_path.glob(f".{LOCK_FILE}.*")), "no temporary file left behind"
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


# ----------------------------------------------------------------------------------------------
# 2. Resume checks identity
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_step_ckpt(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt2")
    run(args(kit, out, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "5"))
    _reset_accelerate()
    return out / "checkpoint-2"


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (
            ["--learning_rate", "2e-3"],
            r"differing keys: learning_rate \(0\.001 -> 0\.002\); .*--resume_allow_changes learning_rate$",
        ),
        (
            ["--loss", "infonca", "--loss_kwargs", "{}"],
            r"differing keys: loss \('nca' -> 'infonca'\), loss_kwargs",
        ),
        (
            ["--per_device_train_batch_size", "2"],
            r"another batch geometry: global_batch_prompts \(4 -> 2\), per_device_train_batch_size \(4 -> 2\)",
        ),
        (
            ["--gradient_accumulation_steps", "2"],
            r"another batch geometry: .*gradient_accumulation_steps \(1 -> 2\)",
        ),
        (
            ["--max_steps", "1"],
            r"^max_steps: 1 is below the step of the checkpoint being resumed \(.*checkpoint-2, step 2\)",
        ),
    ],
    ids=["lr", "loss", "batch_size", "grad_accum", "max_steps_below"],
)
def test_resume_with_a_changed_run_is_refused_naming_the_keys(kit, two_step_ckpt, tmp_path, extra, pattern):
    """Reason: a new loss, lr or batch size was accepted without a word (a new batch size skips the
    wrong prompts), and --max_steps below the checkpoint's step was ignored."""
    with pytest.raises(ValueError, match=pattern) as e:
        run(args(kit, tmp_path / "r", "--max_steps", "6", "--resume_from", str(two_step_ckpt), *extra))
    assert "\n" not in str(e.value)


def test_a_deliberate_change_is_allowed_logged_and_recorded(kit, two_step_ckpt, tmp_path, capsys):
    out = tmp_path / "r"
    res = run(args(kit, out, "--max_steps", "6", "--save_steps", "3", "--resume_from", str(two_step_ckpt),
                   "--learning_rate", "2e-3", "--resume_allow_changes", "learning_rate"))  # fmt: skip
    assert res.state.global_step == 6
    assert (
        "resume_allow_changes: learning_rate changes from 0.001 to 0.002 at step 2" in capsys.readouterr().out
    )
    change = {"step": 2, "key": "learning_rate", "from": 0.001, "to": 0.002}
    assert json.loads((out / "run.json").read_text())["resume_changes"] == [change]
    extra = json.loads((out / "checkpoint-3" / ckptmod.NCAKIT_STATE_FILE).read_text())
    assert extra["changes"] == [change] and extra["fingerprint"]["learning_rate"] == 0.002
    with pytest.raises(ValueError, match=r"^resume_allow_changes: 'num_processes' is batch geometry"):
        trainmod.parse_config(["--resume_allow_changes", "num_processes"])
    with pytest.raises(ValueError, match=r"^resume_allow_changes: unknown fingerprint key 'lr'"):
        trainmod.parse_config(["--resume_allow_changes", "lr"])


# ----------------------------------------------------------------------------------------------
# 3. Non-finite steps never reach disk
# ----------------------------------------------------------------------------------------------


def _nan_at(monkeypatch, steps: set[int]):
    """The loss of the given optimizer steps (1-based; one micro-batch per step, no eval) becomes NaN."""
    real_get_loss = prepmod.get_loss
    calls = {"n": 0}

    def get_loss(name):
        fn = real_get_loss(name)

        def poisoned(*a, **k):
            out = fn(*a, **k)
            calls["n"] += 1
            if calls["n"] in steps:
                return LossOutput(out.loss * float("nan"), out.implicit_rewards, out.weights)
            return out

        return poisoned

    monkeypatch.setattr(prepmod, "get_loss", get_loss)


def test_nonfinite_stop_updates_nothing_saves_nothing_and_keeps_the_last_checkpoint(
    kit, tmp_path, monkeypatch
):
    """Reason: a NaN step was checkpointed with every weight NaN and the good checkpoint rotated away."""
    _nan_at(monkeypatch, {5})
    out = tmp_path / "nan"
    seen = {}
    with pytest.raises(
        ValueError, match=r"^loss: not finite at step 5 \(epoch 0; micro-batch 4 row 0: loss nan, rewards \["
    ) as e:
        run(args(kit, out, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1"),
            callbacks=[lambda s: seen.update(step=s.global_step)])  # fmt: skip
    assert "grad_norm nan" in str(e.value) and "\n" not in str(e.value)
    assert seen["step"] == 4, "stopped inside step 5, before its optimizer step"
    assert steps_saved(out) == ["checkpoint-4"], "the last finite checkpoint is kept, nothing newer written"
    weights = ckpt_params(out / "checkpoint-4")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not list(out.glob(".checkpoint-*")), "no temporary folder left"


def test_nonfinite_skip_leaves_the_weights_and_the_optimizer_untouched_and_counts(kit, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3})
    snapshots, res_model = {}, {}

    def snap(state):
        snapshots[state.global_step] = params(res_model["m"])

    real_prepare = trainmod.prepare_training

    def prepare(run_, data, resume_path):
        real_prepare(run_, data, resume_path)
        res_model["m"] = run_.accelerator.unwrap_model(run_.model)
        res_model["opt"] = run_.optimizer

    monkeypatch.setattr(trainmod, "prepare_training", prepare)
    res = run(args(kit, tmp_path / "skip", "--max_steps", "4", "--on_nonfinite", "skip"), callbacks=[snap])
    assert res.state.global_step == 4 and res.state.skipped_steps == 1
    assert max_diff(snapshots[2], snapshots[3]) == 0.0, "the skipped step left every weight as it was"
    assert max_diff(snapshots[3], snapshots[4]) > 0, "training went on after it"
    records = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1]
    assert "loss" not in records[2], "the skipped step's NaN rows stay out of the metrics"
    assert all(r["loss"] is not None for r in records if "loss" in r)
    # Adam's step count: 3 applied steps of 4
    state = res_model["opt"].state_dict()["state"]
    assert {int(v["step"]) for v in state.values()} == {3}


# ----------------------------------------------------------------------------------------------
# 4. Atomic checkpoints: crashes at any point, inside the checkpoint write included
# ----------------------------------------------------------------------------------------------

CRASHER = """
import os, random, sys
mode, seed, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rng = random.Random(seed)
from ncakit.scale import checkpoint as ck, train as tm
import transformers.modeling_utils as other  # save_pretrained writes the checkpoint's model
calls = {"save": 0, "replace": 0}
if mode == "mid_training":          # killed between two steps (a seeded-random step after the first save)
    at = rng.randint(3, 5)
    def cb(state):
        if state.global_step == at:
            os._exit(9)
    tm.train(tm.parse_config(argv), callbacks=[cb])
elif mode == "mid_model_write":     # killed while writing model.safetensors of the 2nd checkpoint
    real = other.safe_save_file
    def partial(tensors, filename, metadata=None):
        calls["save"] += 1
        real(tensors, filename, metadata=metadata)
        if calls["save"] == 2:
            data = open(filename, "rb").read()
            with open(filename, "wb") as fh:
                fh.write(data[: rng.randint(1, len(data) - 1)])  # a seeded-random byte
            os._exit(9)
    other.safe_save_file = partial
    tm.train(tm.parse_config(argv))
elif mode == "before_marker":       # killed after every state file, before COMPLETE
    real = ck._write_json
    def w(path, payload):
        if path.name == ck.COMPLETE_FILE and payload["step"] == 4:
            os._exit(9)
        real(path, payload)
    ck._write_json = w
    tm.train(tm.parse_config(argv))
elif mode == "between_renames":     # overwriting step 4: killed after the old folder moved aside
    real = os.replace
    def rep(a, b):
        real(a, b)
        if str(b).endswith(".checkpoint-4.old"):
            os._exit(9)
    ck.os.replace = rep
    tm.train(tm.parse_config(argv))
"""


def _crash(mode: str, argv: list[str], seed: int = 0) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHER, mode, str(seed), *argv], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 9, proc.stderr[-3000:]


@pytest.mark.parametrize("mode", ["mid_training", "mid_model_write", "before_marker"])
def test_a_crash_at_any_point_leaves_the_last_complete_checkpoint_and_resume_is_exact(
    kit, tmp_path, full6, mode
):
    """Reason: a crash mid-write left a half-written model that `latest` picked."""
    seed = random.SystemRandom().randrange(1000)  # a new random point each run; printed to replay
    print(f"crash mode {mode}, seed {seed}")
    out = tmp_path / mode
    common = ("--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1")
    _crash(mode, args(kit, out, *common), seed)
    assert steps_saved(out) in (["checkpoint-2"], ["checkpoint-4"]), steps_saved(out)
    if mode != "mid_training":
        assert steps_saved(out) == ["checkpoint-2"], "the interrupted step-4 save is not a checkpoint"
        assert (out / ".checkpoint-4.tmp").exists(), "the unfinished save stays aside"
    resumed = run(args(kit, out, *common, "--resume_from", "latest"))
    assert not list(out.glob(".checkpoint-*")), "the unfinished save was cleaned up"
    assert resumed.state.global_step == 6
    assert max_diff(params(resumed.model), full6) == 0.0


def test_overwriting_a_checkpoint_of_the_same_step_is_atomic(kit, tmp_path, full6):
    out = tmp_path / "ow"
    common = ("--max_steps", "6", "--save_steps", "2", "--save_total_limit", "3")
    run(args(kit, out, *common))  # checkpoints 2 and 4 (the last step is not a periodic save)
    before = ckpt_params(out / "checkpoint-4")
    step2 = str(out / "checkpoint-2")
    _crash("between_renames", args(kit, out, *common, "--resume_from", step2))  # re-saving step 4
    ck = out
    assert not (ck / "checkpoint-4").exists() and (ck / ".checkpoint-4.old").exists()
    assert ckptmod.is_complete(ck / ".checkpoint-4.tmp")
    resumed = run(args(kit, out, *common, "--resume_from", "latest"))  # recovery puts the new step 4 in place
    assert resumed.state.global_step == 6
    assert max_diff(ckpt_params(ck / "checkpoint-4"), before) == 0.0
    assert max_diff(params(resumed.model), full6) == 0.0


def test_commit_and_recovery_keep_the_old_or_the_new_folder(tmp_path):
    def folder(path: Path, text: str, complete: bool = True) -> Path:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text(text)
        if complete:
            ckptmod._write_json(path / ckptmod.COMPLETE_FILE, {"step": 1, "files": ckptmod._manifest(path)})
        return path

    root = tmp_path  # checkpoint-N folders sit in the output folder itself, as the HF Trainer's
    final = folder(root / "checkpoint-1", "old")
    ckptmod.commit_dir(folder(root / ".checkpoint-1.tmp", "new"), final)
    assert (final / "model.safetensors").read_text() == "new" and sorted(os.listdir(root)) == ["checkpoint-1"]
    # a crash after the old folder moved aside, before the new one moved in: recovery takes the new one
    os.replace(final, root / ".checkpoint-1.old")
    folder(root / ".checkpoint-1.tmp", "newer")
    ckptmod.recover_checkpoints(tmp_path)
    assert (final / "model.safetensors").read_text() == "newer" and sorted(os.listdir(root)) == [
        "checkpoint-1"
    ]
    # ... and the old one when the new one was unfinished
    os.replace(final, root / ".checkpoint-1.old")
    folder(root / ".checkpoint-1.tmp", "half", complete=False)
    ckptmod.recover_checkpoints(tmp_path)
    assert (final / "model.safetensors").read_text() == "newer" and sorted(os.listdir(root)) == [
        "checkpoint-1"
    ]
    # a file changed after the save: the checkpoint is refused, naming the file
    (final / "model.safetensors").write_text("ne")
    with pytest.raises(ValueError, match=r"^resume_from: .*model.safetensors is missing or changed"):
        ckptmod.verify_checkpoint(final)


# ----------------------------------------------------------------------------------------------
# 5. Preemption through the real launcher
# ----------------------------------------------------------------------------------------------


def test_the_launchers_are_recognised_by_their_command_lines():
    py = "/venv/bin/python"
    assert ckptmod.is_launcher([py, "/venv/bin/accelerate", "launch", "--config_file", "c.yaml", "train.py"])
    assert ckptmod.is_launcher([py, "-m", "accelerate.commands.launch", "train.py"])
    assert ckptmod.is_launcher([py, "/venv/bin/torchrun", "--nproc_per_node", "8", "train.py"])
    assert ckptmod.is_launcher([py, "-m", "torch.distributed.run", "train.py"])
    assert not ckptmod.is_launcher([py, "-m", "pytest", "tests/accelerate_launch_test.py"])
    assert not ckptmod.is_launcher(["/bin/bash", "run.sh"])


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize(
    ("sig", "launcher_kind"),
    [(signal.SIGTERM, "accelerate"), (signal.SIGUSR1, "accelerate"), (signal.SIGUSR1, "torchrun-2")],
    ids=["SIGTERM-accelerate-launch", "SIGUSR1-accelerate-launch", "SIGUSR1-torchrun-2-processes"],
)
def test_a_signal_to_accelerate_launch_reaches_the_trainer_which_checkpoints_and_exits(
    kit, tmp_path, sig, launcher_kind
):
    """Reason: SIGTERM to `accelerate launch` (SLURM, Kubernetes) killed only the launcher; the trainer
    ran on and saved nothing. Also: a second writer fails fast while the run holds the folder.
    `accelerate launch` (one process) forwards nothing and dies on both signals; torchrun with two
    processes dies on SIGUSR1 (it forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT): the trainers' parent-death
    signal (SIGTERM) makes every process checkpoint, agreeing on the step."""
    out = tmp_path / "launched"
    script = [str(REPO / "scale" / "train.py"), *args(kit, out, "--max_steps", "100000")]
    env = dict(ENV)
    if launcher_kind == "accelerate":
        config = str(REPO / "scale" / "accelerate" / "cpu.yaml")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *script]
    else:  # torchrun: what every multi-process accelerate launch runs; 2 gloo processes on CPU
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *script]
    launcher = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and not (
            metrics.is_file() and len(metrics.read_text().splitlines()) >= 3
        ):
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            time.sleep(0.2)
        trainer = json.loads((out / LOCK_FILE).read_text())["pid"]
        assert trainer != launcher.pid, "the lock names the training process, not the launcher"
        # a second writer into the same folder fails at once, naming the holder
        with pytest.raises(ValueError, match=rf"is in use by another run \(pid {trainer} on "):
            run(args(kit, out, "--max_steps", "2", "--resume_from", "latest"))
        os.kill(launcher.pid, sig)  # the launcher, not the inner script
        launcher.wait(timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline and not _dead(trainer):
            time.sleep(0.2)
        assert _dead(trainer), "the trainer exited"
    finally:
        if launcher.poll() is None:
            launcher.kill()
    saved = ckptmod.list_checkpoints(out)
    assert len(saved) == 1, "a checkpoint was written on the signal"
    state = json.loads((saved[0] / ckptmod.STATE_FILE).read_text())
    assert (
        state["reason"] == "SIGTERM" and state["global_step"] >= 3
    )  # SIGUSR1 kills the launcher: SIGTERM here
    if launcher_kind == "torchrun-2":
        assert json.loads((out / "run.json").read_text())["num_processes"] == 2
        assert (saved[0] / "random_states_1.pkl").is_file(), "both processes saved their state"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["global_step"] == state["global_step"]
    assert not (out / LOCK_FILE).exists(), "the trainer released the lock"


# ----------------------------------------------------------------------------------------------
# 6. Nothing executes on resume
# ----------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize(
    ("target", "forge_manifest"),
    [("optimizer.bin", False), ("random_states_0.pkl", False), ("random_states_0.pkl", True),
     ("optimizer.bin", True), ("custom_checkpoint_0.pkl", False)],
    ids=["optimizer", "rng", "rng-forged-manifest", "optimizer-forged-manifest", "planted-custom-state"],
)  # fmt: skip
def test_a_tampered_checkpoint_is_refused_and_its_payload_never_runs(
    kit, tmp_path, target, forge_manifest, monkeypatch
):
    """Reason: a registered state file was unpickled with weights_only=False and a planted payload ran."""
    out = tmp_path / "t"
    run(args(kit, out, "--max_steps", "3", "--save_steps", "2"))
    ck = out / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    with open(ck / target, "wb") as fh:
        pickle.dump({"state": _Payload(marker)}, fh, protocol=2)
    if forge_manifest:  # the attacker rewrites the manifest too: weights_only=True still refuses
        complete = json.loads((ck / ckptmod.COMPLETE_FILE).read_text())
        complete["files"] = ckptmod._manifest(ck)
        (ck / ckptmod.COMPLETE_FILE).write_text(json.dumps(complete))

    def no_model(*a, **k):
        raise AssertionError("a tampered checkpoint is refused before the model is loaded")

    monkeypatch.setattr(prepmod, "load_model", no_model)
    with pytest.raises(ValueError, match=rf"^resume_from: .*{target}") as e:
        run(args(kit, out, "--max_steps", "4", "--resume_from", "latest"))
    assert "\n" not in str(e.value)
    assert not marker.exists(), "the payload did not run"


def test_every_state_file_is_json_safetensors_or_weights_only(kit, tmp_path):
    """What ncakit writes: JSON and safetensors of its own; accelerate's torch files load with
    weights_only=True (the scheduler is no longer an accelerate custom state, unpickled without it)."""
    out = tmp_path / "files"
    run(args(kit, out, "--max_steps", "3", "--save_steps", "2"))
    ck = out / "checkpoint-2"
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["COMPLETE", "chat_template.jinja", "config.json", "generation_config.json",
                     "model.safetensors", "ncakit_state.json", "optimizer.bin", "random_states_0.pkl",
                     "tokenizer.json", "tokenizer_config.json", "trainer_state.json"]  # fmt: skip
    for name in ("optimizer.bin", "random_states_0.pkl"):
        from accelerate.utils import load

        load(ck / name)  # weights_only=True
    assert json.loads((ck / ckptmod.NCAKIT_STATE_FILE).read_text())["lr_scheduler"]["last_epoch"] == 2


FULL_DISK = """
import errno, runpy, sys
import ncakit.scale.checkpoint as c
write_json = c._write_json
def full(path, payload):  # the disk fills while the step-4 checkpoint is written (its last file)
    if path.name == c.COMPLETE_FILE and "checkpoint-4" in str(path.parent):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write_json(path, payload)
c._write_json = full
sys.argv = ["scale/train.py", *sys.argv[1:]]
runpy.run_path("scale/train.py", run_name="__main__")
"""


def test_a_full_disk_mid_checkpoint_is_named_in_one_line_and_loses_nothing(kit, tmp_path, full6):
    """Reason: a full disk gave `unexpected pos ...` and could leave a half-written checkpoint."""
    out = tmp_path / "full"
    common = ("--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, *args(kit, out, *common)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        last.startswith("scale/train.py: error: no space left on device writing ") and "checkpoint-4" in last
    )
    assert steps_saved(out) == ["checkpoint-2"], "the checkpoint before the full disk survives rotation"
    resumed = run(args(kit, out, *common, "--resume_from", "latest"))
    assert resumed.state.global_step == 6
    assert max_diff(params(resumed.model), full6) == 0.0


def _no_data(*args, **kwargs):
    raise AssertionError("data was loaded before the launch check")


def test_fsdp_requested_but_not_active_stops_before_any_data(kit, tmp_path, monkeypatch):
    """Reason: accelerate silently drops FSDP on CPU; the run went on as a plain one-process run."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(prepmod, "prepare_data", _no_data)
    with pytest.raises(
        ValueError, match=r"^accelerate config: FSDP was requested \(ACCELERATE_USE_FSDP=true\) but"
    ):
        run(args(kit, tmp_path / "fsdp", "--max_steps", "2"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal off CUDA")
def test_qlora_without_cuda_stops_before_any_data(kit, tmp_path, monkeypatch):
    """Reason: QLoRA without CUDA was refused only after all data was tokenized."""
    monkeypatch.setattr(prepmod, "prepare_data", _no_data)
    with pytest.raises(ValueError, match=r"^load_in_4bit: QLoRA .* needs a CUDA GPU; this run is on cpu"):
        run(args(kit, tmp_path / "qlora", "--max_steps", "2", "--use_peft", "true", "--load_in_4bit", "true"))


def test_the_requested_world_size_is_read_from_the_launcher_with_accelerates_parser():
    from ncakit.scale.launch import requested_num_processes

    cpu = str(REPO / "scale" / "accelerate" / "cpu.yaml")
    venv = "/venv/bin/accelerate"
    assert requested_num_processes(
        ["python", venv, "launch", "--config_file", cpu, "--num_processes", "2", "t.py"]
    ) == (
        2,
        "--num_processes 2",
    )
    assert (
        requested_num_processes([venv, "launch", "--config_file", cpu, "t.py", "--num_processes", "5"])[0]
        == 1
    )
    assert (
        requested_num_processes(
            ["python", "-m", "accelerate.commands.launch", "--num_processes", "3", "t.py"]
        )[0]
        == 3
    )
    for other in (
        ["bash", "-c", "x"],
        ["torchrun", "--nproc_per_node", "2", "t.py"],
        [venv, "launch", "t.py"],
    ):
        assert requested_num_processes(other) is None, other  # never a guess


def test_a_launch_running_fewer_processes_than_asked_stops_before_any_data(kit, tmp_path):
    """Reason: `--num_processes 2` with scale/accelerate/cpu.yaml silently ran one process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "scale" / "accelerate" / "cpu.yaml"), "--num_processes", "2",
           str(REPO / "scale" / "train.py"), *args(kit, tmp_path / "ws", "--max_steps", "2")]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if x.startswith("scale/train.py: error:"))
    assert "accelerate launch: 2 processes were asked for (--num_processes 2) but 1 is running" in line
    assert (
        not (tmp_path / "ws" / "metrics.jsonl").exists()
        or not (tmp_path / "ws" / "metrics.jsonl").read_text()
    )


def test_independent_processes_sharing_an_output_dir_stop_before_any_data(kit, tmp_path, monkeypatch):
    """Reason: ``--multi_gpu`` on CPU (or torchrun without ACCELERATE_USE_CPU) started N processes that
    accelerate ran as N independent one-process runs, all writing the same output folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(prepmod, "prepare_data", _no_data)
    with pytest.raises(
        ValueError,
        match=r"^WORLD_SIZE: the launcher started 2 processes but accelerate runs each as a 1-process NO run",
    ):
        run(args(kit, tmp_path / "world", "--max_steps", "2"))


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, r"^NCAKIT_SHARDED_ON_CPU: set, but this launch asks for neither FSDP nor DeepSpeed"),
        ({"ACCELERATE_USE_FSDP": "true", "CUDA": "1"}, r"^NCAKIT_SHARDED_ON_CPU: set on a machine with CUDA"),
    ],
    ids=["no-sharding-backend", "cuda-present"],
)
def test_the_cpu_sharding_shim_refuses_where_it_does_not_apply(monkeypatch, env, expected):
    from ncakit.scale.launch import sharded_on_cpu

    monkeypatch.setenv("NCAKIT_SHARDED_ON_CPU", "true")
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        if var == "CUDA":
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        else:
            monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=expected):
        sharded_on_cpu()
    monkeypatch.delenv("NCAKIT_SHARDED_ON_CPU")
    assert sharded_on_cpu() is False  # unset: nothing touched
