"""Alignment losses as pure functions of ``[B, K]`` sequence log-probabilities.

This module is the heart of ncakit: the toy bandits, the tutorials and ``scale/train.py`` all
call these same functions. Every loss has the signature::

    loss_fn(policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, **loss_kwargs) -> LossOutput

with

- ``policy_logps`` ``[B, K]``: log π_θ(y_k | x_b), the SUM of response-token log-probs (see
  :mod:`ncakit.logprobs`), for B prompts with K responses each;
- ``ref_logps`` ``[B, K]``: the same under the frozen reference μ = π_ref;
- ``rewards`` ``[B, K]``: scalar rewards r_k (K-way losses need them; the pairwise losses take
  K = 2 with the chosen response in column 0 and use rewards only to check that order). Rewards
  are labels: they are detached, so no gradient ever flows into them;
- ``mask`` ``[B, K]`` bool (optional): False marks padding responses of prompts that have fewer
  than K; every prompt needs at least 2 valid responses.

and returns a :class:`LossOutput` with the per-prompt ``loss`` ``[B]`` (callers take
``.loss.mean()``), the detached ``implicit_rewards`` r̂ = β·(log π_θ − log μ) ``[B, K]`` and the
soft labels ``weights`` ``[B, K]``. Formulas are cited by their names in MATH.md (Chen et al.,
"Noise Contrastive Alignment of Language Models with Explicit Rewards", NeurIPS 2024,
arXiv:2402.05369). Everything is computed in float32 (float64 stays float64), with
``logsigmoid`` / ``log_softmax`` / ``logsumexp`` so that |r̂| up to 1e4 gives finite values.

Each loss is registered at the bottom of this file with its :class:`ncakit.registry.LossSpec`
(kind, paper, label, colour, TRL name, aliases); :func:`ncakit.get_loss` looks them up by name.
The helpers a new loss needs are public here: :func:`log_ratios`, :func:`soft_labels`,
:func:`compute_dtype`, :func:`loss_output`, :func:`chosen_one_hot`, :func:`pairwise_setup`, and the
input checks of :mod:`ncakit.validation`.

Example::

    >>> import torch
    >>> from ncakit import get_loss
    >>> policy = torch.zeros(3, 4, requires_grad=True)   # policy == reference
    >>> out = get_loss("nca")(policy, torch.zeros(3, 4), torch.randn(3, 4), beta=0.1)
    >>> round(out.loss.mean().item(), 4)   # MATH.md anchor: NCA = 2 ln 2 at policy = reference
    1.3863
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ncakit.registry import LossSpec, register_loss
from ncakit.validation import check_loss_inputs, check_positive, check_real, shape_str

__all__ = [
    "LossOutput",
    "soft_labels",
    "log_ratios",
    "pairwise_to_k",
    "infonca",
    "nca",
    "dpo",
    "nca_pair",
    "biased_nca",
    "ipo",
    "label_smoothed_dpo",
    "robust_dpo",
    "hinge",
    "plackett_luce",
    "compute_dtype",
    "valid_mask",
    "loss_output",
    "chosen_one_hot",
    "pairwise_setup",
]


class LossOutput(NamedTuple):
    """What every loss returns.

    Attributes:
        loss: ``[B]`` per-prompt loss (differentiable); take ``.mean()`` for the batch loss.
        implicit_rewards: ``[B, K]`` r̂ = β·(log π_θ − log μ), detached; 0 where ``mask`` is False.
        weights: ``[B, K]`` the soft labels / target weights the loss used (rows sum to 1 over
            valid responses), detached; one-hot on column 0 for the pairwise losses.
    """

    loss: torch.Tensor
    implicit_rewards: torch.Tensor
    weights: torch.Tensor


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for float32/bf16/fp16 input (stable logsigmoid/logsumexp), float64 for float64 (the oracles)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def log_ratios(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """s = log π_θ − log μ ``[B, K]`` in the compute dtype, 0 where ``mask`` is False (MATH.md, notation)."""
    dtype = compute_dtype(policy_logps)
    s = policy_logps.to(dtype) - ref_logps.to(dtype)
    if mask is not None:
        # where() (not multiply) so that a NaN/inf in a padded slot cannot leak into values or grads.
        s = torch.where(mask, s, torch.zeros((), dtype=dtype, device=s.device))
    return s


def valid_mask(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` itself, or all-True ``[B, K]`` like ``t`` when there is none."""
    return mask if mask is not None else torch.ones_like(t, dtype=torch.bool)


