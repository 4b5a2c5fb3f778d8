"""Ranking accuracy: does the model's likelihood order the responses like the data?

From A. Chen, S. Malladi, L. H. Zhang, X. Chen, Q. Zhang, R. Ranganath, K. Cho, "Preference Learning
Algorithms Do Not Learn Preference Rankings" (NeurIPS 2024, arXiv:2405.19534), read from the PDF in
the authors' repository (angie-chen55/pref-learning-ranking-acc):

- :func:`ranking_accuracy` — Def. 2.3, Eq. (1): R(x, y_w, y_l; π_θ) = 1 if π_θ(y_w|x) ≥ π_θ(y_l|x),
  else 0, averaged over the data. The quantity is the MODEL's likelihood π_θ(y|x) (the summed
  log-prob), NOT the implicit reward β·log(π_θ/μ) (Remark 2.5 contrasts the two); Remark 2.4's
  length-normalised variant R̃ divides by the response lengths. For n > 2 responses (App. A.6,
  Def. A.8, Eq. 11) a prompt counts only if the model's ranking matches the data's exactly.
- :func:`idealized_ranking_accuracy` — Corollary 3.3, Eq. (3): the ranking accuracy of the policy
  that optimises the DPO / RLHF objective perfectly on ground-truth preferences α = P(y_w ≻ y_l),

      R* = E 1[ μ(y_w|x)/μ(y_l|x) · (α/(1 − α))^(1/β) > 1 ],

  computable from reference log-probs alone (Theorem 3.1: π*(y_w)/π*(y_l) = μ(y_w)/μ(y_l)·(α/(1−α))^(1/β)).
- :func:`implicit_reward_accuracy` — the pair accuracy of the implicit reward r̂ = β·log(π_θ/μ) for K
  responses: the fraction of within-prompt pairs with different data rewards whose r̂ order
  matches (the "reward accuracy" of Remark 2.5; TRL's ``rewards/accuracies`` for K = 2).

Each accuracy has two variants (``variant=``): ``"paper"`` (the default: the definitions above, as
printed) and ``"authors"`` (what the authors' released code computes, transcribed from
angie-chen55/pref-learning-ranking-acc at commit a86bdef; see each function for the file:line and for
what is, and is not, reproduced). The two differ in how ties are treated, and for R* also in where
the data's ranking comes from.

All functions take ``[B, K]`` tensors (pairwise data: K = 2, chosen in column 0, rewards optional) and
return a :class:`PairAccuracy` with the counts, so nothing is dropped silently (tied data rewards are
skipped and counted).

Example::

    >>> import torch
    >>> from ncakit.ranking import ranking_accuracy
    >>> ranking_accuracy(torch.tensor([[-3.0, -5.0], [-4.0, -2.0]])).accuracy.item()
    0.5
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ncakit.losses import LossOutput
from ncakit.validation import check_positive, check_tensor, shape_str

__all__ = [
    "PairAccuracy",
    "ranking_accuracy",
    "idealized_ranking_accuracy",
    "implicit_reward_accuracy",
    "idealized_log_ratio_margin",
    "RANKING_VARIANTS",
    "AUTHORS_TIE_BAND",
    "PAPER_EPS",
]

#: ``variant=`` values of :func:`ranking_accuracy` and :func:`idealized_ranking_accuracy`.
RANKING_VARIANTS = ("paper", "authors")
#: The authors' relative tie band for R*: a likelihood ratio r with |r − 1| < 0.05 is a tie
#: (``rlhf_minimizer_client.py:307-313``, ``_get_ranking_from_ratio``).
AUTHORS_TIE_BAND = 0.05
#: The paper's ε (App. C.4; ``calculate_upper_bound_rlhf.py:32`` ``eps = 1e-3``), the default ``eps``
#: of :func:`idealized_ranking_accuracy` and :func:`idealized_log_ratio_margin`.
PAPER_EPS = 1e-3


class PairAccuracy(NamedTuple):
    """An accuracy with the counts behind it.

    Attributes:
        accuracy: 0-d float64 tensor, ``correct / total`` (NaN if ``total`` is 0).
        correct: number of correctly ordered items (pairs, or prompts for the exact-match variant).
        total: number of items scored.
        skipped_ties: pairs left out because their data rewards are equal (or, for the exact-match
            variant, prompts left out because two of their rewards tie).
    """

    accuracy: torch.Tensor
    correct: int
    total: int
    skipped_ties: int


def _result(correct: int, total: int, skipped: int) -> PairAccuracy:
    acc = torch.tensor(correct / total if total else math.nan, dtype=torch.float64)
    return PairAccuracy(acc, int(correct), int(total), int(skipped))


def _check_inputs(name: str, scores: torch.Tensor, rewards, mask) -> torch.Tensor:
    """Validate ``[B, K]`` scores, optional rewards and mask; return the valid-slot mask."""
    check_tensor(name, scores)
    B, K = scores.shape
    if B == 0 or K < 2:
        raise ValueError(f"{name}: expected shape [B >= 1, K >= 2], got {shape_str(scores)}")
    if rewards is None:
        if K != 2:
            raise ValueError(
                f"rewards: needed to order K = {K} responses; without rewards only K = 2 (chosen in column 0) is "
                "defined"
            )
    else:
        check_tensor("rewards", rewards)
        if rewards.shape != scores.shape:
            raise ValueError(
                f"rewards: expected shape {shape_str(scores)} like {name}, got {shape_str(rewards)}"
            )
    if mask is None:
        valid = torch.ones(B, K, dtype=torch.bool, device=scores.device)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != scores.shape:
            got = f"{mask.dtype} {shape_str(mask)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask: expected a bool tensor of shape {shape_str(scores)}, got {got}")
        valid = mask
        n_valid = valid.sum(dim=1)
        if bool((n_valid < 2).any()):
            rows = torch.nonzero(n_valid < 2).flatten()[:5].tolist()
            raise ValueError(f"mask: every prompt needs at least 2 valid responses; rows {rows} have fewer")
    bad = ~torch.isfinite(scores.double()) & valid
    if rewards is not None:
        bad |= ~torch.isfinite(rewards.double()) & valid
    if bool(bad.any()):
        where = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"{name}/rewards: expected finite values for every valid response, not at [b, k] = {where}"
        )
    return valid


def _better(rewards, valid: torch.Tensor):
    """``better[b, i, j]``: response i is preferred to j by the data; ``tied[b, i, j]`` (i < j): equal rewards."""
    B, K = valid.shape
    both = valid[:, :, None] & valid[:, None, :]
    if rewards is None:  # pairwise data: column 0 is the chosen response
        better = torch.zeros(B, 2, 2, dtype=torch.bool, device=valid.device)
        better[:, 0, 1] = True
        return better, torch.zeros_like(better)
    r = rewards.double()
    upper = torch.ones(K, K, dtype=torch.bool, device=valid.device).triu(diagonal=1)
    return (r[:, :, None] > r[:, None, :]) & both, (r[:, :, None] == r[:, None, :]) & both & upper


def _lengths(lengths, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor) or lengths.shape != scores.shape:
        got = shape_str(lengths) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(
            f"lengths: expected a tensor of shape {shape_str(scores)} (response token counts), got {got}"
        )
    if bool(((lengths <= 0) & valid).any()):
        raise ValueError("lengths: expected positive token counts for every valid response")
    return torch.where(valid, lengths.double(), torch.ones((), dtype=torch.float64, device=scores.device))


def _check_variant(variant) -> str:
    if variant not in RANKING_VARIANTS:
        raise ValueError(f"variant: expected one of {RANKING_VARIANTS}, got {variant!r}")
    return variant


def ranking_accuracy(
    policy_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    variant: str = "paper",
) -> PairAccuracy:
    """Ranking accuracy of a model (Chen et al. 2024, Def. 2.3 / Eq. 1; Def. A.8 / Eq. 11 for K > 2).

    For K = 2 (chosen in column 0, or the higher reward when ``rewards`` are given):
    1[log π_θ(y_w|x) ≥ log π_θ(y_l|x)] averaged over prompts — ties count as correct, as in Eq. (1).
    For K > 2 with ``rewards``: a prompt is correct iff the likelihood ranking agrees with the reward
    ranking on every pair (exact match, Eq. 11; with the same ≥ on likelihood ties); prompts whose
    valid rewards tie are skipped and counted in ``skipped_ties`` (Def. A.8 assumes a strict ranking).
    With ``lengths`` ``[B, K]`` the log-probs are divided by them: the paper's length-normalised R̃.

    ``variant="authors"``: the tie rule of the authors' released code (``calibration_metrics_lib.py``
    ``rank``, lines 267-339, with the data rankings of ``dataset_lib.py:82-92`` and ``:107-115``).
    There, the model's and the data's rankings are both ``K + 1 − scipy.stats.rankdata(x,
    method="max")`` (tied items share a rank) and a prompt is correct iff the two lists are EQUAL
    (``distance_lib.py:187-202``, ``Accuracy``). That is: every valid pair must have the same sign of
    difference in likelihood and in reward — a likelihood tie counts as WRONG (Eq. 1's ≥ counts it
    right), and a prompt with tied data rewards is scored, not skipped (it is correct only if the
    model ties exactly the same responses), so ``skipped_ties`` is 0. Without ``rewards`` column 0 is
    strictly preferred (the authors' pairwise data, ranking [1, 2]). Not reproduced: the absolute
    tie threshold 0.01 of ``get_ranking_from_scores_pair`` (``calibration_metrics_lib.py:257-265``),
    which their code applies only with ``include_ties=True`` on AlpacaFarm — their driver,
    ``calculate_calibration_metrics.py:93``, always passes ``include_ties=False`` (which also drops
    the AlpacaFarm pairs with a 50/50 vote, ``dataset_lib.py:63-67``: pass a ``mask``/filter for that).

    Args:
        policy_logps: ``[B, K]`` summed sequence log-probs log π_θ(y|x) of the model being evaluated
            (pass the reference log-probs to get the reference model's ranking accuracy).
        rewards: ``[B, K]`` data rewards (optional for K = 2). mask: ``[B, K]`` bool.
        variant: ``"paper"`` (default; Eq. 1 / Eq. 11 as printed) or ``"authors"`` (above).
    """
    variant = _check_variant(variant)
    valid = _check_inputs("policy_logps", policy_logps, rewards, mask)
    score = policy_logps.double()
    if lengths is not None:
        score = score / _lengths(lengths, policy_logps, valid)
    if variant == "authors":
        both = valid[:, :, None] & valid[:, None, :]
        model_sign = torch.sign(score[:, :, None] - score[:, None, :])
        if rewards is None:
            data_sign = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64, device=score.device)
        else:
            r = rewards.double()
            data_sign = torch.sign(r[:, :, None] - r[:, None, :])
        agree = (model_sign == data_sign) | ~both  # equal max-rank lists <=> the same sign on every pair
        correct = agree.all(dim=(1, 2)).sum().item()
        return _result(correct, valid.shape[0], 0)
    better, tied = _better(rewards, valid)
    ok = ~better | (score[:, :, None] >= score[:, None, :])  # every data-ordered pair respected
    scored = better.any(dim=(1, 2)) & ~tied.any(dim=(1, 2))
    correct = (ok.all(dim=(1, 2)) & scored).sum().item()
    skipped = (tied.any(dim=(1, 2))).sum().item()
    return _result(correct, int(scored.sum()), skipped)


def implicit_reward_accuracy(
    implicit_rewards: torch.Tensor | LossOutput,
    rewards: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
) -> PairAccuracy:
    """Pair accuracy of the implicit reward r̂ = β·log(π_θ/μ) for K responses.

    Over every within-prompt pair (i, j) of valid responses with r_i > r_j in the data: the fraction
    with r̂_i > r̂_j (strict, like TRL's ``rewards/accuracies``; an r̂ tie counts as wrong). Pairs with
    equal data rewards are skipped and counted. Without ``rewards``, K = 2 with the chosen response in
    column 0 (then this is exactly TRL's ``rewards/accuracies``).

    Args:
        implicit_rewards: ``[B, K]`` r̂, or the :class:`~ncakit.losses.LossOutput` of a loss call.
        rewards: ``[B, K]`` data rewards (optional for K = 2). mask: ``[B, K]`` bool.
    """
    if isinstance(implicit_rewards, LossOutput):
        implicit_rewards = implicit_rewards.implicit_rewards
    valid = _check_inputs("implicit_rewards", implicit_rewards, rewards, mask)
    r_hat = implicit_rewards.double()
    better, tied = _better(rewards, valid)
    correct = (better & (r_hat[:, :, None] > r_hat[:, None, :])).sum().item()
    return _result(correct, int(better.sum()), int(tied.sum()))


def _check_preference_probs(preference_probs, B: int, eps: float) -> torch.Tensor:
    if not (isinstance(preference_probs, torch.Tensor) and preference_probs.shape in ((B,), (B, 1))):
        got = (
            shape_str(preference_probs)
            if isinstance(preference_probs, torch.Tensor)
            else type(preference_probs).__name__
        )
        raise ValueError(
            f"preference_probs: expected a tensor of shape [{B}] (P(y_w ≻ y_l) per pair), got {got}"
        )
    a = preference_probs.double().reshape(B)
    if not bool(((a >= 0) & (a <= 1)).all()):
        bad = torch.nonzero(~((a >= 0) & (a <= 1)))[0].item()
        raise ValueError(
            f"preference_probs: expected probabilities in [0, 1], got {a[bad].item()} at index {bad}"
        )
    return a.clamp(eps, 1 - eps) if eps > 0 else a


def idealized_log_ratio_margin(
    ref_logps: torch.Tensor,
    preference_probs: torch.Tensor,
    beta: float,
    *,
    lengths: torch.Tensor | None = None,
    eps: float = PAPER_EPS,
) -> torch.Tensor:
    """log π*(y_w|x) − log π*(y_l|x) of the perfectly optimised DPO / RLHF policy ``[B]`` (Theorem 3.1,
    Eq. 6): log μ(y_w|x) − log μ(y_l|x) + logit(α)/β, with α = P(y_w ≻ y_l) clipped to [ε, 1 − ε].

    ``eps`` defaults to the paper's ε = 0.001 (App. C.4), so α ∈ {0, 1} gives the finite
    ∓logit(0.001)/β = ∓6.9068/β instead of ±inf; ``eps=0`` (the default before) keeps α as given
    and returns ±inf there."""
    ref, a, beta = _idealized_inputs(ref_logps, preference_probs, beta, lengths, eps, clip=True)
    return ref[:, 0] - ref[:, 1] + torch.special.logit(a) / beta


def _idealized_inputs(ref_logps, preference_probs, beta, lengths, eps, *, clip: bool):
    check_tensor("ref_logps", ref_logps)
    if ref_logps.shape[-1] != 2 or ref_logps.shape[0] == 0:
        raise ValueError(f"ref_logps: expected shape [B, 2] (chosen in column 0), got {shape_str(ref_logps)}")
    beta = check_positive("beta", beta)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 0.5:
        raise ValueError(f"eps: expected a float in [0, 0.5), got {eps!r}")
    B = ref_logps.shape[0]
    a = _check_preference_probs(preference_probs, B, float(eps) if clip else 0.0)
    ref = ref_logps.double()
    if not bool(torch.isfinite(ref).all()):
        raise ValueError("ref_logps: expected finite values")
    if lengths is not None:
        ref = ref / _lengths(lengths, ref_logps, torch.ones_like(ref, dtype=torch.bool))
    return ref, a, beta


def _ranks_from_log_ratio(x: torch.Tensor, band: float) -> torch.Tensor:
    """The authors' ``_get_ranking_from_ratio`` on r = exp(x): +1 ([1, 2], column 0 first) if
    r ≥ 1 + band, 0 (tie, [1, 1]) if |r − 1| < band, −1 ([2, 1]) otherwise (r ≤ 1 − band)."""
    win = x >= math.log1p(band)
    tie = (x > math.log1p(-band)) & ~win
    return torch.where(win, 1, torch.where(tie, 0, -1))


def idealized_ranking_accuracy(
    ref_logps: torch.Tensor,
    preference_probs: torch.Tensor,
    beta: float,
    *,
    lengths: torch.Tensor | None = None,
    eps: float = PAPER_EPS,
    variant: str = "paper",
    tie_band: float | None = None,
) -> PairAccuracy:
    """Idealized ranking accuracy R* (Chen et al. 2024, Corollary 3.3, Eq. 3) of pairwise data.

    ``variant="paper"`` (the default), Eq. 3 in log form, strict ">" as in Eq. 3:

        R* = mean over pairs of 1[ log μ(y_w|x) − log μ(y_l|x) + logit(α)/β > 0 ]

    α = ``preference_probs`` ``[B]`` is the ground-truth (or rater-proportion) probability that the
    chosen response (column 0) is preferred, clipped to [ε, 1 − ε] with ``eps`` = ε; the default
    ε = 0.001 is the paper's (App. C.4, and ``eps = 1e-3`` in the authors'
    ``calculate_upper_bound_rlhf.py:32``). So α = 1 counts as correct only if the reference gap is
    above −logit(0.999)/β = −6.9068/β, and α = 0 as correct only if it is above +6.9068/β.
    ``eps=0`` restores the unclipped limit of Eq. 3 (α = 1 always correct, α = 0 never), the default
    before. With ``lengths`` ``[B, 2]`` the reference log-probs are length-normalised: the paper's R̃*.

    ``variant="authors"``: the authors' released code, ``RLHFMinimizerClient.compute_ranks``
    (``rlhf_minimizer_client.py:315-331``, ratios from ``_compute_likelihood_ratios_helper``, lines
    179-229), transcribed with a1 = α and a2 = 1 − α:

    - the data's ratio is e = α/(1 − α), or α/ε when 1 − α = 0 (lines 187 and 200; no clipping
      otherwise, and α = 0 gives e = 0);
    - the optimal policy's ratio is p = e^(1/β) · μ(y_w)/μ(y_l) (lines 203 and 218; Theorem 3.1);
    - each ratio r becomes a ranking with a RELATIVE tie band (``_get_ranking_from_ratio``, lines
      307-313): a tie if |r − 1| < ``tie_band`` (0.05 there), column 0 first if r ≥ 1 + ``tie_band``,
      column 1 first otherwise;
    - a pair is correct iff the two rankings are equal (``distance_lib.py:187-202``).

    So, unlike Eq. 3, the data's ranking comes from α itself (a pair with α < 1/2 expects column 1
    on top, and is right when the policy puts it there), a data ratio within 5% of 1 (α in
    (0.4872, 0.5122)) expects a TIE, and a policy ratio within 5% of 1 is a tie (wrong for a strict
    data ranking). The comparisons are done on log-ratios (log p = log(e)/β + Δ log μ), equal to the
    authors' ratio comparisons up to rounding at the band's edges. Not reproduced: (a) their
    non-length-normalised branch (lines 215-217) multiplies by the ratio of the two SUMMED
    LOG-probs, −n₁·log ppl₁ / (−n₂·log ppl₂), not by μ(y_w)/μ(y_l) (their length-normalised branch,
    line 212, uses the likelihood ratio ppl₂/ppl₁ = exp(Δ mean log-prob), as here with ``lengths``);
    ncakit uses the likelihood ratio of Theorem 3.1 in both cases; (b) their float64 overflow
    filter (lines 223-228 drop pairs whose p is inf, i.e. log p > 709.78); here those pairs are
    scored (p = +inf ranks column 0 first).

    Args:
        ref_logps: ``[B, 2]`` reference log-probs, chosen in column 0. beta: the DPO/RLHF β > 0.
        eps: ε ∈ [0, 0.5); default 0.001 (the paper's). ``variant="paper"`` clips α to [ε, 1 − ε];
            ``"authors"`` uses ε only as the authors do, in place of a zero 1 − α.
        variant: ``"paper"`` (default) or ``"authors"``.
        tie_band: the authors' relative tie band, default 0.05; only with ``variant="authors"``.
    """
    variant = _check_variant(variant)
    if variant == "paper":
        if tie_band is not None:
            raise ValueError("tie_band: only the authors' variant has a tie band; pass variant='authors'")
        margin = idealized_log_ratio_margin(ref_logps, preference_probs, beta, lengths=lengths, eps=eps)
        return _result(int((margin > 0).sum()), margin.shape[0], 0)
    band = AUTHORS_TIE_BAND if tie_band is None else tie_band
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 <= band < 1:
        raise ValueError(f"tie_band: expected a float in [0, 1), got {tie_band!r}")
    ref, a, beta = _idealized_inputs(ref_logps, preference_probs, beta, lengths, eps, clip=False)
    one_minus = 1.0 - a
    denominator = torch.where(one_minus > 0, one_minus, torch.full_like(a, float(eps)))
    log_e = torch.log(a) - torch.log(denominator)  # -inf at alpha = 0; +inf at alpha = 1 only if eps = 0
    log_p = log_e / beta + (ref[:, 0] - ref[:, 1])
    data_rank = _ranks_from_log_ratio(log_e, float(band))
    policy_rank = _ranks_from_log_ratio(log_p, float(band))
    return _result(int((data_rank == policy_rank).sum()), a.shape[0], 0)
