"""The preference-loss zoo: related papers' objectives as pure functions of the same ``[B, K]`` tensors.

Importing this module registers every loss below, and the variants of :mod:`ncakit.variants` it
trains, in :mod:`ncakit.registry` (``get_loss``, ``loss_spec``), so a config string, a notebook and a bandit loop reach
them exactly like the core losses. Every loss keeps the core signature::

    fn(policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, validate=True, **kw) -> LossOutput

with ``[B, K]`` inputs, per-prompt ``loss`` ``[B]``, ``implicit_rewards`` ``[B, K]`` and ``weights``
``[B, K]`` (see :class:`ncakit.losses.LossOutput`). Two conventions make one uniform call work for
every registered loss (what a bandit looping over the registry needs):

- ``rewards`` are always the data's scalar rewards (pairwise losses: chosen first), and every K-way
  loss here accepts the reward temperature ``alpha`` of the core (``soft_labels``): SPPO turns
  rewards into win probabilities with it (σ((r_k − r_j)/α)), PRO divides its reward gaps by it, the
  LSC variants pass it to NCA/InfoNCA. (SPPO also takes win probabilities directly: call it without
  ``alpha``.) In every case ``alpha`` divides the rewards (w = softmax(r/α) in NCA/InfoNCA); it
  equals the authors' code's ``temperature_alpha`` (thu-ml/Noise-Contrastive-Alignment,
  ``reward_trainer.py:456`` divides the scores by it), and the authors' own comment at
  ``reward_trainer.py:453`` says temperature_alpha = 1/(the paper's α) — so a value copied from
  the NCA paper's text may need its reciprocal.
  Below, "ncakit's α" means this ``alpha``.
- ``implicit_rewards`` are ALWAYS β·(log π_θ − log μ) of the log-probs passed, even where a loss
  scores something else (f'(π/μ), reference-free log-probs, log-odds), so that metrics and ranking
  accuracy compare every loss on the same quantity. ``ncakit.variants.f_divergence_scores`` gives f'(π/μ).

==========================  ===================================================================
``sppo`` (``sppo_hard``)    Σ_k (s_k − (P̂_k − ½)/β)²; TRL ``sppo_hard`` is K = 2, P̂ = (1, 0)
``f_dpo``                   −log σ(β·(f'(π_w/μ_w) − f'(π_l/μ_l))), ``divergence=`` as in TRL
``f_dpo_forward_kl``        ``f_dpo`` with forward KL: f'(u) = 1 − 1/u
``f_dpo_js``                ``f_dpo`` with Jensen–Shannon: f'(u) = log(2u/(1 + u))
``f_dpo_alpha``             ``f_dpo`` with the α-divergence, coef 0.5: f'(u) = (u^(c−1) − 1)/(c − 1)
``dpop``                    −log σ(β·(s_w − s_l − λ·max(0, −s_w)))
``pro``                     Plackett–Luce over the K ranked responses with reward-gap temperatures
                            (+ SFT term); reference-free length-normalised scores by default
``asft``                    −ℓ_w + λ·[−log σ(β·odds_w) − log σ(−β·odds_l)], odds = log(P/(1 − P))
``cpl``                     −log σ(β·(log π_w − λ·log π_l)) (+ BC term); reference-free
``nca_lsc``/``infonca_lsc`` NCA / InfoNCA on log-sigmoid-centred rewards u = log σ(r − r_ref)
==========================  ===================================================================

:func:`ncakit.variants.with_f_divergence` turns ANY reference-based registered loss (pairwise or K-way: ``nca``,
``infonca``, ``hinge``, ``ipo`` ...) into its f-divergence version, and :func:`ncakit.variants.with_reward_transform`
does the same for the LSC reward transform. Notation follows MATH.md ("Notation"): s = log π_θ − log μ,
r̂ = β·s.

Where a paper leaves a choice open, the docstring says what was chosen and why. Formulas follow
the authors' released code where it exists (SPPO, f-DPO, PRO, CPL) and TRL 1.16 (``sppo_hard``, the
f-divergences); an objective is named by its paper's section or algorithm, and an equation number is
quoted only with its source (e.g. TRL's comment for SPPO).

Example::

    >>> import torch, ncakit.zoo
    >>> from ncakit import get_loss
    >>> ref = torch.randn(3, 2, dtype=torch.float64)
    >>> out = get_loss("f_dpo")(ref.clone(), ref, beta=0.1, divergence="js_divergence")
    >>> round(out.loss.mean().item(), 4)   # every f'(1) = 0: at policy = reference f-DPO = ln 2
    0.6931
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ncakit.losses import (
    LossOutput,
    chosen_one_hot,
    compute_dtype,
    log_ratios,
    loss_output,
    pairwise_setup,
    valid_mask,
)
from ncakit.registry import LOSS_SPECS, LossSpec, register_loss
from ncakit.validation import (
    check_bool,
    check_loss_inputs,
    check_positive,
    check_real,
    check_tensor,
    shape_str,
)
from ncakit.variants import f_dpo, f_dpo_with, with_reward_transform

__all__ = [
    "ZOO_LOSSES",
    "sppo",
    "win_rates",
    "dpop",
    "pro",
    "asft",
    "cpl",
]

LossFn = Callable[..., LossOutput]


# --------------------------------------------------------------------------------------------
# Argument checks (the core's tensor checks are reused through _validate / _check_tensor)
# --------------------------------------------------------------------------------------------


def _check_lengths(lengths, s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
    """Response token counts ``[B, K]`` in the compute dtype (1 at padded slots), or None."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor) or lengths.shape != s.shape:
        got = shape_str(lengths) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(
            f"lengths: expected a tensor of shape {shape_str(s)} (response token counts), got {got}"
        )
    if bool(((lengths <= 0) & valid).any()):
        raise ValueError("lengths: expected positive token counts for every valid response")
    one = torch.ones((), dtype=s.dtype, device=s.device)
    return torch.where(valid, lengths.to(s.dtype), one)


