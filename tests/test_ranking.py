"""ncakit.ranking against Chen et al. 2024 (arXiv:2405.19534): hand-computed ranking accuracies (Eq. 1, Eq. 11),
the idealised ranking accuracy (Eq. 3) on a small worked example, a perfectly optimised DPO policy that
attains it, the implicit-reward pair accuracy for K responses, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ncakit import losses as L
from ncakit.ranking import (
    PairAccuracy,
    idealized_log_ratio_margin,
    idealized_ranking_accuracy,
    implicit_reward_accuracy,
    ranking_accuracy,
)

torch.set_num_threads(1)
F64 = torch.float64


def acc(x: PairAccuracy) -> float:
    return float(x.accuracy)


# ---------------------------------------------------------------------------------------------
# Ranking accuracy of a model (Def. 2.3, Eq. 1): pi(y_w) >= pi(y_l), chosen in column 0
# ---------------------------------------------------------------------------------------------


def test_pairwise_ranking_accuracy_by_hand():
    logps = torch.tensor([[-3.0, -5.0], [-4.0, -2.0], [-7.0, -7.0], [-1.0, -1.5]], dtype=F64)
    # Rows 0 and 3 have the chosen more likely, row 2 ties (Eq. 1 uses >=: counts), row 1 is wrong: 3/4.
    out = ranking_accuracy(logps)
    assert (out.correct, out.total, out.skipped_ties) == (3, 4, 0) and acc(out) == 0.75


def test_length_normalised_ranking_accuracy_by_hand():
    # Summed log-probs prefer the short rejected response; per token the chosen one is better (-0.5 > -1).
    logps = torch.tensor([[-10.0, -4.0]], dtype=F64)
    lengths = torch.tensor([[20.0, 4.0]], dtype=F64)
    assert acc(ranking_accuracy(logps)) == 0.0
    assert acc(ranking_accuracy(logps, lengths=lengths)) == 1.0


def test_kway_ranking_accuracy_is_exact_match_by_hand():
    rewards = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 1.0, 5.0], [0.0, 2.0, 1.0]], dtype=F64)
    logps = torch.tensor(
        [
            [-1.0, -2.0, -3.0],  # same order as the rewards: correct
            [-1.0, -3.0, -2.0],  # best right, last two swapped: wrong (Eq. 11 needs the whole ranking)
            [-1.0, -2.0, -3.0],  # tied rewards: skipped and counted
            [-9.0, -1.0, -5.0],  # rewards order 1 > 2 > 0, likelihoods 1 > 2 > 0: correct
        ],
        dtype=F64,
    )
    out = ranking_accuracy(logps, rewards)
    assert (out.correct, out.total, out.skipped_ties) == (2, 3, 1)
    assert acc(out) == pytest.approx(2 / 3, abs=1e-15)
    # With a mask the exact match is over the valid responses only: drop row 1's last response -> correct.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    assert ranking_accuracy(logps, rewards, mask=mask).correct == 3


def test_kway_with_two_responses_equals_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(50, 2, generator=g, dtype=F64)
    rewards = torch.tensor([[1.0, 0.0]], dtype=F64).expand(50, 2)
    assert ranking_accuracy(logps, rewards).correct == ranking_accuracy(logps).correct


# ---------------------------------------------------------------------------------------------
# Idealised ranking accuracy (Corollary 3.3, Eq. 3)
# ---------------------------------------------------------------------------------------------


def test_idealized_ranking_accuracy_closed_form_by_hand():
    beta = 0.5
    # log mu(y_w) - log mu(y_l) per pair, and the preference probability alpha of the chosen response.
    ref_gap = torch.tensor([-1.0, -1.0, -1.0, 0.3, -50.0, 2.0], dtype=F64)
    alpha = torch.tensor([0.6, 0.75, 0.5, 0.5, 1.0, 0.0], dtype=F64)
    ref = torch.stack([ref_gap - 10, torch.full_like(ref_gap, -10)], dim=1)
    # Eq. 3 in log form: ref_gap + logit(alpha)/beta > 0.
    #   0.6:  -1 + 2 ln(1.5) = -0.189  -> wrong      0.75: -1 + 2 ln 3 = +1.197 -> right
    #   0.5:  -1 + 0 -> wrong;  +0.3 + 0 -> right     1.0: +inf -> right;   0.0: -inf -> wrong
    margin = idealized_log_ratio_margin(ref, alpha, beta, eps=0.0)
    torch.testing.assert_close(margin[0], torch.tensor(-1 + 2 * math.log(1.5), dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(margin[1], torch.tensor(-1 + 2 * math.log(3), dtype=F64), rtol=0, atol=1e-12)
    assert margin[4] == math.inf and margin[5] == -math.inf
    out = idealized_ranking_accuracy(ref, alpha, beta, eps=0.0)
    assert (out.correct, out.total) == (3, 6) and acc(out) == 0.5
    # The paper's App. C.4 clip (alpha = 1 -> 1 - 0.001), now the default: logit(0.999)/0.5 = 13.8 cannot
    # beat a -50 gap, and alpha = 0 -> 0.001 gives 2 - 13.8 < 0 (still wrong).
    assert idealized_ranking_accuracy(ref, alpha, beta, eps=1e-3).correct == 2
    assert idealized_ranking_accuracy(ref, alpha, beta).correct == 2
    # Eq. 3 itself, as a ratio: mu_w/mu_l * (alpha/(1-alpha))^(1/beta) > 1 on the interior pairs.
    a, gap = alpha[:4], ref_gap[:4]
    ratio = torch.exp(gap) * (a / (1 - a)) ** (1 / beta)
    assert ((ratio > 1) == (margin[:4] > 0)).all()


def test_idealized_accuracy_grows_as_beta_shrinks():
    # A smaller beta lets the policy move further from mu: every pair with alpha > 1/2 is eventually ranked
    # right, however wrong the reference is; a large beta leaves the reference's ranking in place.
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(200, 2, generator=g, dtype=F64) * 3
    alpha = 0.5 + 0.5 * torch.rand(200, generator=g, dtype=F64) * 0.98 + 0.005
    accs = [acc(idealized_ranking_accuracy(ref, alpha, b)) for b in (100.0, 1.0, 0.1, 0.001)]
    assert accs == sorted(accs) and accs[-1] == 1.0
    assert accs[0] == pytest.approx(acc(ranking_accuracy(ref)), abs=0.02)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_perfectly_optimised_dpo_attains_the_idealized_accuracy(beta):
    # Construct the DPO optimum on ground-truth preferences: minimise the EXPECTED DPO loss when each pair
    # is labelled y_w > y_l with probability alpha (alpha * DPO(w, l) + (1 - alpha) * DPO(l, w)) over free
    # policy log-probs. Its ranking accuracy (Eq. 1) must equal R* from reference log-probs alone (Eq. 3).
    g = torch.Generator().manual_seed(2)
    B = 12
    ref = torch.randn(B, 2, generator=g, dtype=F64) * 2 - 5
    alpha = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=F64)
    pol = ref.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([pol], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        forward = L.dpo(pol, ref, beta=beta).loss
        swapped = L.dpo(pol.flip(1), ref.flip(1), beta=beta).loss
        loss = (alpha * forward + (1 - alpha) * swapped).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # The optimum's log-ratio gap is Theorem 3.1's: log pi*(w) - log pi*(l) = ref gap + logit(alpha)/beta.
    gap = (pol[:, 0] - pol[:, 1]).detach()
    torch.testing.assert_close(gap, idealized_log_ratio_margin(ref, alpha, beta), rtol=0, atol=1e-6)
    assert gap.abs().min() > 1e-3, "no pair sits on a tie, where Eq. 1 (>=) and Eq. 3 (>) differ"
    ideal = idealized_ranking_accuracy(ref, alpha, beta)
    got = ranking_accuracy(pol.detach())
    assert got.correct == ideal.correct and 0 < ideal.correct < B, (got, ideal)


def test_eps_defaults_to_the_papers_0_001_and_eps_0_gives_the_old_limit():
    import inspect

    from ncakit.ranking import PAPER_EPS

    assert PAPER_EPS == 1e-3
    for fn in (idealized_ranking_accuracy, idealized_log_ratio_margin):
        assert inspect.signature(fn).parameters["eps"].default == PAPER_EPS
    beta = 0.5
    # alpha = 1 and alpha = 0, each with a gap just inside and just outside logit(0.999)/beta = 2 ln 999 = 13.8155.
    bound = 2 * math.log(999.0)
    ref_gap = torch.tensor([-bound + 0.1, -bound - 0.1, bound + 0.1, bound - 0.1], dtype=F64)
    alpha = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    ref = torch.stack([ref_gap, torch.zeros_like(ref_gap)], dim=1)
    margin = idealized_log_ratio_margin(ref, alpha, beta)
    # Clipped alpha = 0.999 / 0.001: margin = gap +- logit(0.999)/beta, finite (logit(0.999) = ln 999).
    want = ref_gap + torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64) * bound
    torch.testing.assert_close(margin, want, rtol=0, atol=1e-12)
    # Counting: rows 0 (alpha = 1, gap above -bound) and 2 (alpha = 0, gap above +bound) are ranked right.
    out = idealized_ranking_accuracy(ref, alpha, beta)
    assert (out.correct, out.total) == (2, 4)
    # eps = 0: the unclipped limit of Eq. 3, alpha = 1 always right and alpha = 0 never (margins +-inf).
    assert idealized_log_ratio_margin(ref, alpha, beta, eps=0.0).isinf().all()
    assert idealized_ranking_accuracy(ref, alpha, beta, eps=0.0).correct == 2
    assert idealized_ranking_accuracy(ref[:2], alpha[:2], beta, eps=0.0).correct == 2
    assert idealized_ranking_accuracy(ref[2:], alpha[2:], beta, eps=0.0).correct == 0
    # Interior alphas inside [eps, 1 - eps] are untouched by the default clip.
    a = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
    r3 = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.equal(
        idealized_log_ratio_margin(r3, a, 0.2), idealized_log_ratio_margin(r3, a, 0.2, eps=0.0)
    )


# ---------------------------------------------------------------------------------------------
# The authors' variants (angie-chen55/pref-learning-ranking-acc)
# ---------------------------------------------------------------------------------------------


def _authors_rank_from_ratio(ratio, band=0.05):
    """rlhf_minimizer_client.py _get_ranking_from_ratio, with the band as a parameter."""
    if abs(ratio - 1.0) < band:
        return [1, 1]
    elif ratio >= 1.0 + band:
        return [1, 2]
    return [2, 1]


def _authors_idealized(gaps, alphas, beta, band=0.05, eps=1e-3):
    """compute_ranks in plain floats: e = a1/a2 (a1/eps if a2 = 0), p = e**(1/beta) * mu_w/mu_l."""
    correct = 0
    for gap, a1 in zip(gaps, alphas):
        a2 = 1.0 - a1
        e = a1 / a2 if a2 > 0 else a1 / eps
        p = e ** (1 / beta) * math.exp(gap)
        correct += _authors_rank_from_ratio(e, band) == _authors_rank_from_ratio(p, band)
    return correct


def test_authors_idealized_accuracy_with_the_tie_band_by_counting():
    beta = 1.0  # p = e * mu_w/mu_l, so each policy ratio below is set by hand
    rows = [  # (alpha, gap = log mu_w - log mu_l): data ranking vs policy ranking (5% band)
        (0.75, math.log(1.02 / 3)),  # e = 3 -> [1,2]; p = 1.02 -> tie [1,1]: WRONG (paper: margin > 0, right)
        (0.75, 0.0),  # p = 3 -> [1,2]: right (paper right)
        (0.5, math.log(1.03)),  # e = 1 -> tie; p = 1.03 -> tie: right (paper right)
        (0.5, math.log(1.2)),  # e = 1 -> tie; p = 1.2 -> [1,2]: WRONG (paper right)
        (0.25, 0.0),  # e = 1/3 -> [2,1]; p = 1/3 -> [2,1]: right (paper: margin < 0, wrong)
        (0.51, -math.log(0.51 / 0.49)),  # e = 1.0408 -> tie; p = 1 -> tie: right (paper: margin = 0, wrong)
        (1.0, -math.log(1000.0) + math.log(0.5)),  # e = 1/eps = 1000 -> [1,2]; p = 0.5 -> [2,1]: WRONG
        (0.0, 0.0),  # e = 0 -> [2,1]; p = 0 -> [2,1]: right (paper, clipped: -13.8 + 0 < 0, wrong)
    ]
    alpha = torch.tensor([a for a, _ in rows], dtype=F64)
    gap = torch.tensor([g for _, g in rows], dtype=F64)
    ref = torch.stack([gap - 3.0, torch.full_like(gap, -3.0)], dim=1)
    out = idealized_ranking_accuracy(ref, alpha, beta, variant="authors")
    assert (out.correct, out.total, out.skipped_ties) == (5, 8, 0)
    assert out.correct == _authors_idealized(gap.tolist(), alpha.tolist(), beta)
    assert idealized_ranking_accuracy(ref, alpha, beta).correct == 4  # paper: rows 0-3 by the comments above
    # A 1% band: row 0 (1.02) becomes a win (right), rows 2 (1.03 vs tie) and 5 (e = 1.0408 a win vs p = 1 a tie)
    # become wrong: rows 0, 1, 4, 7 -> 4.
    narrow = idealized_ranking_accuracy(ref, alpha, beta, variant="authors", tie_band=0.01)
    assert narrow.correct == 4 == _authors_idealized(gap.tolist(), alpha.tolist(), beta, band=0.01)


def test_authors_idealized_accuracy_matches_the_transcribed_loop_on_random_pairs():
    g = torch.Generator().manual_seed(3)
    B = 400
    gap = torch.randn(B, generator=g, dtype=F64) * 2
    alpha = torch.rand(B, generator=g, dtype=F64)
    alpha[:20] = torch.tensor([0.0, 1.0, 0.5, 0.49, 0.51] * 4, dtype=F64)
    ref = torch.stack([gap, torch.zeros_like(gap)], dim=1)
    for beta in (0.3, 1.0, 5.0):  # p stays inside float64 range for these, so the loop's ** never overflows
        for band in (0.05, 0.2):
            got = idealized_ranking_accuracy(ref, alpha, beta, variant="authors", tie_band=band).correct
            assert got == _authors_idealized(gap.tolist(), alpha.tolist(), beta, band=band)


def _max_ranks(xs):
    """K + 1 - scipy.stats.rankdata(xs, method="max"), written out: 1 + #{j : x_j > x_i}."""
    return [1 + sum(x_j > x_i for x_j in xs) for x_i in xs]


