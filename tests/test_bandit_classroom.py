"""The classroom helpers behind tutorials 1 and 3: ``presets.quick_run``, ``Bandit.chosen_and_rejected``
and the figures/controls ``plot_bandit``, ``plot_policy``, ``plot_live``, ``plot_frontier``,
``plot_sweep`` over K, and ``live_controls``.
"""

from __future__ import annotations

import dataclasses
import itertools

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ncakit.toy.bandit import BanditConfig, make_bandit  # noqa: E402
from ncakit.toy.classroom import live_controls, plot_bandit, plot_frontier, plot_live, plot_policy  # noqa: E402
from ncakit.toy.figures import plot_sweep  # noqa: E402
from ncakit.toy.presets import CLASSIC_ALPHA, CLASSIC_BETA, get_preset, quick_run  # noqa: E402
from ncakit.toy.trainer import BanditTrainConfig, Setting, train_bandits  # noqa: E402
from ncakit.utils import notebook_style


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def small():
    return quick_run(family="lowrank", steps=20, seeds=(0, 1))


# ----------------------------------------------------------------------------------------------
# presets.quick_run and Bandit.chosen_and_rejected
# ----------------------------------------------------------------------------------------------


def test_quick_run_builds_the_requested_setting(small):
    st = small.setting
    assert (st.alpha, st.beta, st.bandit.k, st.policy.family, st.bandit.tuples_per_prompt) == (
        CLASSIC_ALPHA,
        CLASSIC_BETA,
        4,
        "lowrank",
        8,
    )
    assert small.losses == ("dpo", "nca_pair", "infonca", "nca") and small.seeds == (0, 1)
    assert small.steps[0] == 0 and small.steps[-1] == 20
    assert small.metrics["chosen"].shape == (len(small.steps), 4, 2)
    # Policies start at μ: every logged log-ratio is exactly 0 at step 0.
    assert np.all(small.metrics["chosen"][0] == 0.0)


def test_quick_run_control_raises_the_chosen_likelihood_under_every_loss():
    # Tabular, one tuple per prompt (MATH.md: the control): no loss lowers the chosen log-ratio.
    h = quick_run(family="tabular", tuples_per_prompt=1, steps=150, seeds=(0, 1))
    assert (h.final("chosen") > 0).all()


def test_quick_run_rejects_bad_knobs():
    with pytest.raises(ValueError, match="family"):
        quick_run(family="transformer", steps=1)
    with pytest.raises(ValueError, match="k: expected K <= n_responses"):
        quick_run(k=40, steps=1)
    with pytest.raises(ValueError, match="steps"):
        quick_run(steps=0)


def test_chosen_and_rejected_matches_a_loop_and_is_zero_for_one_tuple():
    cfg = BanditConfig(n_prompts=5, n_responses=10, k=3, tuples_per_prompt=6)
    b = make_bandit(cfg, seeds=(0, 1))
    got = b.chosen_and_rejected()
    assert got.shape == (2, 5) and got.dtype == torch.long
    for s, x in itertools.product(range(2), range(5)):
        tuples = b.tuples[s, x].tolist()  # [M, K] best-first
        chosen = {t[0] for t in tuples}
        below = {y for t in tuples for y in t[1:]}
        assert got[s, x].item() == len(chosen & below)
    assert got.sum() > 0  # 6 tuples of 3 out of 10 responses must overlap somewhere
    one = make_bandit(BanditConfig(n_prompts=5, n_responses=10, k=3, tuples_per_prompt=1), seeds=(0,))
    assert one.chosen_and_rejected().sum() == 0  # each response appears once


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def test_plot_bandit_draws_one_cell_per_tuple_entry():
    b = make_bandit(BanditConfig(n_prompts=2, n_responses=12, k=3, tuples_per_prompt=4), seeds=(0,))
    fig = plot_bandit(b, prompt=1)
    grid = fig.axes[1]
    ranks = [t.get_text() for t in grid.texts]
    assert sorted(ranks) == sorted(["1", "2", "3"] * 4)  # M = 4 tuples of K = 3 ranks
    with pytest.raises(ValueError, match="prompt"):
        plot_bandit(b, prompt=2)
    with pytest.raises(ValueError, match="seed_index"):
        plot_bandit(b, seed_index=1)


def test_plot_policy_and_plot_live(small):
    fig = plot_policy(small, ("dpo", "nca"))
    assert len(fig.axes) == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("DPO") and titles[1].startswith("NCA")
    with pytest.raises(ValueError, match="step"):
        plot_policy(small, step=len(small.steps))
    fig = plot_live(small, panels=("chosen", "mass", "reward_kl"))
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="panels: unknown 'margin'"):
        plot_live(small, panels=("margin",))


def test_sweep_over_k_and_the_frontier():
    ov = get_preset("classic").settings[1]
    settings = [
        Setting(f"k{k}", dataclasses.replace(ov.bandit, k=k), ov.policy, beta=ov.beta, alpha=a, lr=ov.lr)
        for k, a in ((2, 0.3), (4, 1.0))
    ]
    runs = train_bandits(settings, (0, 1), BanditTrainConfig(losses=("infonca", "nca"), steps=5, log_every=5))
    fig = plot_sweep(runs, "k")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2", "4"]
    fig = plot_frontier(runs, "alpha")
    ax = fig.axes[0]
    stars = [c for c in ax.collections if c.get_offsets().shape[0] == 1 and c.get_sizes()[0] > 300]
    assert len(stars) == 2  # one π* per setting (α·β differs)
    with pytest.raises(ValueError, match="param"):
        plot_frontier(runs, "gamma")


