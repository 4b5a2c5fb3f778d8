"""``report_to``: every accelerate tracker, named as transformers names them, logging the HF Trainer's
tags (``train/loss``, ``eval/loss``) while metrics.jsonl keeps its own (``loss``, ``eval_loss``).

A real run on the small tiny kit with ``--report_to tensorboard,trackio``: tensorboard's event file
(read back with tensorboard's ``EventAccumulator``) and trackio's local sqlite store (``TRACKIO_DIR``
in tmp_path) hold every metrics.jsonl value, step by step, under its HF tag. Then the unit tests:
``all`` / ``none`` / an unknown / a not-installed name, and the tag rule (checked against
transformers' ``rewrite_logs``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

from accelerate.tracking import GeneralTracker  # noqa: E402

from ncakit.scale import tracking  # noqa: E402
from ncakit.scale import train as trainmod  # noqa: E402
from ncakit.scale.tracking import (  # noqa: E402
    JsonlTracker,
    hf_tags,
    make_trackers,
    resolve_report_to,
    with_hf_tags,
)

datasets.disable_progress_bars()

from _accelerate import reset_accelerate as _reset_accelerate  # noqa: E402
from _tinykit import build_small_kit, small_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("clean_accelerate_state")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_small_kit(tmp_path_factory, "kit-tracking")


def args(kit_dir, out_dir, *extra) -> list[str]:
    """24 prompts, 4 per step; eval (6 prompts) before the first step and every 2 steps; log every step."""
    return small_args(
        kit_dir, out_dir, "--eval_split", "test", "--eval_steps", "2", "--eval_on_start", "true", *extra
    )


def point_trackio_at(path: Path, monkeypatch) -> None:
    """trackio reads ``TRACKIO_DIR`` once, at import: set it, and its modules' copies if imported."""
    monkeypatch.setenv("TRACKIO_DIR", str(path))
    for name, mod in list(sys.modules.items()):
        if (name == "trackio" or name.startswith("trackio.")) and hasattr(mod, "TRACKIO_DIR"):
            monkeypatch.setattr(mod, "TRACKIO_DIR", path)


