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
]


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


def ranking_accuracy(
    policy_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> PairAccuracy:
    """Ranking accuracy of a model (Chen et al. 2024, Def. 2.3 / Eq. 1; Def. A.8 / Eq. 11 for K > 2).

    For K = 2 (chosen in column 0, or the higher reward when ``rewards`` are given):
    1[log π_θ(y_w|x) ≥ log π_θ(y_l|x)] averaged over prompts — ties count as correct, as in Eq. (1).
    For K > 2 with ``rewards``: a prompt is correct iff the likelihood ranking agrees with the reward
    ranking on every pair (exact match, Eq. 11; with the same ≥ on likelihood ties); prompts whose
    valid rewards tie are skipped and counted in ``skipped_ties`` (Def. A.8 assumes a strict ranking).
    With ``lengths`` ``[B, K]`` the log-probs are divided by them: the paper's length-normalised R̃.

    Args:
        policy_logps: ``[B, K]`` summed sequence log-probs log π_θ(y|x) of the model being evaluated
            (pass the reference log-probs to get the reference model's ranking accuracy).
        rewards: ``[B, K]`` data rewards (optional for K = 2). mask: ``[B, K]`` bool.
    """
    valid = _check_inputs("policy_logps", policy_logps, rewards, mask)
    score = policy_logps.double()
    if lengths is not None:
        score = score / _lengths(lengths, policy_logps, valid)
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
    eps: float = 0.0,
) -> torch.Tensor:
    """log π*(y_w|x) − log π*(y_l|x) of the perfectly optimised DPO / RLHF policy ``[B]`` (Theorem 3.1,
    Eq. 6): log μ(y_w|x) − log μ(y_l|x) + logit(α)/β, with α = P(y_w ≻ y_l). ±inf where α ∈ {1, 0}
    (unless ``eps`` > 0 clips α to [ε, 1 − ε]; the paper used ε = 0.001, App. C.4)."""
    check_tensor("ref_logps", ref_logps)
    if ref_logps.shape[-1] != 2 or ref_logps.shape[0] == 0:
        raise ValueError(f"ref_logps: expected shape [B, 2] (chosen in column 0), got {shape_str(ref_logps)}")
    beta = check_positive("beta", beta)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 0.5:
        raise ValueError(f"eps: expected a float in [0, 0.5), got {eps!r}")
    B = ref_logps.shape[0]
    a = _check_preference_probs(preference_probs, B, float(eps))
    ref = ref_logps.double()
    if not bool(torch.isfinite(ref).all()):
        raise ValueError("ref_logps: expected finite values")
    if lengths is not None:
        ref = ref / _lengths(lengths, ref_logps, torch.ones_like(ref, dtype=torch.bool))
    return ref[:, 0] - ref[:, 1] + torch.special.logit(a) / beta


def idealized_ranking_accuracy(
    ref_logps: torch.Tensor,
    preference_probs: torch.Tensor,
    beta: float,
    *,
    lengths: torch.Tensor | None = None,
    eps: float = 0.0,
) -> PairAccuracy:
    """Idealized ranking accuracy R* (Chen et al. 2024, Corollary 3.3, Eq. 3) of pairwise data.

        R* = mean over pairs of 1[ log μ(y_w|x) − log μ(y_l|x) + logit(α)/β > 0 ]

    (Eq. 3 in log form; strict ">" as in Eq. 3). α = ``preference_probs`` ``[B]`` is the ground-truth
    (or rater-proportion) probability that the chosen response (column 0) is preferred; α = 1 always
    counts as correct and α = 0 never (the limit of Eq. 3; ``eps`` > 0 clips α to [ε, 1 − ε] instead,
    as the paper's App. C.4 does with ε = 0.001). With ``lengths`` ``[B, 2]`` the reference log-probs
    are length-normalised: the paper's R̃*.

    Args:
        ref_logps: ``[B, 2]`` reference log-probs, chosen in column 0. beta: the DPO/RLHF β > 0.
    """
    margin = idealized_log_ratio_margin(ref_logps, preference_probs, beta, lengths=lengths, eps=eps)
    return _result(int((margin > 0).sum()), margin.shape[0], 0)