def soft_labels(
    rewards: torch.Tensor,
    alpha: float = 1.0,
    mask: torch.Tensor | None = None,
    first_bonus: float = 0.0,
) -> torch.Tensor:
    """Soft labels w = softmax(r / α) over each prompt's valid responses (MATH.md, notation).

    Args:
        rewards: ``[B, K]`` scalar rewards.
        alpha: reward temperature α > 0; it DIVIDES the rewards, w = softmax(r / α). α → 0 gives
            one-hot labels on the best response; a large α gives uniform labels. It equals the
            authors' code's ``temperature_alpha`` (reward_trainer.py:456 divides the scores by it),
            so values from their code/yamls are copied as is (their 1e-4 is ``alpha=1e-4``). Their
            comment at reward_trainer.py:453 says temperature_alpha = 1 / (the paper's α): an α taken
            from the paper's text needs its reciprocal, ``alpha = 1 / α_paper`` (MATH.md, notation).
        mask: optional ``[B, K]`` bool; masked responses get weight 0.
        first_bonus: reward bonus added to column 0 before the division by α. The authors' code adds
            0.01 to the first (best-sorted) response's score so it wins ties and stays the one-hot
            target (reward_trainer.py:455-456); off (0) by default.

    Returns:
        ``[B, K]`` weights, each row summing to 1 over the valid responses, in float32/float64.
    """
    alpha = check_positive("alpha", alpha)
    first_bonus = check_real("first_bonus", first_bonus)
    dtype = compute_dtype(rewards)
    r = rewards.detach().to(dtype)  # labels: constants, never differentiated
    if first_bonus:
        r = r.clone()
        r[:, 0] = r[:, 0] + first_bonus
    logits = r / alpha
    if mask is not None:
        logits = torch.where(mask, logits, torch.full((), -math.inf, dtype=dtype, device=r.device))
    return torch.softmax(logits, dim=-1)


def loss_output(loss: torch.Tensor, s: torch.Tensor, beta: float, weights: torch.Tensor) -> LossOutput:
    """The :class:`LossOutput` of a loss: ``loss`` [B], r̂ = β·s and ``weights`` [B, K], both detached."""
    return LossOutput(loss=loss, implicit_rewards=(beta * s).detach(), weights=weights.detach())


