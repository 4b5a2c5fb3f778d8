"""The zoo preset of the toy bandit: every registered loss on the classic's settings (ncakit.toy.presets,
ncakit.toy.report.format_zoo_table, ncakit.toy.figures.plot_zoo, toy/demo.py --preset zoo).

What is asserted follows from the losses' math and was checked first on 20 seeds x 1000 steps (the
preset's length) and on the 3 seeds x 300 steps used here:
- NCA-like losses (absolute per-response targets: NCA, pairwise/biased NCA, NCA on LSC rewards, SPPO)
  keep the chosen log-ratio above 0 and above DPO's wherever comparisons overlap (MATH.md, NCA);
- DPOP's penalty λ·max(0, −s_w) is zero while the chosen log-ratio stays ≥ 0, so in the control (where
  it rises from step 1) DPOP's run IS DPO's; where DPO lowers it, DPOP keeps it higher;
- ASFT's SFT term maximises log π_θ of the chosen responses, whose optimum puts the data's chosen
  frequencies on them: the mean chosen log-ratio is then a KL divergence to μ's restriction, ≥ 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from ncakit.registry import ALIASES, LOSS_SPECS, get_loss, loss_color, loss_label  # noqa: E402
from ncakit.toy.bandit import BanditConfig, make_bandit  # noqa: E402
from ncakit.toy.figures import loss_style, plot_zoo, preset_figures, save_figure  # noqa: E402
from ncakit.toy.presets import ZOO_EXCLUDED, ZOO_STEPS, get_preset, run_preset, zoo_losses  # noqa: E402
from ncakit.toy.report import ZOO_COLUMNS, format_zoo_table  # noqa: E402
from ncakit.toy.trainer import END_METRICS, BanditTrainConfig, Setting, train_bandits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
STEPS = 300
NCA_LIKE = ("nca", "nca_pair", "biased_nca", "nca_lsc", "sppo")


@pytest.fixture(scope="module")
def zoo():
    return run_preset("zoo", SEEDS, steps=STEPS)


def _chosen(h, loss, metric="chosen"):
    return h.final(metric)[h.loss_index(loss)]


# ----------------------------------------------------------------------------------------------
# What the preset runs and writes
# ----------------------------------------------------------------------------------------------


def test_zoo_preset_runs_every_canonical_registered_loss(zoo):
    preset = get_preset("zoo")
    expected = [n for n in LOSS_SPECS if n not in ZOO_EXCLUDED]
    assert list(preset.losses) == expected == list(zoo_losses())
    assert set(ZOO_EXCLUDED) == {"f_dpo"}  # f_dpo at its default divergence is DPO itself
    assert not set(preset.losses) & set(ALIASES), "canonical names only"
    assert {"sppo", "f_dpo_forward_kl", "f_dpo_js", "f_dpo_alpha", "dpop", "pro", "asft", "cpl"} <= set(
        preset.losses
    )
    assert [s.name for s in preset.settings] == [s.name for s in get_preset("classic").settings]
    assert preset.report == "zoo" and preset.steps == ZOO_STEPS
    assert list(zoo) == ["tabular-control", "tabular-overlap", "lowrank"]
    for h in zoo.values():
        assert h.losses == preset.losses
        assert h.loss_kwargs == {"asft": {"beta": 1.0}}
        for metric, _, _ in ZOO_COLUMNS:
            v = h.final(metric)
            assert v.shape == (len(preset.losses), len(SEEDS)) and np.isfinite(v).all(), metric


def test_zoo_table_has_every_column_and_row(zoo):
    text = format_zoo_table(zoo)
    header = "| loss | data | " + " | ".join(c[1] for c in ZOO_COLUMNS) + " |"
    assert text.count(header) == len(zoo)
    assert "Def. 2.3 / Eq. 1" in text and "every within-tuple pair" in text  # which ranking accuracy
    assert text.count("| μ (reference) |") == len(zoo)
    for loss in get_preset("zoo").losses:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{loss}`")]
        assert len(rows) == len(zoo), loss
        assert all(line.count("±") == len(ZOO_COLUMNS) for line in rows)
    assert "`asft` †" in text and "`asft`: beta = 1.0" in text
    with pytest.raises(ValueError, match="runs: expected a non-empty"):
        format_zoo_table({})


def test_zoo_core_rows_are_the_classic_runs():
    """Batched (loss, seed, setting) slices never interact, so the zoo's DPO/NCA rows are exactly what
    the classic preset gives for the same seeds and steps."""
    zoo = run_preset("zoo", (0, 1), steps=15)
    classic = run_preset("classic", (0, 1), steps=15)
    for name, h in classic.items():
        for loss in h.losses:
            for m in ("chosen", "best_logratio", "kl", "ranking_accuracy"):
                np.testing.assert_allclose(
                    _chosen(zoo[name], loss, m), _chosen(h, loss, m), rtol=1e-5, atol=1e-6
                )


# ----------------------------------------------------------------------------------------------
# Signs that follow from the math (checked seed by seed)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["tabular-overlap", "lowrank"])
def test_nca_like_losses_keep_the_chosen_logratio_above_dpo(zoo, setting):
    h = zoo[setting]
    dpo = _chosen(h, "dpo")
    for loss in NCA_LIKE:
        assert (_chosen(h, loss) > dpo).all(), (loss, _chosen(h, loss), dpo)


def test_nca_like_losses_and_asft_keep_the_chosen_logratio_above_zero(zoo):
    for name, h in zoo.items():
        for loss in (*NCA_LIKE, "asft"):
            assert (_chosen(h, loss) > 0).all(), (name, loss, _chosen(h, loss))


@pytest.mark.parametrize("setting", ["tabular-overlap", "lowrank"])
def test_dpop_keeps_the_chosen_logratio_above_dpo(zoo, setting):
    h = zoo[setting]
    assert (_chosen(h, "dpop") > _chosen(h, "dpo")).all()


def test_dpop_is_dpo_while_the_chosen_likelihood_never_falls(zoo):
    """In the control every chosen log-ratio rises from step 1 under DPO, so the DPOP penalty
    λ·max(0, −s_w) stays 0 and the two runs coincide at every logged step."""
    h = zoo["tabular-control"]
    for m in ("chosen", "kl", "expected_reward", "mass_unseen"):
        np.testing.assert_allclose(
            h.metrics[m][:, h.loss_index("dpop")], h.metrics[m][:, h.loss_index("dpo")], atol=1e-5
        )
    assert (h.metrics["chosen"][1:, h.loss_index("dpo")] > 0).all()


# ----------------------------------------------------------------------------------------------
# Ranking accuracy (A. Chen et al. 2024) against a naive count
# ----------------------------------------------------------------------------------------------


def _naive_ranking(logp: np.ndarray, tuples: np.ndarray, rewards: np.ndarray, pairs: np.ndarray):
    """All-pairs (Eq. 1 on every within-tuple pair), pair-view (Eq. 1) and exact (Eq. 11) accuracies of
    one policy's log-probs ``logp`` [X, N] on one seed's data (tuples sorted best-first)."""
    X, M, K = tuples.shape
    ok_all = ok_pair = ok_exact = n_all = 0
    for x in range(X):
        for m in range(M):
            lp, r = logp[x, tuples[x, m]], rewards[x, m]
            good = [lp[i] >= lp[j] for i, j in combinations(range(K), 2) if r[i] > r[j]]
            ok_all, n_all = ok_all + sum(good), n_all + len(good)
            ok_exact += all(good)
            ok_pair += logp[x, pairs[x, m, 0]] >= logp[x, pairs[x, m, 1]]
    return ok_all / n_all, ok_pair / (X * M), ok_exact / (X * M)


def test_ranking_accuracy_of_mu_and_of_a_trained_policy_match_a_naive_count():
    # One prompt, so the tracked π_θ(·|x) IS the whole policy and the count can be redone by hand.
    cfg = BanditConfig(n_prompts=1, n_responses=12, k=4, tuples_per_prompt=6, pair_view="best_random")
    seeds = (0, 1)
    h = train_bandits(
        Setting("s", cfg), seeds, BanditTrainConfig(losses=("dpo", "nca"), steps=25, log_every=5)
    )["s"]
    b = make_bandit(cfg, seeds)
    names = ("ranking_accuracy", "ranking_accuracy_pairs", "ranking_accuracy_exact")
    for si in range(len(seeds)):
        data = (b.tuples[si].numpy(), b.tuple_rewards[si].numpy(), b.pairs[si].numpy())
        mu = _naive_ranking(b.ref_logps[si].numpy(), *data)
        for name, want in zip(names, mu):
            assert h.reference[f"ref_{name}"][si] == pytest.approx(want, abs=1e-12), name
        for li in range(len(h.losses)):
            logp = np.log(h.metrics["track_probs"][-1, li, si])[None]  # [1, N]
            for name, want in zip(names, _naive_ranking(logp, *data)):
                assert h.end_metrics[name][li, si] == pytest.approx(want, abs=1e-12), name
    # nothing dropped silently: every within-tuple pair is scored (continuous rewards never tie)
    assert (h.reference["ranking_accuracy_scored"] == 6 * 6).all()
    assert (h.reference["ranking_accuracy_skipped_ties"] == 0).all()
    assert set(END_METRICS) == set(h.end_metrics)
    assert h.final("ranking_accuracy").shape == (2, 2)


# ----------------------------------------------------------------------------------------------
# Per-loss keywords
# ----------------------------------------------------------------------------------------------


def test_loss_kwargs_reach_the_loss_call():
    """ASFT's step-0 loss in the run equals the loss called with the override β = 1 on the same data,
    not with the setting's β = 0.1."""
    setting = get_preset("zoo").settings[1]
    seeds = (0, 1)
    cfg = BanditTrainConfig(losses=("asft",), steps=1, loss_kwargs={"asft": {"beta": 1.0}})
    h = train_bandits(setting, seeds, cfg)[setting.name]
    b = make_bandit(setting.bandit, seeds)
    S, X, M, _ = b.pairs.shape
    ref = b.ref_logps.gather(2, b.pairs.reshape(S, X, M * 2)).reshape(S, X * M, 2)
    asft = get_loss("asft")
    for si in range(S):
        with_override = asft(ref[si], ref[si], beta=1.0).loss.mean().item()
        with_setting = asft(ref[si], ref[si], beta=setting.beta).loss.mean().item()
        assert h.metrics["loss"][0, 0, si] == pytest.approx(with_override, rel=1e-5)
        assert abs(with_override - with_setting) > 1e-3  # the check can tell the two apart