def numeric(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # tensorboard stores float32


def by_tag(rows: list[dict]) -> dict[str, dict[int, float]]:
    """metrics.jsonl rows -> {HF tag: {step: value}} for the numeric values."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row["step"]
        for k, v in hf_tags({k: v for k, v in row.items() if k != "step"}).items():
            if numeric(v):
                out.setdefault(k, {})[step] = float(v)
    return out


@pytest.fixture(scope="module")
def tracked_run(kit, tmp_path_factory):
    """One 4-step run reporting to tensorboard and trackio (both local, under tmp_path)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("trackio")
    root = tmp_path_factory.mktemp("tracked")
    mp = pytest.MonkeyPatch()
    point_trackio_at(root / "trackio", mp)
    out = root / "run"
    try:
        _reset_accelerate()
        cfg = trainmod.parse_config(args(kit, out, "--max_steps", "4", "--report_to", "tensorboard,trackio"))
        assert cfg.report_to == ["tensorboard", "trackio"]
        trainmod.train(cfg)
        _reset_accelerate()
        from trackio.sqlite_storage import SQLiteStorage

        runs = SQLiteStorage.get_runs(out.name)  # project: the output folder's name
        assert len(runs) == 1, runs
        trackio_logs = SQLiteStorage.get_logs(out.name, runs[0])
    finally:
        mp.undo()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows, trackio_logs


@pytest.mark.slow
def test_tensorboard_holds_every_metrics_jsonl_value_under_its_hf_tag(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows, _ = tracked_run
    # metrics.jsonl keeps today's names
    assert any("loss" in r and "rewards/chosen" in r for r in rows)
    assert any("eval_loss" in r and "eval_rewards/chosen" in r for r in rows)
    assert not any(k.startswith(("train/", "eval/")) for r in rows for k in r)

    event_dirs = {p.parent for p in (out / "logs").rglob("events.out.tfevents.*")}
    run_dir = out / "logs" / out.name  # the scalars; add_hparams writes its own subfolder
    assert run_dir in event_dirs
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags and all(t.startswith(("train/", "eval/")) for t in tags), sorted(tags)
    assert {
        "train/loss",
        "train/learning_rate",
        "train/rewards/chosen",
        "eval/loss",
        "eval/rewards/chosen",
    } <= tags

    expected = by_tag(rows)
    assert tags == set(expected), sorted(tags ^ set(expected))
    for tag, values in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == values.keys(), tag
        assert all(close(got[s], v) for s, v in values.items()), (tag, got, values)
    # step by step: train/loss is loss, eval/loss is eval_loss (eval at 0, 2 and 4)
    assert sorted(expected["train/loss"]) == [1, 2, 3, 4]
    assert sorted(expected["eval/loss"]) == [0, 2, 4]
    loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert all(close(e.value, loss[e.step]) for e in acc.Scalars("train/loss"))
    eval_loss = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert all(close(e.value, eval_loss[e.step]) for e in acc.Scalars("eval/loss"))


@pytest.mark.slow
def test_trackio_holds_every_metrics_jsonl_value_under_its_hf_tag(tracked_run):
    _, rows, logs = tracked_run
    got: dict[str, dict[int, float]] = {}
    for entry in logs:
        for k, v in entry.items():
            if k not in ("step", "timestamp") and numeric(v):
                got.setdefault(k, {})[entry["step"]] = float(v)
    assert all(k.startswith(("train/", "eval/")) for k in got), sorted(got)
    expected = by_tag(rows)
    assert got.keys() == expected.keys(), sorted(got.keys() ^ expected.keys())
    for tag, values in expected.items():
        assert got[tag].keys() == values.keys(), tag
        assert all(close(got[tag][s], v) for s, v in values.items()), (tag, got[tag], values)
    assert {s: v for s, v in got["train/loss"].items()} == pytest.approx(
        {r["step"]: r["loss"] for r in rows if "loss" in r}, rel=1e-6
    )
    assert got["eval/loss"] == pytest.approx(
        {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}, rel=1e-6
    )


# ----------------------------------------------------------------------------------------------
# report_to as transformers reads it
# ----------------------------------------------------------------------------------------------


class Cfg:
    def __init__(self, out, report_to, run_name=None):
        self.output_dir, self.report_to, self.run_name = str(out), report_to, run_name


def only_installed(monkeypatch, *names):
    """accelerate's availability checks say: these trackers are installed, no other."""
    import accelerate.utils

    for name in tracking.tracker_names():
        monkeypatch.setattr(
            accelerate.utils, f"is_{name}_available", lambda n=name: n in names, raising=False
        )


@pytest.mark.parametrize("report_to", [[], ["none"], "none", None])
def test_none_logs_to_metrics_jsonl_alone(report_to, tmp_path):
    assert resolve_report_to(report_to) == []
    trackers = make_trackers(Cfg(tmp_path, report_to))
    assert len(trackers) == 1 and isinstance(trackers[0], JsonlTracker)
    assert trackers[0].path == tmp_path / "metrics.jsonl"


def test_all_is_every_installed_accelerate_tracker(monkeypatch, tmp_path):
    from accelerate.utils import LoggerType

    known = set(tracking.tracker_names())
    assert {t.value for t in LoggerType if t != LoggerType.ALL} <= known
    assert {
        "tensorboard",
        "wandb",
        "trackio",
        "mlflow",
        "comet_ml",
        "aim",
        "clearml",
        "dvclive",
        "swanlab",
    } <= known
    only_installed(monkeypatch, "tensorboard", "mlflow")
    assert resolve_report_to(["all"]) == ["mlflow", "tensorboard"]
    assert resolve_report_to("all") == ["mlflow", "tensorboard"]
    only_installed(monkeypatch)
    assert resolve_report_to(["all"]) == []


def test_names_are_kept_in_order_once_and_built_with_hf_tags(tmp_path):
    pytest.importorskip("tensorboard")
    from accelerate.tracking import TensorBoardTracker

    assert resolve_report_to(["tensorboard", " tensorboard "]) == ["tensorboard"]
    jsonl, tb = make_trackers(Cfg(tmp_path / "out", ["tensorboard"], run_name="r1"))
    assert isinstance(jsonl, JsonlTracker) and isinstance(tb, TensorBoardTracker)
    assert tb.name == "tensorboard" and type(tb).__name__ == "TensorBoardTracker"
    assert tb.run_name == "r1" and Path(tb.logging_dir_param) == tmp_path / "out" / "logs"
    assert make_trackers(Cfg(tmp_path / "out2", ["tensorboard"]))[1].run_name == "out2"


def test_an_unknown_name_is_one_line_naming_the_valid_ones():
    with pytest.raises(ValueError) as e:
        resolve_report_to(["tensorboard", "tensorbord"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("report_to: unknown tracker 'tensorbord'; allowed values: ['all', 'none', ")
    for name in ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml"):
        assert repr(name) in msg


@pytest.mark.parametrize("names", [["all", "wandb"], ["none", "tensorboard"]])
def test_all_and_none_stand_alone(names):
    with pytest.raises(ValueError, match=r"^report_to: 'all' and 'none' stand alone, got \["):
        resolve_report_to(names)


def test_a_known_tracker_not_installed_is_one_line_with_its_pip_install(monkeypatch, tmp_path):
    only_installed(monkeypatch, "tensorboard")
    with pytest.raises(ValueError) as e:
        make_trackers(Cfg(tmp_path, ["tensorboard", "mlflow"]))
    assert str(e.value) == "report_to: 'mlflow' is not installed in this environment (pip install mlflow)"
    assert resolve_report_to(["mlflow"], require_installed=False) == ["mlflow"]


def test_make_accelerator_logs_to_the_trackers_of_report_to(monkeypatch, tmp_path):
    """The Accelerator gets metrics.jsonl first, then the named trackers; an error stops it first."""
    pytest.importorskip("tensorboard")
    from ncakit.scale import launch

    argv = ["--output_dir", str(tmp_path / "o"), "--report_to", "tensorboard"]
    cfg = trainmod.parse_config(argv, validate=False)
    _reset_accelerate()
    acc = launch.make_accelerator(cfg)
    assert [t.name for t in acc.log_with] == ["jsonl", "tensorboard"]
    assert Path(acc.logging_dir) == tmp_path / "o" / "logs"
    only_installed(monkeypatch)
    cfg.report_to = ["tensorboard"]
    with pytest.raises(ValueError, match=r"^report_to: 'tensorboard' is not installed"):
        launch.make_accelerator(cfg)


# ----------------------------------------------------------------------------------------------
# The tag rule
# ----------------------------------------------------------------------------------------------

LOGGED = {
    "loss": 0.5,
    "rewards/chosen": 0.1,
    "learning_rate": 1e-3,
    "grad_norm": None,
    "epoch": 0.25,
    "eval_loss": 0.7,
    "eval_rewards/chosen": 0.2,
    "eval_rewards/rank_3": 0.0,
    "test_loss": 0.9,
    "evaluation": 1.0,  # not "eval_": a train metric
}


def test_the_tag_rule_is_the_hf_trainers():
    assert hf_tags(LOGGED) == {
        "train/loss": 0.5,
        "train/rewards/chosen": 0.1,
        "train/learning_rate": 1e-3,
        "train/grad_norm": None,
        "train/epoch": 0.25,
        "eval/loss": 0.7,
        "eval/rewards/chosen": 0.2,
        "eval/rewards/rank_3": 0.0,
        "test/loss": 0.9,
        "train/evaluation": 1.0,
    }
    from transformers.integrations import rewrite_logs

    assert hf_tags(LOGGED) == rewrite_logs(LOGGED)


class Recorder(GeneralTracker):
    name = "recorder"
    requires_logging_directory = False
    main_process_only = False

    def __init__(self, run_name="r"):
        super().__init__()
        self.logged = []

    @property
    def tracker(self):
        return self

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values, kwargs))


def test_every_tracker_but_metrics_jsonl_gets_the_tags(tmp_path):
    cls = with_hf_tags(Recorder)
    assert with_hf_tags(Recorder) is cls and issubclass(cls, Recorder)
    assert cls.name == "recorder" and cls.__name__ == "Recorder"
    rec = cls()
    rec.log({"loss": 1.0, "eval_loss": 2.0}, step=3, extra=1)
    assert rec.logged == [(3, {"train/loss": 1.0, "eval/loss": 2.0}, {"extra": 1})]

    jsonl = JsonlTracker(tmp_path / "metrics.jsonl")
    jsonl.log({"loss": 1.0, "eval_loss": 2.0}, step=3)
    jsonl.finish()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 1.0, "eval_loss": 2.0}
