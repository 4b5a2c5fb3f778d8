"""The classroom entry point (toy/demo.py) and the toy figures (ncakit.toy.figures, ncakit.toy.classroom).

The CLI runs end to end on a tiny configuration into a temporary folder; argument errors exit
with status 2 and a message that names the flag; every figure function draws from a short run.
"""

from __future__ import annotations

import importlib.util
import itertools
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


def _lab(hex_colour: str) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour: Euclidean distances there approximate perceived differences."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    f = np.cbrt(xyz / np.array([0.9505, 1.0, 1.089]))
    f = np.where(
        xyz / np.array([0.9505, 1.0, 1.089]) > 0.008856,
        f,
        7.787 * xyz / np.array([0.9505, 1.0, 1.089]) + 16 / 116,
    )
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _deutan(hex_colour: str) -> str:
    """The colour as a deuteranope sees it (Viénot, Brettel & Mollon 1999, in linear RGB)."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.29275, 0.70725, 0.0], [0.29275, 0.70725, 0.0], [-0.02234, 0.02234, 1.0]])
    out = np.clip(m @ lin, 0, 1)
    srgb = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return "#" + "".join(f"{int(round(v * 255)):02X}" for v in srgb)


def test_loss_colours_are_fixed_distinct_and_stable():
    # Okabe & Ito's colour-blind-safe palette for the four losses every figure compares (their entries
    # in ncakit.losses)
    fixed = {"dpo": "#D55E00", "infonca": "#CC79A7", "nca": "#0072B2", "nca_pair": "#56B4E9"}
    for name, colour in fixed.items():
        assert registry.loss_color(name) == colour == registry.loss_spec(name).color
    # DPO vs InfoNCA vs NCA share panels: clearly apart (CIE76 ΔE > 25; ~2.3 is a just-noticeable
    # difference), for normal vision and for a deuteranope (the commonest deficiency). Vermillion and
    # orange, the old DPO/InfoNCA pair, are only ~17 apart for a deuteranope.
    for a, b in itertools.combinations(("dpo", "infonca", "nca"), 2):
        ca, cb = registry.loss_color(a), registry.loss_color(b)
        assert np.linalg.norm(_lab(ca) - _lab(cb)) > 25, (a, b)
        assert np.linalg.norm(_lab(_deutan(ca)) - _lab(_deutan(cb))) > 25, (a, b)
    assert np.linalg.norm(_lab(_deutan("#D55E00")) - _lab(_deutan("#E69F00"))) < 25  # why InfoNCA moved
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


# ----------------------------------------------------------------------------------------------
# Claims: each preset's own, checked only where they apply (issue 17)
# ----------------------------------------------------------------------------------------------


def _failed(stdout: str) -> list[str]:
    """The printed claim lines that hold in fewer seeds than were run ("  3/8  text")."""
    out = []
    for line in stdout.splitlines():
        head = line.strip().split("  ")[0]
        if "/" in head and head.replace("/", "").isdigit():
            k, n = map(int, head.split("/"))
            if k < n:
                out.append(line)
    return out


def test_classic_claims_skip_families_they_do_not_describe():
    from ncakit.toy.report import check_claims, format_claims

    runs = run_preset("classic", (0,), steps=3, families=["linear", "lowrank", "mlp"])
    c = check_claims(runs, "classic")
    # Checked: the three settings the classic claims were calibrated on (lowrank is the classic's own).
    checked = {text.split(":")[0] for text in c["claims"]}
    assert checked == {"tabular-control", "tabular-overlap", "lowrank"}
    # Skipped, with the reason: the classic claims describe the low-rank policy, not these families.
    skipped = {s["setting"]: s["reason"] for s in c["skipped"]}
    assert set(skipped) == {"linear", "mlp"}
    assert all("lowrank" in r for r in skipped.values())
    text = format_claims(c)
    assert "linear: every claim" in text and "not checked" in text
    assert c["steps"] == 3 and c["calibrated_steps"] == 2000 and "calibrated at 2000 steps" in text


def test_claims_name_only_the_losses_that_were_trained():
    from ncakit.toy.report import check_claims, format_claims

    runs = run_preset("classic", (0,), steps=3, losses=["ipo", "hinge"])
    c = check_claims(runs, "classic")
    # None of the classic claims speaks about IPO or hinge: nothing is counted, every claim is skipped.
    assert c["claims"] == {} and c["all"]["count"] == 0
    assert c["skipped"] and all("trained: ipo, hinge" in s["reason"] for s in c["skipped"])
    text = format_claims(c)
    assert "all of the above" not in text and "no claim of the classic preset applies" in text
    # DPO alone: its claims are checked, NCA's are skipped (not counted as failures).
    c = check_claims(run_preset("classic", (0,), steps=3, losses=["dpo"]), "classic")
    assert all("nca" not in t.split(":")[1] for t in c["claims"])
    assert any("nca/nca_pair chosen > -1" in s["claim"] for s in c["skipped"])


def test_each_preset_has_its_own_claims():
    from ncakit.toy.report import CLAIM_SETS, check_claims

    assert set(CLAIM_SETS) == set(PRESETS) and CLAIM_SETS["zoo"] is None
    k4 = check_claims(run_preset("k4-rewards", (0,), steps=3), "k4-rewards")
    # k4-rewards (β = 1, α = 1) is not the classic condition: its claims are about NCA's absolute targets,
    # none of the classic's "DPO/InfoNCA chosen < -2" (which does not happen at β = 1).
    assert k4["claims"] and not any("< -2" in t for t in k4["claims"])
    assert any("optimum" in t for t in k4["claims"])
    # The classic claims are not checked on the k4 settings (their β/α differ): all skipped, none failed.
    c = check_claims(run_preset("k4-rewards", (0,), steps=3), "classic")
    assert c["claims"] == {} and len(c["skipped"]) == 3
    sweep = check_claims(run_preset("alpha-sweep", (0,), steps=3), "alpha-sweep")
    assert "alpha=3: infonca chosen < -2" not in sweep["claims"]  # at α = 3 InfoNCA's fall is gone
    assert "alpha=0.1: infonca chosen < -2" in sweep["claims"]


def test_demo_k4_rewards_prints_no_claim_that_does_not_apply(tmp_path):
    # The documented command at its real length (2000 steps) on 2 seeds: every printed claim holds.
    out = tmp_path / "k4"
    res = _run("--preset", "k4-rewards", "--seeds", "2", "--out", str(out), "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "what the k4-rewards preset must show" in res.stdout
    assert not _failed(res.stdout), res.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["claims"]["preset"] == "k4-rewards" and s["claims"]["all"]["count"] == 2
    assert "skipped" in s["claims"]


def test_demo_policy_families_prints_no_claim_that_does_not_apply(tmp_path):
    # `--policy linear lowrank mlp` (toy/README.md): the classic claims are checked on the settings
    # they describe (lowrank and the two tabular ones), the linear and mlp columns are listed as skipped.
    out = tmp_path / "pol"
    res = _run(
        "--policy", "linear", "lowrank", "mlp", "--seeds", "2", "--out", str(out), "--no-progress", timeout=600
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not _failed(res.stdout), res.stdout
    assert "linear: every claim of this setting" in res.stdout and "mlp: every claim" in res.stdout
    s = json.loads((out / "summary.json").read_text())
    assert {x["setting"] for x in s["claims"]["skipped"]} == {"linear", "mlp"}
    assert s["claims"]["all"]["count"] == 2 and len(s["claims"]["claims"]) == 9


def test_demo_projector_writes_a_16_9_hero(tmp_path):
    from PIL import Image

    out = tmp_path / "hero"
    res = _run("--seeds", "1", "--steps", "20", "--projector", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    with Image.open(out / "hero.png") as im:
        w, h = im.size
    assert abs(w / h - 16 / 9) < 0.01 and w >= 1600  # a lecture-hall slide, full HD
    assert "hero.png" in json.loads((out / "summary.json").read_text())["files"]


def test_help_does_not_cut_words():
    text = _load_demo().build_parser().format_help()
    epilog = text.split("Presets:")[1]
    # every preset's description is there in full, wrapped at spaces only
    for pr in PRESETS.values():
        assert " ".join(pr.description.split()) in " ".join(epilog.split())
    assert "..." not in epilog


# ----------------------------------------------------------------------------------------------
# Figure defects of issue 17
# ----------------------------------------------------------------------------------------------


def test_symlog_keeps_a_small_value_visible_next_to_a_large_fall():
    import matplotlib.pyplot as plt

    from ncakit.toy.plotkit import symlog_axis

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([0, 1], [-120, 1.2])
    assert symlog_axis(ax, -120.0, 1.2) and ax.get_yscale() == "symlog"
    y = lambda v: ax.transData.transform((0, v))[1]  # noqa: E731
    height = ax.bbox.height
    # On a linear −120..+1.2 axis NCA's +1.2 sits 1 % of the panel above 0: invisible. Here >= 8 %.
    assert (y(1.2) - y(0.0)) / height > 0.08
    assert not symlog_axis(ax, -3.0, 1.2)  # a narrow range stays linear
    plt.close(fig)


def test_dynamics_labels_the_reference_line_and_writes_final_values(tiny_runs):
    fig = plot_dynamics(tiny_runs)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "μ (log-ratio 0)" in labels and "DPO" in labels
    ax = fig.axes[0]
    finals = [t.get_text() for t in ax.texts]
    h = tiny_runs["tabular-control"]
    assert len(finals) == len(h.losses)  # one final value per loss at the panel's right edge
    assert f"{h.final('chosen')[h.loss_index('nca')].mean():+.1f}" in finals
    assert "\\log \\pi_\\theta" in ax.get_ylabel()  # mathtext, not raw "log π/μ"


def test_ranks_legend_lists_only_what_is_drawn(tiny_runs):
    def dashed(fig):
        return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]

    def listed(fig):
        return any("NCA optimum" in t.get_text() for t in fig.legends[0].get_texts())

    # classic (β = 0.1): NCA's optimum is out of reach, no dashed line, so not in the legend; a footnote says so
    fig = plot_ranks(tiny_runs)
    assert not dashed(fig) and not listed(fig)
    assert any("out of reach" in t.get_text() for t in fig.texts)
    k4 = run_preset("k4-rewards", (0,), steps=5)  # β = 1: reachable, drawn and listed
    fig = plot_ranks(k4)
    assert dashed(fig) and listed(fig)


def test_mass_legend_swatches_are_the_bars_colours(tiny_runs):
    from ncakit.toy.figures import mass_handles

    handles = mass_handles(["dpo", "nca"])
    assert [label for _, label in handles][0] == "best seen response"
    faces = {matplotlib.colors.to_hex(p.get_facecolor()).upper() for p in handles[0][0]}
    assert faces == {registry.REFERENCE_COLOR.upper(), registry.loss_color("dpo"), registry.loss_color("nca")}
    fig = preset_figures(tiny_runs)["mass"]
    # no empty quarter: the panels fill the figure down to ~1 inch above the bottom edge
    bottom_in = min(ax.get_position().y0 for ax in fig.axes) * fig.get_size_inches()[1]
    assert bottom_in < 1.1