def test_the_settings_alpha_reaches_the_lsc_losses():
    """The LSC losses (and SPPO, PRO) take α as a keyword: the setting's α must reach them, so two α give
    two different runs."""
    base = Setting("s", BanditConfig(n_prompts=3, n_responses=12, tuples_per_prompt=3))
    cfg = BanditTrainConfig(losses=("nca_lsc", "infonca_lsc", "sppo", "pro"), steps=20, log_every=10)
    runs = [train_bandits(dataclasses.replace(base, alpha=a), (0,), cfg)["s"] for a in (0.3, 3.0)]
    for li, loss in enumerate(cfg.losses):
        assert not np.allclose(runs[0].final("chosen")[li], runs[1].final("chosen")[li]), loss


@pytest.mark.parametrize(
    "loss_kwargs, losses, exc, match",
    [
        ({"fancy": {"beta": 1.0}}, ("dpo",), ValueError, r"unknown loss 'fancy'"),
        ({"asft": {"beta": 1.0}}, ("dpo",), ValueError, r"loss_kwargs: 'asft' is not one of the trained"),
        (
            {"dpo": {"gamma": 1.0}},
            ("dpo",),
            ValueError,
            r"loss_kwargs\['dpo'\]: 'gamma' is not a keyword of loss 'dpo'",
        ),
        ({"dpo": {"mask": None}}, ("dpo",), ValueError, r"'mask' is passed by the trainer"),
        ({"dpo": 1.0}, ("dpo",), TypeError, r"loss_kwargs\['dpo'\]: expected a mapping"),
        (
            {"dpo": {"beta": [1.0]}},
            ("dpo",),
            TypeError,
            r"loss_kwargs\['dpo'\]: beta: expected a float > 0, got list",
        ),
        ([("dpo", 1)], ("dpo",), TypeError, r"loss_kwargs: expected a mapping"),
    ],
)
def test_loss_kwargs_errors(loss_kwargs, losses, exc, match):
    with pytest.raises(exc, match=match):
        BanditTrainConfig(losses=losses, loss_kwargs=loss_kwargs)