def test_authors_ranking_accuracy_counts_ties_as_the_released_code_does():
    logps = torch.tensor([[-3.0, -5.0], [-4.0, -2.0], [-7.0, -7.0], [-1.0, -1.5]], dtype=F64)
    # Model ranks [1,2], [2,1], [1,1], [1,2] against the data's [1,2]: the tie is WRONG here (Eq. 1: right): 2/4.
    out = ranking_accuracy(logps, variant="authors")
    assert (out.correct, out.total, out.skipped_ties) == (2, 4, 0)
    assert ranking_accuracy(logps).correct == 3
    # K = 3: tied data rewards are scored, not skipped; right only if the model ties the same responses.
    rewards = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 5.0], [1.0, 1.0, 5.0], [2.0, 2.0, 2.0]], dtype=F64)
    logps = torch.tensor(
        [[-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0], [-2.0, -3.0, -1.0], [-1.0, -1.0, -1.0]], dtype=F64
    )
    # rows: exact order (right); data [2,2,1] vs model [2,2,1] (right); vs model [2,3,1] (wrong); all tied (right).
    out = ranking_accuracy(logps, rewards, variant="authors")
    assert (out.correct, out.total, out.skipped_ties) == (3, 4, 0)
    paper = ranking_accuracy(logps, rewards)
    assert (paper.correct, paper.total, paper.skipped_ties) == (1, 1, 3)


