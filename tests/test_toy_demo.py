"""The classroom entry point (toy/demo.py) and the toy figures (ncakit.toy.figures, ncakit.toy.classroom).

The CLI runs end to end on a tiny configuration into a temporary folder; argument errors exit
with status 2 and a message that names the flag; every figure function draws from a short run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from ncakit import registry  # noqa: E402
from ncakit.toy.classroom import animate_policy  # noqa: E402
from ncakit.toy.figures import (  # noqa: E402
    loss_style,
    plot_dynamics,
    plot_ranks,
    plot_sweep,
    preset_figures,
    save_figure,
)
from ncakit.toy.presets import PRESETS, run_preset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "toy" / "demo.py"
PNG = b"\x89PNG\r\n\x1a\n"


def _load_demo():
    spec = importlib.util.spec_from_file_location("toy_demo", DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, timeout=120):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def tiny_runs():
    return run_preset("classic", (0, 1), steps=30)


# ----------------------------------------------------------------------------------------------
# The CLI end to end
# ----------------------------------------------------------------------------------------------


def test_demo_cli_writes_figures_and_summary(tmp_path):
    out = tmp_path / "demo"
    res = _run("--seeds", "2", "--steps", "40", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    for stem in ("dynamics", "mass", "reward_kl", "ranks"):
        data = (out / f"{stem}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 20_000, stem
    s = json.loads((out / "summary.json").read_text())
    assert {
        "preset",
        "description",
        "seeds",
        "steps",
        "losses",
        "device",
        "settings",
        "claims",
        "files",
        "seconds",
    } <= set(s)
    assert s["preset"] == "classic" and s["seeds"] == [0, 1] and s["steps"] == 40
    assert s["losses"] == ["dpo", "nca_pair", "infonca", "nca"]
    assert list(s["settings"]) == ["tabular-control", "tabular-overlap", "lowrank"]
    cell = s["settings"]["tabular-overlap"]["final"]["nca"]["chosen"]
    assert set(cell) == {"mean", "std", "min", "max"} and np.isfinite(cell["mean"])
    assert s["claims"]["n_seeds"] == 2
    # the printed table: one row per loss, one column per setting, mean ± std
    assert "tabular-overlap" in res.stdout and "±" in res.stdout
    assert "nca_pair" in res.stdout and "summary.json" in res.stdout


def test_demo_cli_k4_with_animation_and_options(tmp_path):
    out = tmp_path / "k4"
    res = _run(
        "--preset", "k4-rewards", "--losses", "nca", "dpo", "--policy", "mlp", "--seeds", "1", "--seed-offset", "3",
        "--steps", "4", "--animate", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["seeds"] == [3] and s["losses"] == ["nca", "dpo"]
    assert list(s["settings"]) == ["tabular-control", "tabular-overlap", "mlp"]
    # --animate without names: the settings that show the effect (not the control)
    assert not (out / "animation_tabular-control.gif").exists()
    for name in ("tabular-overlap", "mlp"):
        gif = (out / f"animation_{name}.gif").read_bytes()
        assert gif[:6] in (b"GIF89a", b"GIF87a")
    assert (out / "ranks.png").exists()


def test_demo_help_lists_presets_and_flags():
    text = _load_demo().build_parser().format_help()
    for word in (*PRESETS, "--losses", "--policy", "--seeds", "--steps", "--out", "--animate", "--device"):
        assert word in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0"], "--seeds: expected a positive integer, got 0"),
        (["--seeds", "two"], "--seeds: expected a positive integer, got 'two'"),
        (["--steps", "0"], "--steps: expected a positive integer, got 0"),
        (["--steps", "-3"], "--steps"),
        (["--preset", "fancy"], "--preset: invalid choice: 'fancy'"),
        (["--losses", "dpo", "fancy"], "--losses: unknown 'fancy'"),
        (["--losses", "nca", "nca"], "--losses: each loss once"),
        (["--policy", "cnn"], "--policy: unknown 'cnn'"),
        (["--seed-offset", "-1"], "--seed-offset: expected an integer >= 0"),
        (["--device", "banana"], "--device"),
    ],
)
def test_demo_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    demo = _load_demo()
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_cuda_unavailable_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    demo = _load_demo()
    with pytest.raises(SystemExit):
        demo.parse_args(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_toy_is_not_a_package():
    assert not (ROOT / "toy" / "__init__.py").exists()


# ----------------------------------------------------------------------------------------------
# Colours and figures
# ----------------------------------------------------------------------------------------------


def test_loss_colours_are_fixed_distinct_and_stable():
    fixed = {"dpo": "#D55E00", "infonca": "#E69F00", "nca": "#0072B2", "nca_pair": "#56B4E9"}
    for name, colour in fixed.items():
        assert registry.loss_color(name) == colour == registry.loss_spec(name).color
    colours = [spec.color for spec in registry.LOSS_SPECS.values()]
    assert len(set(colours)) == len(colours), "every registered loss has its own colour"
    assert registry.loss_color("sigmoid") == registry.loss_color("dpo")  # TRL's alias
    # any other name: a stable colour from a colour-blind-safe palette, chosen by md5 (not hash(),
    # which changes between processes), so every process and figure agrees
    c = registry.loss_color("my_new_loss")
    assert c.startswith("#") and len(c) == 7
    code = "from ncakit.registry import loss_color; print(loss_color('my_new_loss'))"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout.strip() == c
    assert loss_style("nca_pair")["linestyle"] == "--" and loss_style("nca")["linestyle"] == "-"
    assert registry.loss_label("nca_pair") == "NCA (pairwise)" and registry.loss_label("xyz") == "xyz"


def test_every_figure_draws(tiny_runs, tmp_path):
    figs = preset_figures(tiny_runs)
    assert set(figs) == {"dynamics", "mass", "reward_kl", "ranks"}
    n_settings = len(tiny_runs)
    assert len(figs["dynamics"].axes) == 3 * n_settings
    assert len(figs["ranks"].axes) == 2 * n_settings  # infonca and nca rows
    for stem, fig in figs.items():
        path = save_figure(fig, tmp_path / f"{stem}.png")
        assert path.read_bytes().startswith(PNG)


def test_sweep_figure_and_errors(tmp_path):
    runs = run_preset("beta-sweep", (0, 1), steps=5, losses=["dpo", "nca"])
    figs = preset_figures(runs, "beta")
    assert "sweep_beta" in figs and "ranks" in figs
    save_figure(figs["sweep_beta"], tmp_path / "sweep.png")
    with pytest.raises(
        ValueError,
        match=r"param: unknown 'gamma'; expected one of \['alpha', 'beta', 'k', 'tuples_per_prompt'\]",
    ):
        plot_sweep(runs, "gamma")
    with pytest.raises(ValueError, match="runs: expected a non-empty"):
        plot_dynamics({})
    pairwise = run_preset("classic", (0,), steps=2, losses=["dpo"])
    with pytest.raises(ValueError, match="plot_ranks needs at least one K-way loss"):
        plot_ranks(pairwise)
    assert "ranks" not in preset_figures(pairwise)


def test_animation_writes_a_gif(tiny_runs, tmp_path):
    h = tiny_runs["lowrank"]
    path = animate_policy(h, tmp_path / "a.gif", losses=("dpo", "nca"), max_frames=5)
    assert path.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with pytest.raises(ValueError, match="none of the requested losses"):
        animate_policy(h, tmp_path / "b.gif", losses=("ipo",))
    with pytest.raises(ValueError, match="seed_index"):
        animate_policy(h, tmp_path / "c.gif", seed_index=5)
