"""The toy bandit (ncakit.toy.bandit, .policies, .trainer, .presets, .report): exact start at μ, determinism, the vectorised trainer equal to
separate runs, the closed forms, the classic preset's claims, and clear errors.

The claims tests run the DEFAULT classic preset (8 seeds x 2000 steps, what `make demo` runs), once
per session, and check the numbers the classroom story rests on (ncakit/MATH.md, "What a toy bandit needs").
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ncakit.toy.bandit import PAIR_VIEWS, Bandit, BanditConfig, make_bandit
from ncakit.toy.policies import FAMILIES, Policy, PolicyConfig
from ncakit.toy.presets import PRESETS, get_preset, preset_settings, run_preset
from ncakit.toy.report import CLAIM_FALL, CLAIM_GAP, CLAIM_NEAR, check_claims, format_table, summarize
from ncakit.toy.trainer import METRICS, BanditTrainConfig, Setting, StackedOptimizer, train_bandits

SMALL = BanditConfig(
    n_prompts=4, n_responses=12, k=4, tuples_per_prompt=3, feature_dim=4, pair_view="best_random"
)


@pytest.fixture(scope="module")
def classic():
    """The default classic preset, exactly as `make demo` runs it (8 seeds x 2000 steps)."""
    return run_preset("classic", range(8))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", PAIR_VIEWS)
def test_data_tuples_are_distinct_sorted_and_pairs_chosen_first(view):
    cfg = BanditConfig(
        n_prompts=5, n_responses=10, k=4, tuples_per_prompt=6, reward_noise=0.3, pair_view=view
    )
    b = make_bandit(cfg, seeds=(3, 4))
    S, X, M, K = b.tuples.shape
    assert (S, X, M, K) == (2, 5, 6, 4)
    srt = torch.sort(b.tuples, dim=-1).values
    assert bool((srt[..., 1:] != srt[..., :-1]).all()), "a tuple holds K DISTINCT responses"
    assert bool((b.tuple_rewards[..., :-1] >= b.tuple_rewards[..., 1:]).all()), "tuples are sorted best-first"
    # every pair is two members of its tuple, chosen first
    member = (b.pairs[..., :, None] == b.tuples[..., None, :]).any(-1)
    assert bool(member.all())
    assert bool((b.pairs[..., 0] != b.pairs[..., 1]).all())
    if view != "bradley_terry":
        assert bool((b.pair_rewards[..., 0] >= b.pair_rewards[..., 1]).all())
        assert bool((b.pairs[..., 0] == b.tuples[..., 0]).all()), (
            "reward-ordered views put the tuple's best first"
        )
    # the seen mask and the best seen response
    seen = torch.zeros(S, X, cfg.n_responses, dtype=torch.bool).scatter_(2, b.tuples.reshape(S, X, -1), True)
    assert torch.equal(seen, b.seen)
    best_r = b.reward.gather(2, b.best_seen[..., None]).squeeze(-1)
    assert bool(b.seen.gather(2, b.best_seen[..., None]).all())
    assert torch.equal(best_r, b.reward.masked_fill(~b.seen, -torch.inf).max(-1).values)


def test_data_are_sampled_from_mu():
    """Responses with a larger μ appear more often in the data (the tuples are drawn from μ)."""
    cfg = BanditConfig(n_prompts=1, n_responses=8, k=2, tuples_per_prompt=4000, ref_scale=1.5)
    b = make_bandit(cfg, seeds=(0,))
    counts = torch.bincount(b.tuples[0, 0].flatten(), minlength=8).double()
    mu = b.ref_logps[0, 0].exp().double()
    # sampling without replacement flattens μ but keeps its order
    assert torch.equal(torch.argsort(counts), torch.argsort(mu))


def test_seed_alone_equals_seed_in_batch_data():
    both = make_bandit(SMALL, seeds=(5, 9))
    alone = make_bandit(SMALL, seeds=(9,))
    sel = both.select([1])
    for name in ("ref_logits", "reward", "features", "tuples", "tuple_rewards", "pairs", "seen", "best_seen"):
        assert torch.equal(getattr(sel, name), getattr(alone, name)), name


# ----------------------------------------------------------------------------------------------
# Policies start exactly at μ
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_step0_policy_is_exactly_the_reference(family):
    b = make_bandit(SMALL, seeds=(0, 1, 2))
    pol = Policy(PolicyConfig(family), b, n_losses=3)
    delta = pol.delta()
    assert delta.shape == (3, 3, SMALL.n_prompts, SMALL.n_responses)
    assert bool((delta == 0).all()), "the trainable delta is zero at initialisation"
    logps = pol.logps()
    assert torch.equal(logps, b.ref_logps.expand_as(logps)), "log π_θ == log μ bit for bit at step 0"
    # ...and the trainable part does get a gradient (the zero init is not a dead end)
    logps[..., 0].sum().backward()
    grads = [p.grad for p in pol.params if p.grad is not None and bool((p.grad != 0).any())]
    assert grads, f"{family}: no parameter received a gradient"


@pytest.mark.parametrize("family", FAMILIES)
def test_step0_logged_logratios_are_exactly_zero(family):
    st = Setting("s", SMALL, PolicyConfig(family))
    h = train_bandits(st, (0, 1), BanditTrainConfig(steps=3, log_every=1))["s"]
    assert h.steps[0] == 0
    for m in ("chosen", "rejected", "rank_logratio", "best_logratio", "kl"):
        assert np.all(h.metrics[m][0] == 0.0), m
    # the losses at step 0 are MATH.md's anchors (policy = reference): DPO ln 2, NCA 2 ln 2, ...
    loss0 = h.metrics["loss"][0]
    np.testing.assert_allclose(loss0[h.loss_index("dpo")], np.log(2), rtol=1e-6)
    np.testing.assert_allclose(loss0[h.loss_index("nca_pair")], 2 * np.log(2), rtol=1e-6)
    np.testing.assert_allclose(loss0[h.loss_index("infonca")], np.log(4), rtol=1e-6)
    np.testing.assert_allclose(loss0[h.loss_index("nca")], 2 * np.log(2), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# The vectorised trainer
# ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_history():
    st = [Setting("a", SMALL, PolicyConfig("lowrank")), Setting("b", SMALL, PolicyConfig("mlp"))]
    cfg = BanditTrainConfig(steps=40, log_every=10)
    h1, h2 = train_bandits(st, (0, 1), cfg), train_bandits(st, (0, 1), cfg)
    for name in ("a", "b"):
        for m in h1[name].metrics:
            assert np.array_equal(h1[name].metrics[m], h2[name].metrics[m]), (name, m)
    h3 = train_bandits(st, (0, 2), cfg)
    assert not np.array_equal(h1["a"].metrics["chosen"][:, :, 1], h3["a"].metrics["chosen"][:, :, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_run_equals_separate_runs(family):
    """Seed s and loss l of one batched run (several settings, losses and seeds, one backward)
    equal a run of that seed and that loss alone (float64, so the match is tight)."""
    shared = Setting("shared", SMALL, PolicyConfig(family), beta=0.2, alpha=0.5, lr=0.03)
    other = Setting("other", BanditConfig(n_prompts=3, n_responses=12, tuples_per_prompt=1), beta=0.5, lr=0.1)
    losses = ("dpo", "nca_pair", "infonca", "nca")
    steps = 150
    batch = train_bandits(
        [other, shared],
        (0, 4, 7),
        BanditTrainConfig(losses=losses, steps=steps, log_every=50),
        dtype=torch.float64,
    )
    for li, loss in ((0, "dpo"), (3, "nca")):
        alone = train_bandits(
            shared, (4,), BanditTrainConfig(losses=(loss,), steps=steps, log_every=50), dtype=torch.float64
        )
        for m in ("chosen", "rejected", "rank_logratio", "expected_reward", "kl", "loss", "track_probs"):
            np.testing.assert_allclose(
                batch["shared"].metrics[m][:, li, 1],
                alone["shared"].metrics[m][:, 0, 0],
                rtol=1e-9,
                atol=1e-10,
                err_msg=m,
            )


def test_optimizer_matches_torch_adam():
    torch.manual_seed(0)
    shapes = [(2, 3, 4), (2, 3)]
    mine = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in mine]
    opt = StackedOptimizer("adam", mine, [0.05, 0.01])
    topt = torch.optim.Adam([{"params": [ref[0]], "lr": 0.05}, {"params": [ref[1]], "lr": 0.01}])
    for step in range(25):
        g = [torch.randn(s, dtype=torch.float64) * (1 + step) for s in shapes]
        for p, q, gi in zip(mine, ref, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt.step()
        topt.step()
    for p, q in zip(mine, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_history_shapes_and_summary():
    cfg = BanditTrainConfig(losses=("dpo", "nca"), steps=10, log_every=4, track_prompt=1)
    h = train_bandits(Setting("s", SMALL), (0, 1, 2), cfg)["s"]
    assert list(h.steps) == [0, 4, 8, 10]
    assert h.metrics["chosen"].shape == (4, 2, 3)
    assert h.metrics["rank_logratio"].shape == (4, 2, 3, SMALL.k)
    assert h.metrics["track_probs"].shape == (4, 2, 3, SMALL.n_responses)
    np.testing.assert_allclose(h.metrics["track_probs"].sum(-1), 1.0, rtol=1e-5)
    mass = h.metrics["mass_best"] + h.metrics["mass_other_seen"] + h.metrics["mass_unseen"]
    np.testing.assert_allclose(mass, 1.0, rtol=1e-5)
    s = h.summary()
    assert set(s) == {"dpo", "nca"} and set(s["dpo"]["chosen"]) == {"mean", "std", "min", "max"}
    assert set(METRICS) == set(h.metrics)


# ----------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------


def test_nca_tabular_fixed_point_is_log_k_w():
    """MATH.md, NCA: in a tabular policy with one tuple per prompt (and mass left for the unseen
    responses), NCA drives every response to r̂* = log(K·w); InfoNCA fixes only the differences
    β·(s_i − s_j) = (r_i − r_j)/α."""
    cfg = BanditConfig(n_prompts=8, n_responses=32, k=4, tuples_per_prompt=1)
    beta, alpha = 1.0, 1.0
    st = Setting("fp", cfg, PolicyConfig("tabular"), beta=beta, alpha=alpha, lr=0.05)
    h = train_bandits(
        st,
        (0, 1, 2),
        BanditTrainConfig(losses=("nca", "infonca"), steps=1500, log_every=1500),
        dtype=torch.float64,
    )["fp"]
    assert np.all(h.reference["nca_target_feasible"] == 1.0)
    np.testing.assert_allclose(h.final("rank_logratio")[0], h.reference["nca_target_rank"], atol=1e-3)
    b = make_bandit(cfg, (0, 1, 2), dtype=torch.float64)
    r = b.tuple_rewards.reshape(3, -1, 4)
    want = ((r - r[..., :1]) / (alpha * beta)).mean(1).numpy()
    got = h.final("rank_logratio")[1] - h.final("rank_logratio")[1][:, :1]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_nca_targets_average_the_weights_of_overlapping_tuples():
    b = make_bandit(SMALL, (0,), dtype=torch.float64)
    alpha, beta = 0.5, 0.2
    t = Bandit.nca_targets(b, alpha, beta)[0]  # [X, M, K]
    w = torch.softmax(b.tuple_rewards[0] / alpha, -1)
    x, m, k = 1, 2, 3
    y = b.tuples[0, x, m, k]
    where = b.tuples[0, x] == y
    expected = torch.log(SMALL.k * w[x][where].mean()) / beta
    torch.testing.assert_close(t[x, m, k], expected)


def test_target_policy_and_frontier():
    b = make_bandit(SMALL, (0, 1), dtype=torch.float64)
    lp = b.target_logps(alpha=0.5, beta=0.2)
    torch.testing.assert_close(lp, torch.log_softmax(b.ref_logits + b.reward / 0.1, -1))
    f = b.frontier(n=30)
    assert f["kl"].shape == (2, 30)
    # along the frontier (τ decreasing) KL and expected reward both increase
    assert bool((f["kl"].diff(dim=1) > -1e-9).all()) and bool(
        (f["expected_reward"].diff(dim=1) > -1e-9).all()
    )
    st = b.policy_stats(b.ref_logps)
    torch.testing.assert_close(st["kl"], torch.zeros(2, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# The classroom claims (default preset, 8 seeds x 2000 steps)
# ----------------------------------------------------------------------------------------------


def _final(h, metric, loss):
    return h.final(metric)[h.loss_index(loss)]


def test_control_no_loss_lowers_the_chosen_logratio(classic):
    h = classic["tabular-control"]
    assert h.setting.role == "control" and h.setting.bandit.tuples_per_prompt == 1
    # at EVERY logged step after the start, for every loss and seed
    assert h.metrics["chosen"][1:].min() > 0.0


def test_overlap_and_shared_dpo_infonca_fall_nca_does_not(classic):
    for name in ("tabular-overlap", "lowrank"):
        h = classic[name]
        dpo_like = [_final(h, "chosen", n) for n in ("dpo", "infonca")]
        nca_like = [_final(h, "chosen", n) for n in ("nca", "nca_pair")]
        for v in dpo_like:  # several nats below the reference, in every seed
            assert v.mean() < -5.0 and v.max() < -CLAIM_FALL, (name, v)
        for v in nca_like:  # near or above 0, far above DPO/InfoNCA
            assert v.min() > -CLAIM_NEAR, (name, v)
            assert (v - np.maximum(*dpo_like)).min() > CLAIM_GAP, name


def test_shared_best_response_falls_under_dpo_infonca_only(classic):
    h = classic["lowrank"]
    for n in ("dpo", "infonca"):
        assert _final(h, "best_logratio", n).max() < 0.0, n
    for n in ("nca", "nca_pair"):
        assert _final(h, "best_logratio", n).min() > 0.0, n
    # and DPO/InfoNCA leak more mass to never-seen responses than NCA
    assert _final(h, "mass_unseen", "nca").mean() < min(
        _final(h, "mass_unseen", n).mean() for n in ("dpo", "infonca")
    )


def test_nca_raises_expected_reward(classic):
    for h in classic.values():
        for n in ("nca", "nca_pair"):
            gain = _final(h, "expected_reward", n) - h.reference["ref_expected_reward"]
            assert gain.min() > 0.0, (h.setting.name, n)


def test_check_claims_all_seeds(classic):
    c = check_claims(classic)
    assert c["n_seeds"] == 8 and len(c["claims"]) == 9
    assert c["all"]["count"] == 8, {k: v["count"] for k, v in c["claims"].items()}


def test_summary_and_table(classic):
    s = summarize(classic)
    assert set(s) == {"settings", "claims"}
    cell = s["settings"]["lowrank"]["final"]["nca"]["chosen"]
    assert set(cell) == {"mean", "std", "min", "max"}
    table = format_table(classic, "chosen")
    assert "tabular-overlap" in table and "±" in table and len(table.splitlines()) == 2 + 4


# ----------------------------------------------------------------------------------------------
# Presets and errors
# ----------------------------------------------------------------------------------------------


def test_presets_and_family_swap():
    assert set(PRESETS) == {"classic", "k4-rewards", "alpha-sweep", "beta-sweep", "zoo"}
    names = [s.name for s in preset_settings("classic", ["linear", "mlp"])]
    assert names == ["tabular-control", "tabular-overlap", "linear", "mlp"]
    sweep = preset_settings("beta-sweep", ["lowrank"])
    assert [s.policy.family for s in sweep] == ["lowrank"] * 4 and sweep[0].name == "beta=0.03"
    runs = run_preset("alpha-sweep", (0,), steps=3, families=["mlp"])
    assert [h.setting.alpha for h in runs.values()] == [0.1, 0.3, 1.0, 3.0]


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: BanditConfig(k=40, n_responses=32), ValueError, r"k: expected K <= n_responses"),
        (lambda: BanditConfig(k=1), ValueError, r"k: expected an int >= 2"),
        (lambda: BanditConfig(n_prompts=0), ValueError, r"n_prompts"),
        (lambda: BanditConfig(reward_fit=1.5), ValueError, r"reward_fit"),
        (lambda: BanditConfig(pair_view="random"), ValueError, r"pair_view: unknown 'random'"),
        (lambda: BanditConfig(n_prompts=2.5), TypeError, r"n_prompts: expected an int"),
        (lambda: PolicyConfig(family="cnn"), ValueError, r"family: unknown 'cnn'; expected one of"),
        (lambda: BanditTrainConfig(losses=("dpo", "fancy")), ValueError, r"unknown loss 'fancy'"),
        (lambda: BanditTrainConfig(losses=()), ValueError, r"losses: expected a non-empty"),
        (lambda: BanditTrainConfig(losses="dpo"), ValueError, r"losses: expected a non-empty sequence"),
        (lambda: BanditTrainConfig(steps=0), ValueError, r"steps: expected an int >= 1, got 0"),
        (lambda: BanditTrainConfig(steps=-5), ValueError, r"steps"),
        (lambda: BanditTrainConfig(optimizer="lbfgs"), ValueError, r"optimizer: unknown 'lbfgs'"),
        (lambda: Setting("s", alpha=0.0), ValueError, r"alpha: expected a finite value > 0, got 0.0"),
        (lambda: Setting("s", alpha=-1), ValueError, r"alpha"),
        (lambda: Setting("s", beta=0), ValueError, r"beta: expected a finite value > 0"),
        (lambda: Setting("s", lr=float("nan")), ValueError, r"lr"),
        (lambda: Setting(""), ValueError, r"name"),
        (lambda: make_bandit(SMALL, seeds=[]), ValueError, r"seeds: expected at least one seed"),
        (
            lambda: make_bandit(SMALL, seeds=5),
            TypeError,
            r"seeds: expected a sequence of ints such as range\(5\)",
        ),
        (lambda: make_bandit(SMALL, seeds=[1, 1]), ValueError, r"seeds: expected distinct seeds"),
        (lambda: get_preset("fancy"), ValueError, r"preset: unknown 'fancy'; expected one of"),
        (lambda: preset_settings("classic", ["cnn"]), ValueError, r"policy: unknown 'cnn'"),
        (lambda: run_preset("classic", steps=0), ValueError, r"steps: expected an int >= 1"),
        (lambda: Bandit.target_logps(make_bandit(SMALL), 0.0, 1.0), ValueError, r"alpha"),
    ],
)
def test_bad_arguments_fail_clearly(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_train_argument_errors():
    a = Setting("a", SMALL)
    with pytest.raises(ValueError, match=r"settings: expected distinct names"):
        train_bandits([a, a], (0,), BanditTrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"same n_responses"):
        train_bandits([a, Setting("b", BanditConfig(n_responses=20))], (0,), BanditTrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"track_prompt: expected < n_prompts = 4"):
        train_bandits(a, (0,), BanditTrainConfig(steps=1, track_prompt=4))
    with pytest.raises(TypeError, match=r"config: expected a BanditTrainConfig"):
        train_bandits(a, (0,), {"steps": 3})
    h = train_bandits(a, (0,), BanditTrainConfig(steps=1))["a"]
    with pytest.raises(ValueError, match=r"loss: 'ipo' was not trained"):
        h.loss_index("ipo")
    with pytest.raises(ValueError, match=r"metric: unknown 'accuracy'"):
        h.final("accuracy")


def test_other_losses_and_views_run():
    """Any registered loss trains on the toy (pairwise ones on the pair view), e.g. IPO and
    Plackett–Luce, also with Bradley–Terry pairs and SGD."""
    st = Setting(
        "s", BanditConfig(n_prompts=3, n_responses=10, tuples_per_prompt=2, pair_view="bradley_terry")
    )
    h = train_bandits(
        st, (0,), BanditTrainConfig(losses=("ipo", "plackett_luce", "hinge"), steps=5, optimizer="sgd")
    )["s"]
    assert np.isfinite(h.metrics["loss"]).all()


def test_toy_modules_without_figures_do_not_import_matplotlib():
    code = (
        "import sys, ncakit.toy, ncakit.toy.bandit, ncakit.toy.policies, ncakit.toy.trainer, ncakit.toy.presets, "
        "ncakit.toy.report; print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