def test_authors_ranking_accuracy_equals_max_rank_lists_on_random_tied_data():
    g = torch.Generator().manual_seed(4)
    B, K = 300, 4
    logps = torch.randint(-3, 1, (B, K), generator=g).to(F64)  # few values: many ties
    rewards = torch.randint(0, 3, (B, K), generator=g).to(F64)
    want = sum(_max_ranks(logps[b].tolist()) == _max_ranks(rewards[b].tolist()) for b in range(B))
    assert ranking_accuracy(logps, rewards, variant="authors").correct == want
    # With a mask the comparison is over the valid responses only (the authors' lists have their own lengths).
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[::2, 3] = False
    want = sum(
        _max_ranks(logps[b, : 3 if b % 2 == 0 else K].tolist())
        == _max_ranks(rewards[b, : 3 if b % 2 == 0 else K].tolist())
        for b in range(B)
    )
    assert ranking_accuracy(logps, rewards, mask=mask, variant="authors").correct == want


# ---------------------------------------------------------------------------------------------
# Implicit-reward pair accuracy (K responses)
# ---------------------------------------------------------------------------------------------


def test_implicit_reward_pair_accuracy_by_hand():
    rewards = torch.tensor([[3.0, 2.0, 1.0, 1.0]], dtype=F64)
    r_hat = torch.tensor([[0.5, 0.7, -0.2, 0.0]], dtype=F64)
    # Data pairs with different rewards: (0,1) (0,2) (0,3) (1,2) (1,3) = 5; the (2,3) tie is skipped.
    # r_hat agrees on (0,2) (0,3) (1,2) (1,3), not on (0,1): 4/5.
    out = implicit_reward_accuracy(r_hat, rewards)
    assert (out.correct, out.total, out.skipped_ties) == (4, 5, 1) and acc(out) == pytest.approx(0.8)
    # Strict: an r_hat tie on a data-ordered pair is wrong (TRL's rewards/accuracies uses >).
    assert implicit_reward_accuracy(torch.zeros(1, 4, dtype=F64), rewards).correct == 0