def test_loss_kwargs_are_hashable_and_readable():
    cfg = BanditTrainConfig(losses=("dpo", "asft"), loss_kwargs={"asft": {"beta": 1.0, "align_weight": 0.2}})
    hash(cfg)
    assert cfg.kwargs_for("asft") == {"align_weight": 0.2, "beta": 1.0} and cfg.kwargs_for("dpo") == {}
    # a preset's overrides apply only to the losses a run trains (--losses may leave them out)
    runs = run_preset("zoo", (0,), steps=2, losses=["dpo", "nca"])
    assert next(iter(runs.values())).loss_kwargs == {}


# ----------------------------------------------------------------------------------------------
# The figure and the CLI
# ----------------------------------------------------------------------------------------------


def test_zoo_figure_rows_sorted_and_saved(zoo, tmp_path):
    fig = plot_zoo(zoo)
    assert len(fig.axes) == 2 * len(zoo)  # chosen log-ratio + reward gain per setting
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    losses = get_preset("zoo").losses
    assert sorted(labels) == sorted(loss_label(n) for n in losses)
    # rows: highest chosen log-ratio in the last setting on top (y grows upwards)
    h = zoo["lowrank"]
    by_label = {loss_label(n): _chosen(h, n).mean() for n in losses}
    assert [by_label[lab] for lab in labels] == sorted(by_label.values())
    path = save_figure(fig, tmp_path / "zoo.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert set(preset_figures(zoo, report="zoo")) == {"zoo"}
    with pytest.raises(ValueError, match="order_by: expected a setting name"):
        plot_zoo(zoo, order_by="nope")
    with pytest.raises(ValueError, match=r"report: unknown 'big'; expected one of \['standard', 'zoo'\]"):
        preset_figures(zoo, report="big")


def test_zoo_losses_have_distinct_colours_and_labels():
    losses = get_preset("zoo").losses
    assert len({loss_color(n) for n in losses}) == len(losses)
    assert len({loss_label(n) for n in losses}) == len(losses)
    assert loss_style("dpop")["linestyle"] == "--" and loss_style("sppo")["linestyle"] == "-"


def test_demo_cli_zoo_writes_table_figure_and_summary(tmp_path):
    out = tmp_path / "zoo"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "toy" / "demo.py"), "--preset", "zoo", "--seeds", "2", "--steps", "10",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (out / "zoo.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "dynamics.png").exists()  # the zoo writes its one figure, not the classic four
    table = (out / "zoo_table.md").read_text()
    assert table.count("| `dpop` | pair |") == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["preset"] == "zoo" and s["losses"] == list(zoo_losses()) and s["steps"] == 10
    assert s["loss_kwargs"] == {"asft": {"beta": 1.0}}
    cell = s["settings"]["lowrank"]["final"]["cpl"]
    assert {"chosen", "best_logratio", "mass_unseen", "reward_gain", "kl", "ranking_accuracy"} <= set(cell)
    assert 0.0 <= cell["ranking_accuracy"]["mean"] <= 1.0
    assert "zoo_table.md" in res.stdout and "what the toy must show" not in res.stdout