def test_live_controls_call_draw_with_the_slider_values():
    pytest.importorskip("ipywidgets")
    calls = []
    box = live_controls(lambda **kw: calls.append(kw), alpha=1.0, beta=1.0, family="tabular")
    # interactive_output draws once at construction, with the defaults.
    assert calls == [{"alpha": 1.0, "beta": 1.0, "k": 4, "family": "tabular", "tuples_per_prompt": 8}]
    sliders = box.children[0].children
    assert [w.description for w in sliders][0].startswith("α")
    sliders[0].value = 0.1  # move α
    assert calls[-1]["alpha"] == 0.1 and len(calls) == 2
    assert box._repr_mimebundle_()["text/plain"].startswith("[live controls")
    with pytest.raises(ValueError, match="alpha: expected one of the slider values"):
        live_controls(lambda **kw: None, alpha=0.25)
    with pytest.raises(ValueError, match="tuples_per_prompt"):
        live_controls(lambda **kw: None, tuples_per_prompt=0)


def test_notebook_style_sets_the_tutorials_defaults():
    with matplotlib.rc_context():  # leave the session's rcParams as they were
        notebook_style(font_size=12, figsize=(8, 3))
        rc = plt.rcParams
        assert (rc["font.size"], rc["axes.titlesize"], rc["legend.fontsize"]) == (12, 13, 11)
        assert tuple(rc["figure.figsize"]) == (8, 3) and rc["axes.grid"]
    with pytest.raises(ValueError, match="font_size"):
        notebook_style(font_size=0)


# ----------------------------------------------------------------------------------------------
# The policy views and GIFs (issue 17): log axis, chosen responses marked, frame timing; one live figure
# ----------------------------------------------------------------------------------------------


def test_policy_view_marks_the_chosen_responses_on_a_log_axis(small):
    fig = plot_policy(small, ("dpo", "nca"))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # a fall from 10 % to 10^-6 is visible, not a flat zero
    # The outlined bars are the tracked prompt's CHOSEN responses, recomputed here from the data itself:
    # rank 1 of each tuple (and the chosen of each pair) of prompt 0 (BanditTrainConfig.track_prompt).
    b = make_bandit(small.setting.bandit, small.seeds[:1])
    chosen = set(b.tuples[0, 0, :, 0].tolist()) | set(b.pairs[0, 0, :, 0].tolist())
    outlined = [p for p in ax.patches if p.get_linewidth() > 1.0]
    assert len(outlined) == len(chosen) >= 1


def test_animation_frames_are_log_spaced_and_the_end_is_held(small, tmp_path):
    from PIL import Image

    from ncakit.toy.classroom import animate_policy, animation_frames

    steps = np.arange(0, 2001, 20)  # the classic preset's logging
    idx = animation_frames(steps, max_frames=40)
    assert idx[0] == 0 and idx[-1] == len(steps) - 1 and len(set(idx)) == len(idx)
    # Dense early: a third of the frames show the first 10 % of training, where the policy moves most
    # (every logged step there; a linear clock would give it 10 %), and every decade gets screen time.
    assert (steps[idx] <= 200).mean() >= 0.3
    assert ((steps[idx] > 200) & (steps[idx] <= 2000)).sum() >= 10
    path = animate_policy(small, tmp_path / "a.gif", max_frames=8, fps=8, hold_s=1.0)
    with Image.open(path) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    # every frame shows a new step at 1/fps; the pause at the end is the last frame's own, longer duration
    # (GIF stores centiseconds: 1/8 s is written as 120 ms)
    assert len(set(durations[:-1])) == 1 and abs(durations[0] - 125) <= 10
    assert abs(durations[-1] - durations[0] - 1000) <= 10
    # With the defaults on the classic preset's logging the still end is under a third of the loop
    # (it was ~85 % of the loop before: most frames showed the settled policy).
    import inspect

    defaults = inspect.signature(animate_policy).parameters
    fps, hold = defaults["fps"].default, defaults["hold_s"].default
    n = len(animation_frames(steps, defaults["max_frames"].default))
    assert hold / (n / fps + hold) < 1 / 3


def test_live_controls_show_one_figure():
    pytest.importorskip("ipywidgets")
    small_run = quick_run(steps=5, seeds=(0,))

    def draw(**kw):  # what the tutorials' draw does: create a figure, plt.show()
        plot_live(small_run, panels=("chosen",))
        plt.show()

    plt.close("all")
    box = live_controls(draw, replace_static=False)
    # The redraw's figure went to the live output and was closed: nothing is left open for the inline
    # backend to show a second, static copy at the end of the cell.
    assert plt.get_fignums() == []
    bundle = box._repr_mimebundle_()
    assert bundle["image/png"]  # the default figure, for viewers without a widget front-end