def test_implicit_reward_accuracy_takes_a_loss_output_and_matches_trl_metric_for_k2():
    g = torch.Generator().manual_seed(3)
    pol, ref = torch.randn(40, 2, generator=g, dtype=F64), torch.randn(40, 2, generator=g, dtype=F64)
    out = L.dpo(pol, ref, beta=0.1)
    from ncakit.metrics import preference_metrics

    trl_style = float(preference_metrics(out, pol)["rewards/accuracies"])
    # Same count of correct pairs (preference_metrics reports the fraction in float32).
    assert acc(implicit_reward_accuracy(out)) == pytest.approx(trl_style, abs=1e-6)


def test_implicit_reward_accuracy_with_mask_ignores_padding():
    rewards = torch.tensor([[3.0, 2.0, 1.0]], dtype=F64)
    r_hat = torch.tensor([[1.0, float("nan"), 0.0]], dtype=F64)
    mask = torch.tensor([[True, False, True]])
    out = implicit_reward_accuracy(r_hat, rewards, mask=mask)
    assert (out.correct, out.total) == (1, 1)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

R2 = torch.zeros(3, 2, dtype=F64)
BAD = [
    ("probs > 1", lambda: idealized_ranking_accuracy(R2, torch.tensor([0.5, 1.2, 0.3]), 0.1), ValueError,
     r"preference_probs: expected probabilities in \[0, 1\], got 1.2"),
    ("probs nan", lambda: idealized_ranking_accuracy(R2, torch.tensor([0.5, float("nan"), 0.3]), 0.1), ValueError,
     r"preference_probs: expected probabilities"),
    ("probs shape", lambda: idealized_ranking_accuracy(R2, torch.ones(4), 0.1), ValueError,
     r"preference_probs: expected a tensor of shape \[3\]"),
    ("beta 0", lambda: idealized_ranking_accuracy(R2, torch.ones(3) / 2, 0.0), ValueError,
     r"beta: expected a finite value > 0"),
    ("eps 0.5", lambda: idealized_ranking_accuracy(R2, torch.ones(3) / 2, 0.1, eps=0.5), ValueError,
     r"eps: expected a float in \[0, 0.5\)"),
    ("variant", lambda: ranking_accuracy(R2, variant="ncakit"), ValueError, r"variant: expected one of \('paper', 'authors'\)"),
    ("ideal variant", lambda: idealized_ranking_accuracy(R2, torch.ones(3) / 2, 0.1, variant="x"), ValueError,
     r"variant: expected one of"),
    ("band w/o authors", lambda: idealized_ranking_accuracy(R2, torch.ones(3) / 2, 0.1, tie_band=0.05), ValueError,
     r"tie_band: only the authors' variant has a tie band"),
    ("band 1", lambda: idealized_ranking_accuracy(R2, torch.ones(3) / 2, 0.1, variant="authors", tie_band=1.0),
     ValueError, r"tie_band: expected a float in \[0, 1\)"),
    ("ref K=3", lambda: idealized_ranking_accuracy(torch.zeros(3, 3), torch.ones(3) / 2, 0.1), ValueError,
     r"ref_logps: expected shape \[B, 2\]"),
    ("K=3 no rewards", lambda: ranking_accuracy(torch.zeros(2, 3)), ValueError,
     r"rewards: needed to order K = 3 responses"),
    ("rewards shape", lambda: ranking_accuracy(R2, torch.zeros(3, 3)), ValueError, r"rewards: expected shape \[3, 2\]"),
    ("1-D logps", lambda: ranking_accuracy(torch.zeros(4)), ValueError, r"policy_logps: expected shape \[B, K\]"),
    ("nan logps", lambda: ranking_accuracy(torch.tensor([[0.0, float("nan")]])), ValueError,
     r"expected finite values for every valid response"),
    ("lengths shape", lambda: ranking_accuracy(R2, lengths=torch.ones(3)), ValueError,
     r"lengths: expected a tensor of shape \[3, 2\]"),
    ("mask < 2", lambda: implicit_reward_accuracy(torch.zeros(2, 3), torch.zeros(2, 3),
                                                  mask=torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()), ValueError,
     r"mask: every prompt needs at least 2 valid responses; rows \[1\]"),
    ("mask dtype", lambda: ranking_accuracy(R2, mask=torch.ones(3, 2)), ValueError, r"mask: expected a bool tensor"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_clear_errors(case):
    _, thunk, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        thunk()


def test_doctest_example_runs():
    import doctest

    import ncakit.ranking

    result = doctest.testmod(ncakit.ranking, verbose=False)
    assert result.attempted >= 1 and result.failed == 0