def chosen_one_hot(s: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` labels of a pairwise loss: 1 on the chosen response (column 0), 0 on the rejected."""
    w = torch.zeros_like(s)
    w[:, 0] = 1.0
    return w


# --------------------------------------------------------------------------------------------
# K-way losses with explicit rewards (the paper's two)
# --------------------------------------------------------------------------------------------


def infonca(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    mask: torch.Tensor | None = None,
    first_bonus: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    """InfoNCA: K-way soft-label classification of the responses (Chen et al. 2024, MATH.md "InfoNCA").

        L = − Σ_i w_i · log softmax(r̂)_i,   r̂_i = β·(log π_θ(y_i|x) − log μ(y_i|x)),   w = softmax(r/α)

    The gradient w.r.t. r̂_i is p_i − w_i (p = softmax(r̂)): the coefficients sum to zero, so the loss
    cannot see a common shift of a prompt's log-ratios. K = 2 with one-hot labels is exactly DPO.

    Args:
        policy_logps, ref_logps, rewards: ``[B, K]``; mask: optional ``[B, K]`` bool.
        beta: β > 0, the KL-regularisation strength (implicit reward scale).
        alpha: α > 0, the reward temperature of the soft labels w = softmax(r / α): it divides the
            rewards, and equals the authors' ``temperature_alpha`` (reward_trainer.py:456); an α from
            the paper's text is 1 / this (their comment, reward_trainer.py:453). See
            :func:`soft_labels` and MATH.md, notation.
        first_bonus: tie-break bonus added to column 0's reward before the division (authors' code:
            +0.01 on the best answer, reward_trainer.py:455-456); default 0.
        validate: check shapes, dtypes and finiteness (up to five host syncs, see :func:`ncakit.validation.check_loss_inputs`); default True.

    Returns:
        :class:`LossOutput` with loss ``[B]``.
    """
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=True, pairwise=False, check_finite=True
        )
    beta = check_positive("beta", beta)
    s = log_ratios(policy_logps, ref_logps, mask)
    w = soft_labels(rewards, alpha, mask, first_bonus)
    logits = beta * s
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
    log_p = F.log_softmax(logits, dim=-1)
    if mask is not None:
        log_p = torch.where(mask, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    loss = -(w * log_p).sum(dim=-1)  # MATH.md InfoNCA: sum over K, no 1/K
    return loss_output(loss, s, beta, w)


def nca(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    mask: torch.Tensor | None = None,
    first_bonus: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    """NCA: one binary noise-contrastive task per response (Chen et al. 2024, MATH.md "NCA").

        L = − Σ_i w_i · log σ(r̂_i) − (1/K) · Σ_i log σ(−r̂_i),   w = softmax(r/α)

    The gradient w.r.t. r̂_i is −w_i·σ(−r̂_i) + σ(r̂_i)/K and depends on r̂_i alone, so each
    response is pulled toward its own absolute optimum r̂_i* = log(K·w_i): a response with
    w_i > 1/K ends above the reference likelihood. With a ``mask``, K is the number of valid
    responses of that prompt. K = 2 with one-hot labels is :func:`nca_pair`.

    Args: as :func:`infonca`; ``alpha`` divides the rewards, w = softmax(r / α), and equals the
    authors' ``temperature_alpha`` (reward_trainer.py:456; the paper's α is its reciprocal per their
    comment at :453), ``first_bonus`` is added to column 0's reward first (authors: 0.01).
    """
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=True, pairwise=False, check_finite=True
        )
    beta = check_positive("beta", beta)
    s = log_ratios(policy_logps, ref_logps, mask)
    w = soft_labels(rewards, alpha, mask, first_bonus)
    r_hat = beta * s
    if mask is None:
        k = torch.full((s.shape[0],), s.shape[1], dtype=s.dtype, device=s.device)
        neg = F.logsigmoid(-r_hat).sum(dim=-1)
    else:
        k = mask.sum(dim=-1).to(s.dtype)
        neg = torch.where(mask, F.logsigmoid(-r_hat), torch.zeros((), dtype=s.dtype, device=s.device)).sum(
            dim=-1
        )
    # w is 0 at masked slots, and r̂ there is 0 (finite), so the first sum needs no extra masking.
    loss = -(w * F.logsigmoid(r_hat)).sum(dim=-1) - neg / k  # MATH.md NCA
    return loss_output(loss, s, beta, w)


# --------------------------------------------------------------------------------------------
# Pairwise losses: K = 2, chosen in column 0 (h = r̂_w − r̂_l)
# --------------------------------------------------------------------------------------------


def pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate) -> tuple[float, torch.Tensor]:
    """What every pairwise loss does first: check the ``[B, 2]`` inputs (if ``validate``) and β, and
    return ``(beta, s)`` with s = log π_θ − log μ ``[B, 2]`` in the compute dtype."""
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=False, pairwise=True, check_finite=True
        )
    beta = check_positive("beta", beta)
    s = log_ratios(policy_logps, ref_logps)  # K = 2 and both valid: the mask cannot remove anything
    return beta, s


def dpo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """DPO (Rafailov et al. 2023; TRL ``"sigmoid"``): L = −log σ(r̂_w − r̂_l) (MATH.md, DPO family).

    Inputs are ``[B, 2]`` with the chosen response in column 0. Equals :func:`infonca` with K = 2
    and one-hot labels, and :func:`plackett_luce` with K = 2.
    """
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    h = beta * (s[:, 0] - s[:, 1])
    return loss_output(-F.logsigmoid(h), s, beta, chosen_one_hot(s))


def nca_pair(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """Pairwise NCA (Chen et al. 2024; TRL ``"nca_pair"``) (MATH.md, NCA with K = 2, one-hot):

    L = −log σ(r̂_w) − ½·log σ(−r̂_w) − ½·log σ(−r̂_l),   optimum r̂_w* = log 2.
    """
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    rw, rl = beta * s[:, 0], beta * s[:, 1]
    loss = -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    return loss_output(loss, s, beta, chosen_one_hot(s))


def biased_nca(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """The authors' "biasedNCA" (pairwise): L = −log σ(r̂_w) − log σ(−r̂_l) (MATH.md, NCA).

    Same formula as TRL's ``"bco_pair"`` (registered as an alias). Its optimum pushes r̂_w → +∞
    and r̂_l → −∞ (no finite optimum), unlike :func:`nca_pair`.
    """
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    loss = -F.logsigmoid(beta * s[:, 0]) - F.logsigmoid(-beta * s[:, 1])
    return loss_output(loss, s, beta, chosen_one_hot(s))


def ipo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """IPO (Azar et al. 2023, Eq. 17; TRL ``"ipo"``): L = (s_w − s_l − 1/(2β))² (MATH.md, DPO family).

    IPO is conventionally applied to length-AVERAGED log-probs. Either pass averaged log-probs
    (``ncakit.logprobs.sequence_logps(..., average=True)``), or pass summed log-probs together with
    ``lengths`` ``[B, 2]`` (response token counts) and the log-ratios are divided by them here,
    as TRL does. ``implicit_rewards`` are β times the log-ratios actually used.
    """
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor) or lengths.shape != s.shape:
            got = shape_str(lengths) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
            raise ValueError(f"lengths: expected a tensor of shape {shape_str(s)} (token counts), got {got}")
        if bool((lengths <= 0).any()):
            raise ValueError("lengths: expected positive token counts for every response")
        s = s / lengths.to(s.dtype)
    loss = (s[:, 0] - s[:, 1] - 1.0 / (2.0 * beta)) ** 2
    return loss_output(loss, s, beta, chosen_one_hot(s))


def label_smoothed_dpo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
    validate: bool = True,
) -> LossOutput:
    """Conservative DPO / label smoothing ε (Mitchell 2023; TRL ``"sigmoid"`` with ``label_smoothing``):

        L = −(1−ε)·log σ(h) − ε·log σ(−h),   h = r̂_w − r̂_l,   ε ∈ [0, 1]   (MATH.md, DPO family)

    ε = 0 is DPO.
    """
    eps = check_real("label_smoothing", label_smoothing, low=0.0, high=1.0)
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    h = beta * (s[:, 0] - s[:, 1])
    loss = -(1.0 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    return loss_output(loss, s, beta, chosen_one_hot(s))


def robust_dpo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
    validate: bool = True,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"; TRL ``"robust"``), flip rate ε ∈ [0, ½):

        L = [(1−ε)·(−log σ(h)) − ε·(−log σ(−h))] / (1 − 2ε)   (MATH.md, DPO family)

    An unbiased estimate of the clean DPO loss under label flips at rate ε. ε = 0 is DPO.
    """
    eps = check_real("label_smoothing", label_smoothing, low=0.0, high=0.5, high_inclusive=False)
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    h = beta * (s[:, 0] - s[:, 1])
    loss = ((1.0 - eps) * (-F.logsigmoid(h)) - eps * (-F.logsigmoid(-h))) / (1.0 - 2.0 * eps)
    return loss_output(loss, s, beta, chosen_one_hot(s))


def hinge(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """Hinge / SLiC (Zhao et al. 2023; TRL ``"hinge"``): L = max(0, 1 − h), h = r̂_w − r̂_l (MATH.md)."""
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    h = beta * (s[:, 0] - s[:, 1])
    return loss_output(torch.relu(1.0 - h), s, beta, chosen_one_hot(s))


# --------------------------------------------------------------------------------------------
# Listwise
# --------------------------------------------------------------------------------------------


def plackett_luce(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """Listwise Plackett–Luce (DPO paper, App. A.3; PRO; LiPO) (MATH.md, DPO family).

    Orders each prompt's valid responses by reward, best first (ties keep column order), then

        L = − Σ_{k=1}^{K−1} log [ exp(r̂_(k)) / Σ_{j≥k} exp(r̂_(j)) ].

    At policy = reference L = ln K!; K = 2 is DPO. ``weights`` are one-hot on the best response.
    ``alpha`` is accepted (and checked) so every K-way reward loss takes the same call; the ranking,
    and so the loss, does not depend on it (elsewhere ``alpha`` divides the rewards, w = softmax(r / α),
    as the authors' ``temperature_alpha``: see :func:`soft_labels`).
    """
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=True, pairwise=False, check_finite=True
        )
    beta = check_positive("beta", beta)
    check_positive("alpha", alpha)
    s = log_ratios(policy_logps, ref_logps, mask)
    B, K = s.shape
    dtype = s.dtype
    r = rewards.detach().to(dtype)
    valid = mask if mask is not None else torch.ones_like(s, dtype=torch.bool)
    sort_key = torch.where(valid, r, torch.full((), -math.inf, dtype=dtype, device=r.device))
    order = torch.sort(sort_key, dim=-1, descending=True, stable=True).indices
    r_hat_sorted = torch.gather(beta * s, 1, order)
    valid_sorted = torch.gather(valid, 1, order)  # valid entries first, padding last
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=s.device)
    masked = torch.where(valid_sorted, r_hat_sorted, neg_inf)
    # log Σ_{j ≥ k} exp(r̂_(j)): a reverse cumulative logsumexp.
    tail_lse = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
    n_valid = valid.sum(dim=-1, keepdim=True)
    positions = torch.arange(K, device=s.device).unsqueeze(0)
    use = positions < (n_valid - 1)  # the last valid position's term is log 1 = 0: skip it
    terms = torch.where(
        use,
        r_hat_sorted - torch.where(use, tail_lse, torch.zeros((), dtype=dtype, device=s.device)),
        torch.zeros((), dtype=dtype, device=s.device),
    )
    loss = -terms.sum(dim=-1)
    best = torch.zeros_like(s).scatter_(1, order[:, :1], 1.0)
    return loss_output(loss, s, beta, best)


# --------------------------------------------------------------------------------------------
# Pairwise <-> K-way
# --------------------------------------------------------------------------------------------


def pairwise_to_k(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Stack pairwise ``[B]`` tensors (chosen, rejected) into the ``[B, 2]`` K-way form, chosen first.

    Use it for log-probs, reference log-probs and (optionally) rewards alike::

        out = dpo(pairwise_to_k(pc, pr), pairwise_to_k(rc, rr), beta=0.1)
    """
    for name, t in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of shape [B], got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name}: expected shape [B], got {shape_str(t)}")
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"rejected: expected the same shape as chosen {shape_str(chosen)}, got {shape_str(rejected)}"
        )
    return torch.stack([chosen, rejected], dim=1)


# --------------------------------------------------------------------------------------------
# Registry entries (ncakit.registry): every fact about each loss, in one place
# --------------------------------------------------------------------------------------------

_CHEN = "Chen et al. 2024, arXiv:2402.05369"
# Colours: Okabe & Ito 2008 (colour-blind safe) for the losses the project discusses most, chosen so
# the ones that share a panel stay apart under every common colour-vision deficiency: DPO vermillion,
# InfoNCA reddish purple (orange and vermillion are one hue to a deuteranope), NCA blue, pairwise NCA
# sky blue (tests/test_toy_demo.py measures the distances).
for _spec in (
    LossSpec("infonca", infonca, "k-way", True, _CHEN, "InfoNCA", "#CC79A7"),  # reddish purple
    LossSpec("nca", nca, "k-way", True, _CHEN, "NCA", "#0072B2"),  # blue
    LossSpec(
        "plackett_luce",
        plackett_luce,
        "k-way",
        True,
        "Rafailov et al. 2023 App. A.3; Song et al. 2023 (PRO)",
        "Plackett–Luce",
        "#E69F00",  # orange (InfoNCA's K-way neighbour)
        aliases=("pl",),
    ),
    LossSpec(
        "dpo",
        dpo,
        "pairwise",
        False,
        "Rafailov et al. 2023, arXiv:2305.18290",
        "DPO",
        "#D55E00",  # vermillion
        trl_name="sigmoid",
        aliases=("sigmoid",),
    ),
    LossSpec(
        "nca_pair",
        nca_pair,
        "pairwise",
        False,
        _CHEN,
        "NCA (pairwise)",
        "#56B4E9",  # sky blue
        trl_name="nca_pair",
    ),
    LossSpec(
        "biased_nca",
        biased_nca,
        "pairwise",
        False,
        "Chen et al. 2024 (authors' code)",
        "biased NCA",
        "#332288",  # indigo
        trl_name="bco_pair",
        aliases=("bco_pair",),
    ),
    LossSpec(
        "ipo",
        ipo,
        "pairwise",
        False,
        "Azar et al. 2023, arXiv:2310.12036",
        "IPO",
        "#009E73",  # bluish green
        trl_name="ipo",
    ),
    LossSpec(
        "label_smoothed_dpo",
        label_smoothed_dpo,
        "pairwise",
        False,
        "Mitchell 2023 (cDPO note)",
        "cDPO",
        "#AA4499",  # purple
        trl_name="sigmoid + label_smoothing",
        aliases=("cdpo",),
    ),
    LossSpec(
        "robust_dpo",
        robust_dpo,
        "pairwise",
        False,
        "Chowdhury et al. 2024, arXiv:2403.00409",
        "robust DPO",
        "#999933",  # olive
        trl_name="robust",
        aliases=("robust",),
    ),
    LossSpec(
        "hinge",
        hinge,
        "pairwise",
        False,
        "Zhao et al. 2023 (SLiC), arXiv:2305.10425",
        "hinge (SLiC)",
        "#882255",  # wine
        trl_name="hinge",
        aliases=("slic",),
    ),
):
    register_loss(_spec)