def _zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=t.dtype, device=t.device)


# --------------------------------------------------------------------------------------------
# SPPO
# --------------------------------------------------------------------------------------------


def win_rates(rewards: torch.Tensor, alpha: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SPPO's win-rate estimate P̂(y_k ≻ π | x) from scalar rewards under Bradley–Terry ``[B, K]``.

        P̂_k = (1/K) Σ_j σ((r_k − r_j)/α)        (j over the prompt's valid responses, j = k included)

    This is the SPPO authors' estimator (``scripts/compute_prob.py`` of uclaml/SPPO: the mean over
    the K sampled responses of P(y_k ≻ y_j) = σ(score_k − score_j), diagonal ½ included), with the
    reward temperature α of ncakit dividing the rewards (module docstring; α = 1 is the SPPO
    authors' estimator). Masked slots get 0.

    Args:
        rewards: ``[B, K]`` scalar rewards. alpha: α > 0. mask: optional ``[B, K]`` bool.
    """
    check_tensor("rewards", rewards)
    alpha = check_positive("alpha", alpha)
    dtype = compute_dtype(rewards)
    valid = valid_mask(rewards, mask)
    r = torch.where(valid, rewards.detach().to(dtype), torch.zeros((), dtype=dtype, device=rewards.device))
    pairwise = torch.sigmoid((r[:, :, None] - r[:, None, :]) / alpha)  # [B, K, K]: P(y_i ≻ y_j)
    pairwise = pairwise * valid[:, None, :]
    n = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(dtype)
    return torch.where(valid, pairwise.sum(dim=-1) / n, torch.zeros((), dtype=dtype, device=r.device))


def sppo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization", arXiv:2405.00675), K-way.

    The square loss of Algorithm 1's update (the equation TRL 1.16 cites as "Eq. 4.7"), with
    η = 1/β and the current policy π_t in the role of the reference μ:

        L = Σ_k ( s_k − (P̂(y_k ≻ π | x) − ½)/β )²,     s_k = log π_θ(y_k|x) − log μ(y_k|x)

    summed over the prompt's valid responses. Each response regresses independently onto its own
    target, so the optimum is s_k* = (P̂_k − ½)/β: responses that win more than half their duels end
    ABOVE the reference likelihood (like NCA, MATH.md "NCA"; unlike DPO/InfoNCA).
    ``policy_logps``, ``ref_logps`` ``[B, K]``; ``mask`` optional ``[B, K]`` bool.

    ``rewards`` ``[B, K]`` are the win probabilities P̂ ∈ [0, 1] when ``alpha`` is None (e.g. PairRM
    estimates); with ``alpha`` they are scalar rewards turned into P̂ by :func:`win_rates` (the
    authors' estimator), which is what a loop calling every K-way loss with ``(rewards, alpha)`` gets.
    Without rewards and K = 2 the labels are hard, P̂ = (1, 0) with the chosen response in column 0:
    that is exactly TRL's ``sppo_hard`` (registered as an alias),

        (s_w − 1/(2β))² + (s_l + 1/(2β))².

    Choice: the K terms are SUMMED (TRL's ``sppo_hard``); the authors' trainer averages the pair
    ((loss_w + loss_l)/2), a factor ½ that only rescales the learning rate.

    Returns :class:`LossOutput`: loss ``[B]``; ``weights`` are P̂ normalised over each prompt's valid
    responses (uniform if they sum to 0).
    """
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=False, pairwise=False, check_finite=True
        )
    beta = check_positive("beta", beta)
    s = log_ratios(policy_logps, ref_logps, mask)
    valid = valid_mask(s, mask)
    if rewards is None:
        if s.shape[1] != 2:
            raise ValueError(
                f"rewards: sppo needs win probabilities (or scalar rewards with alpha) of shape {shape_str(s)}; "
                "without rewards only K = 2 hard labels (chosen first, TRL's sppo_hard) are defined"
            )
        if alpha is not None:
            raise ValueError("alpha: converts scalar rewards into win probabilities, but rewards is None")
        p = torch.zeros_like(s)
        p[:, 0] = 1.0
    elif alpha is None:
        p = torch.where(valid, rewards.detach().to(s.dtype), _zero(s))
        if validate and bool(((p < 0) | (p > 1)).any()):
            bad = torch.nonzero((p < 0) | (p > 1))[0].tolist()
            raise ValueError(
                f"rewards: sppo expects win probabilities in [0, 1] (or pass alpha=... to convert scalar "
                f"rewards by Bradley-Terry), got {p[tuple(bad)].item()} at [b, k] = {bad}"
            )
    else:
        p = win_rates(rewards, alpha, mask).to(s.dtype)
    target = (p - 0.5) / beta
    loss = torch.where(valid, (s - target) ** 2, _zero(s)).sum(dim=-1)
    total = p.sum(dim=-1, keepdim=True)
    uniform = valid.to(s.dtype) / valid.sum(dim=-1, keepdim=True).to(s.dtype)
    weights = torch.where(total > 0, p / total.clamp(min=torch.finfo(s.dtype).tiny), uniform)
    return loss_output(loss, s, beta, weights)


# --------------------------------------------------------------------------------------------
# DPOP (Smaug)
# --------------------------------------------------------------------------------------------


def dpop(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    dpop_lambda: float = 50.0,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """DPO-Positive (Pal et al. 2024, "Smaug", arXiv:2402.13228), pairwise ``[B, 2]``, chosen first:

        L = −log σ( β·( s_w − s_l − λ·max(0, log μ(y_w|x) − log π_θ(y_w|x)) ) )
          = −log σ( β·( s_w − s_l − λ·max(0, −s_w) ) )

    The penalty switches on only when the chosen response falls below its reference likelihood
    (s_w < 0), which is the failure mode of DPO the paper targets (MATH.md, "What a toy bandit needs":
    Pal et al.). λ = 0 is DPO. Default λ = 50: Smaug tests λ ∈ {5, 50, 500} (Sec. 5.2) and uses 50.
    """
    lam = check_real("dpop_lambda", dpop_lambda, low=0.0)
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    h = beta * (s[:, 0] - s[:, 1] - lam * torch.relu(-s[:, 0]))
    return loss_output(-F.logsigmoid(h), s, beta, chosen_one_hot(s))


# --------------------------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------------------------


def pro(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    mask: torch.Tensor | None = None,
    temperature: bool = True,
    sft_weight: float = 0.05,
    reference_free: bool = True,
    lengths: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """PRO, Preference Ranking Optimization (Song et al. 2023, arXiv:2306.17492), K-way ``[B, K]``.

    Orders each prompt's valid responses by reward, best first (ties keep column order), and sums a
    Plackett–Luce term per position k = 1..n−1 with reward-gap temperatures (MATH.md, DPO family:
    listwise Plackett–Luce), as in the authors' ``PRO/train/utils/process_manager.py``:

        L_PRO = Σ_k [ log( exp(T_kk·c_k) + Σ_{j>k} exp(T_kj·c_j) ) − T_kk·c_k ]
        T_kj  = (r_k − r_j)/α  (j > k),    T_kk = max_{j>k} T_kj
        L     = L_PRO + sft_weight·(n − 1)²·(−log π_θ(y_best|x))

    The code's multipliers T are the reciprocals of the paper's temperatures 𝒯 = 1/(r_k − r_j);
    ``alpha`` (ncakit's reward temperature, see the module docstring; 1 = the PRO paper) divides the
    reward gaps; the code's 1e-10
    inside the log is dropped (logsumexp). Scores c:

    - ``reference_free=True`` (the paper): c = log π_θ(y|x) / |y|, the length-normalised log-prob —
      pass ``lengths`` ``[B, K]`` with summed log-probs, or pass averaged log-probs and no lengths.
      β then only scales ``implicit_rewards``; ``ref_logps`` only enter ``implicit_rewards``.
    - ``reference_free=False`` (ncakit's option): c = β·s (divided by ``lengths`` if given). With
      ``temperature=False`` (all T = 1) and ``sft_weight=0`` this is ``plackett_luce``, and with K = 2
      exactly DPO.

    The SFT term follows the code: the SUMMED log-prob of the best response (``policy_logps`` as
    passed, not divided by ``lengths``) scaled by sft_weight·(n − 1)². Default sft_weight = 0.05 (the
    released HH-RLHF run; the argparse default is 2); 0 drops the term.

    Returns :class:`LossOutput` with loss ``[B]``; ``weights`` one-hot on the best response.
    """
    if validate:
        check_loss_inputs(
            policy_logps, ref_logps, rewards, mask, need_rewards=True, pairwise=False, check_finite=True
        )
    beta = check_positive("beta", beta)
    alpha = check_positive("alpha", alpha)
    sft_weight = check_real("sft_weight", sft_weight, low=0.0)
    temperature = check_bool("temperature", temperature)
    reference_free = check_bool("reference_free", reference_free)
    s = log_ratios(policy_logps, ref_logps, mask)
    B, K = s.shape
    dtype = s.dtype
    valid = valid_mask(s, mask)
    lens = _check_lengths(lengths, s, valid)
    logp = torch.where(valid, policy_logps.to(dtype), _zero(s))
    if reference_free:
        score = logp if lens is None else logp / lens
    else:
        score = beta * (s if lens is None else s / lens)
    r = torch.where(valid, rewards.detach().to(dtype), _zero(s)) / alpha
    sort_key = torch.where(valid, r, torch.full((), -math.inf, dtype=dtype, device=s.device))
    order = torch.sort(sort_key, dim=-1, descending=True, stable=True).indices
    c = torch.gather(score, 1, order)
    r_sorted = torch.gather(r, 1, order)
    v = torch.gather(valid, 1, order)  # valid responses first
    later = torch.ones(K, K, dtype=torch.bool, device=s.device).triu(diagonal=1)
    pair = later & v[:, None, :] & v[:, :, None]  # [B, K, K]: valid j ranked below valid k
    used = pair.any(dim=-1)  # positions k with at least one response below them
    if temperature:
        gap = r_sorted[:, :, None] - r_sorted[:, None, :]
        neg_t = torch.where(pair, gap, _zero(s))
        pos_t = torch.where(pair, gap, torch.full((), -math.inf, dtype=dtype, device=s.device)).amax(dim=-1)
        pos_t = torch.where(used, pos_t, _zero(s))
    else:
        neg_t = pair.to(dtype)
        pos_t = torch.ones_like(c)
    pos_logit = pos_t * c  # [B, K]
    neg_logits = torch.where(
        pair, neg_t * c[:, None, :], torch.full((), -math.inf, dtype=dtype, device=s.device)
    )
    lse = torch.logsumexp(torch.cat([pos_logit[:, :, None], neg_logits], dim=-1), dim=-1)
    loss = torch.where(used, lse - pos_logit, _zero(s)).sum(dim=-1)
    if sft_weight > 0:
        n = v.sum(dim=-1).to(dtype)
        best_logp = torch.gather(logp, 1, order[:, :1]).squeeze(1)
        loss = loss + sft_weight * (n - 1) ** 2 * (-best_logp)
    best = torch.zeros_like(s).scatter_(1, order[:, :1], 1.0)
    return loss_output(loss, s, beta, best)


# --------------------------------------------------------------------------------------------
# Reference-free pairwise: ASFT, CPL
# --------------------------------------------------------------------------------------------


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate at both ends (Mächler 2012); each branch only ever sees
    inputs where it is finite, so a where() cannot route an inf/NaN gradient."""
    near = x > -math.log(2.0)
    x_near = torch.where(near, x, torch.full_like(x, -1.0))
    x_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def asft(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    align_weight: float = 0.1,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """ASFT, Aligned SFT through absolute likelihood (Wang et al. 2024, arXiv:2409.10571), pairwise
    ``[B, 2]``, chosen first, reference-free (``ref_logps`` only enter ``implicit_rewards``):

        L = −ℓ_w + λ·[ −log σ(β·o_w) − log σ(−β·o_l) ],    o = log( P/(1 − P) ),   P = exp(ℓ)

    ℓ is the length-normalised log-prob (ORPO's P_θ(y|x), which ASFT adopts): pass summed log-probs
    with ``lengths`` ``[B, 2]``, or averaged log-probs without. The first term is the SFT loss (the
    token-mean NLL of the chosen response), the bracket is a binary cross-entropy on each response's
    ABSOLUTE log-odds (no Bradley–Terry difference, no reference). With β = 1 (the default: the paper
    has no β) σ(o) = P and the bracket is −log P_w − log(1 − P_l).

    Choices: the form follows the restatement of ASFT in Gorbatovski et al. 2025 ("The Differences
    Between Direct Alignment Algorithms are a Blur", arXiv:2502.01237), which also introduces the β
    scaling of the odds; λ = ``align_weight`` defaults to 0.1 (ORPO's λ). Log-probs must be ≤ 0.
    """
    lam = check_real("align_weight", align_weight, low=0.0)
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    valid = valid_mask(s, None)
    lens = _check_lengths(lengths, s, valid)
    ell = policy_logps.to(s.dtype)
    if lens is not None:
        ell = ell / lens
    if validate and bool((ell > 0).any()):
        raise ValueError(
            f"policy_logps: asft needs log-probabilities <= 0 (P = exp(logp) <= 1), got max {ell.max().item()}"
        )
    log_odds = ell - _log1mexp(ell)
    align = -F.logsigmoid(beta * log_odds[:, 0]) - F.logsigmoid(-beta * log_odds[:, 1])
    loss = -ell[:, 0] + lam * align
    return loss_output(loss, s, beta, chosen_one_hot(s))


def cpl(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    contrastive_bias: float = 0.5,
    bc_weight: float = 0.0,
    bc_reduction: str = "sum",
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """CPL, Contrastive Preference Learning (Hejna et al. 2023, arXiv:2310.13639), pairwise ``[B, 2]``,
    chosen first, reference-free (``ref_logps`` only enter ``implicit_rewards``):

        L = −log σ( β·log π_θ(y_w|x) − λ·β·log π_θ(y_l|x) ) + bc_weight·BC,   BC = −log π_θ(y_w|x)

    CPL's segment score is α·Σ_t γ^t log π(a_t|s_t); at the sequence level (γ = 1) that is α times
    the summed log-prob, with β in the role of CPL's α (the released configs use α = 0.1, ncakit's
    default β). λ = ``contrastive_bias`` ∈ (0, 1] is the conservative bias of CPL(λ) on the
    dispreferred segment (released configs: 0.5, the default here; λ = 1 is reference-free DPO). The
    form is the authors' ``biased_bce_with_logits`` (jhejna/cpl, ``research/algs/cpl.py``). Their
    optional BC regulariser is offered on the chosen response (their ``bc_data="pos"``; their
    default ``"all"`` regularises both segments), off by default (``bc_weight=0``, their
    ``bc_coeff`` default 0.0).

    ``bc_reduction`` chooses how BC reduces the chosen response's per-token log-probs:
    ``"sum"`` (default) BC = −log π_θ(y_w|x), the summed log-prob the loss receives;
    ``"token_mean"`` BC = −log π_θ(y_w|x)/|y_w|, the per-step mean, as CPL's authors compute it
    (``research/algs/cpl.py:112-117``: ``bc_loss = (-lp_pos).mean()`` over the ``(B, S)`` per-step
    log-probs of fixed-length segments; the CPL term itself uses the SUM over steps,
    ``segment_adv = adv.sum(dim=-1)``, line 121, as here). ``"token_mean"`` needs ``lengths``
    ``[B, 2]`` (the response token counts; only column 0 is used). With variable lengths ncakit
    averages per response and then over prompts, which equals the authors' mean over all steps of
    the batch when the lengths are equal (their segments are). The default stays ``"sum"``: the BC
    term is off by default, ``"sum"`` needs no ``lengths``, and earlier results keep their meaning;
    use ``"token_mean"`` (with ``lengths``) to match the authors' scale of ``bc_coeff``.
    """
    lam = check_real("contrastive_bias", contrastive_bias, low=0.0, low_inclusive=False, high=1.0)
    bc = check_real("bc_weight", bc_weight, low=0.0)
    if bc_reduction not in ("sum", "token_mean"):
        raise ValueError(f"bc_reduction: expected 'sum' or 'token_mean', got {bc_reduction!r}")
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    lens = _check_lengths(lengths, s, valid_mask(s, None))
    if bc_reduction == "token_mean" and lens is None:
        raise ValueError(
            "lengths: bc_reduction='token_mean' divides the chosen log-prob by its token count; pass "
            "lengths [B, 2]"
        )
    lp = policy_logps.to(s.dtype)
    loss = -F.logsigmoid(beta * (lp[:, 0] - lam * lp[:, 1]))
    if bc > 0:
        nll = -lp[:, 0]
        loss = loss + bc * (nll / lens[:, 0] if bc_reduction == "token_mean" else nll)
    return loss_output(loss, s, beta, chosen_one_hot(s))


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------

_F_DPO_PAPER = "Wang et al. 2023 (f-DPO, Beyond Reverse KL), arXiv:2309.16240"
_LSC_PAPER = "Chen et al. 2024 (arXiv:2402.05369) + Wang et al. 2024 LSC reward transform (arXiv:2402.00742)"

# Colours from Paul Tol's palettes: warm for the DPO variants, cool for the NCA-like ones.
_ZOO: tuple[LossSpec, ...] = (
    LossSpec(
        "sppo",
        sppo,
        "k-way",
        True,
        "Wu et al. 2024 (SPPO), arXiv:2405.00675",
        "SPPO",
        "#117733",  # green
        trl_name="sppo_hard",
        aliases=("sppo_hard",),
    ),
    LossSpec(
        "f_dpo",
        f_dpo,
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO",
        "#CC6677",  # rose (Tol muted)
        trl_name="sigmoid + f_divergence_type",
    ),
    LossSpec(
        "f_dpo_forward_kl",
        f_dpo_with("forward_kl"),
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO (forward KL)",
        "#CC3311",  # red
        trl_name="sigmoid + f_divergence_type='forward_kl'",
    ),
    LossSpec(
        "f_dpo_js",
        f_dpo_with("js_divergence"),
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO (JS)",
        "#BB5566",  # rose
        trl_name="sigmoid + f_divergence_type='js_divergence'",
    ),
    LossSpec(
        "f_dpo_alpha",
        f_dpo_with("alpha_divergence", 0.5),
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO (α-div.)",
        "#EE8866",  # salmon
        trl_name="sigmoid + f_divergence_type='alpha_divergence', f_alpha_divergence_coef=0.5",
    ),
    LossSpec(
        "dpop",
        dpop,
        "pairwise",
        False,
        "Pal et al. 2024 (Smaug, DPO-Positive), arXiv:2402.13228",
        "DPOP",
        "#EE3377",  # magenta
    ),
    LossSpec(
        "pro",
        pro,
        "k-way",
        True,
        "Song et al. 2023 (PRO), arXiv:2306.17492",
        "PRO",
        "#DDCC77",  # sand
        reference_free=True,
    ),
    LossSpec(
        "asft",
        asft,
        "pairwise",
        False,
        "Wang et al. 2024 (ASFT), arXiv:2409.10571",
        "ASFT",
        "#44AA99",  # teal
        reference_free=True,
    ),
    LossSpec(
        "cpl",
        cpl,
        "pairwise",
        False,
        "Hejna et al. 2023 (CPL), arXiv:2310.13639",
        "CPL",
        "#997700",  # ochre
        reference_free=True,
    ),
    LossSpec(
        "nca_lsc",
        with_reward_transform("nca"),
        "k-way",
        True,
        _LSC_PAPER,
        "NCA (LSC rewards)",
        "#004488",  # dark blue
    ),
    LossSpec(
        "infonca_lsc",
        with_reward_transform("infonca"),
        "k-way",
        True,
        _LSC_PAPER,
        "InfoNCA (LSC rewards)",
        "#CCBB44",  # yellow
    ),
)

#: The names this module registers, in table order (what a zoo preset loops over).
ZOO_LOSSES: tuple[str, ...] = tuple(spec.name for spec in _ZOO)


def _register_all() -> None:
    for spec in _ZOO:
        existing = LOSS_SPECS.get(spec.name)
        if existing is not None and getattr(existing.fn, "__module__", None) in (__name__, "ncakit.variants"):
            continue  # importlib.reload(ncakit.zoo): already registered by this module
        register_loss(spec)


_register_all()
