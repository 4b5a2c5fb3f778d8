"""The preference-loss zoo: related papers' objectives as pure functions of the same ``[B, K]`` tensors.

Importing this module registers every loss below into the core registry of :mod:`ncakit.losses`
(:mod:`ncakit.registry`: ``get_loss``, ``loss_spec``), so a config string, a notebook and a bandit loop reach
them exactly like the core losses. Every loss keeps the core signature::

    fn(policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, validate=True, **kw) -> LossOutput

with ``[B, K]`` inputs, per-prompt ``loss`` ``[B]``, ``implicit_rewards`` ``[B, K]`` and ``weights``
``[B, K]`` (see :class:`ncakit.losses.LossOutput`). Two conventions make one uniform call work for
every registered loss (what a bandit looping over the registry needs):

- ``rewards`` are always the data's scalar rewards (pairwise losses: chosen first), and every K-way
  loss here accepts the reward temperature ``alpha`` of the core (``soft_labels``): SPPO turns
  rewards into win probabilities with it, PRO divides its reward gaps by it, the LSC variants pass
  it to NCA/InfoNCA. (SPPO also takes win probabilities directly: call it without ``alpha``.)
- ``implicit_rewards`` are ALWAYS β·(log π_θ − log μ) of the log-probs passed, even where a loss
  scores something else (f'(π/μ), reference-free log-probs, log-odds), so that metrics and ranking
  accuracy compare every loss on the same quantity. ``f_divergence_scores`` gives f'(π/μ).

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

:func:`with_f_divergence` turns ANY reference-based registered loss (pairwise or K-way: ``nca``,
``infonca``, ``hinge``, ``ipo`` ...) into its f-divergence version, and :func:`with_reward_transform`
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

import inspect
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
)
from ncakit.registry import LOSS_SPECS, LossSpec, loss_spec, register_loss
from ncakit.validation import (
    check_bool,
    check_loss_inputs,
    check_positive,
    check_real,
    check_tensor,
    shape_str,
)

__all__ = [
    "ZOO_LOSSES",
    "F_DIVERGENCES",
    "sppo",
    "win_rates",
    "f_divergence_scores",
    "with_f_divergence",
    "f_dpo",
    "dpop",
    "pro",
    "asft",
    "cpl",
    "transform_rewards",
    "with_reward_transform",
]

LossFn = Callable[..., LossOutput]

#: TRL 1.16's ``f_divergence_type`` names (DPOConfig), in its order.
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# TRL 1.16 clamps the exponent of the α-divergence at 80 for float32/bfloat16 (exp(80) ≈ 5.5e34 stays
# finite in float32). The same cap keeps forward KL's exp(−s) finite for very negative log-ratios;
# beyond it the score saturates and its gradient is zero (as in TRL).
_EXP_CAP = 80.0


# --------------------------------------------------------------------------------------------
# Argument checks (the core's tensor checks are reused through _validate / _check_tensor)
# --------------------------------------------------------------------------------------------


def _valid(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return mask if mask is not None else torch.ones_like(s, dtype=torch.bool)


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


def _resolve(loss) -> LossSpec:
    """The registry entry of a loss given by name or by function."""
    if isinstance(loss, str):
        return loss_spec(loss)
    if callable(loss):
        for spec in LOSS_SPECS.values():
            if spec.fn is loss:
                return spec
        raise ValueError(
            f"loss: {getattr(loss, '__name__', loss)!r} is not a registered loss function; register it with "
            "ncakit.registry.register_loss or pass a registered name"
        )
    raise TypeError(f"loss: expected a registered loss name or function, got {type(loss).__name__}")


def _with_signature(wrapper: LossFn, base: LossSpec) -> LossFn:
    """Give a ``**kwargs`` wrapper the explicit signature it really has: its own parameters plus the
    base loss's keywords, so the registry (and ``help()``) see every keyword it accepts."""
    own = inspect.signature(wrapper).parameters
    base_params = inspect.signature(base.fn).parameters
    params = [p for p in own.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [
        p for name, p in base_params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in own
    ]
    wrapper.__signature__ = inspect.Signature(params + extra, return_annotation=LossOutput)
    return wrapper


# --------------------------------------------------------------------------------------------
# SPPO
# --------------------------------------------------------------------------------------------


def win_rates(rewards: torch.Tensor, alpha: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SPPO's win-rate estimate P̂(y_k ≻ π | x) from scalar rewards under Bradley–Terry ``[B, K]``.

        P̂_k = (1/K) Σ_j σ((r_k − r_j)/α)        (j over the prompt's valid responses, j = k included)

    This is the SPPO authors' estimator (``scripts/compute_prob.py`` of uclaml/SPPO: the mean over
    the K sampled responses of P(y_k ≻ y_j) = σ(score_k − score_j), diagonal ½ included), with the
    reward temperature α of ncakit (α = 1 is theirs). Masked slots get 0.

    Args:
        rewards: ``[B, K]`` scalar rewards. alpha: α > 0. mask: optional ``[B, K]`` bool.
    """
    check_tensor("rewards", rewards)
    alpha = check_positive("alpha", alpha)
    dtype = compute_dtype(rewards)
    valid = _valid(rewards, mask)
    r = torch.where(valid, rewards.to(dtype), torch.zeros((), dtype=dtype, device=rewards.device))
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
    valid = _valid(s, mask)
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
        p = torch.where(valid, rewards.to(s.dtype), _zero(s))
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
# f-divergence DPO
# --------------------------------------------------------------------------------------------


def _check_divergence(divergence) -> str:
    if not isinstance(divergence, str):
        raise TypeError(f"divergence: expected one of {list(F_DIVERGENCES)}, got {type(divergence).__name__}")
    if divergence not in F_DIVERGENCES:
        raise ValueError(
            f"divergence: unknown f-divergence {divergence!r}; expected one of {list(F_DIVERGENCES)}"
        )
    return divergence


def f_divergence_scores(
    log_ratio: torch.Tensor, divergence: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> torch.Tensor:
    """f'(u) at u = π_θ/μ = exp(s), elementwise: the score f-DPO compares (Wang et al. 2023).

    The forms and names are TRL 1.16's (``DPOTrainer._compute_loss``, ``f_divergence_type``), all
    normalised so that f'(1) = 0 (policy = reference scores 0, which keeps the core's anchors):

    ====================  ====================================  ============================
    ``reverse_kl``        f'(u) = log u                         = s (DPO)
    ``forward_kl``        f'(u) = 1 − 1/u                       = 1 − exp(−s)
    ``js_divergence``     f'(u) = log(2u/(1 + u))               = log 2 + log σ(s)
    ``alpha_divergence``  f'(u) = (u^(c−1) − 1)/(c − 1)         = expm1((c−1)s)/(c−1); c → 1: s
    ====================  ====================================  ============================

    c = ``f_alpha_divergence_coef`` (TRL's name; default 0.5). Mapping to the paper: the f-DPO
    authors' code (alecwangcq/f-divergence-dpo, ``trainers.py``) scores −1/u (forward KL),
    log 2 − log(1 + 1/u) (JS, identical) and −u^(−a)/a (α-divergence, a ∈ (0, 1)); forward KL and α
    differ from TRL's by constants (1 and 1/a) that cancel in every pairwise difference (NOT in NCA,
    where f'(1) = 0 matters), and a = 1 − c (the two conventions agree at 0.5). The
    exponent is clamped at 80 as in TRL, so scores stay finite (and flat) for extreme log-ratios.

    Args:
        log_ratio: s = log π_θ − log μ, any shape. Returns: a tensor of the same shape.
    """
    divergence = _check_divergence(divergence)
    coef = check_real("f_alpha_divergence_coef", f_alpha_divergence_coef)
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return -torch.expm1(torch.clamp(-log_ratio, max=_EXP_CAP))
    if divergence == "js_divergence":
        return math.log(2.0) + F.logsigmoid(log_ratio)
    if abs(coef - 1.0) < 1e-6:  # the c → 1 limit is log u (TRL falls back to reverse KL the same way)
        return log_ratio
    return torch.expm1(torch.clamp((coef - 1.0) * log_ratio, max=_EXP_CAP)) / (coef - 1.0)


# Losses that score the policy's own log-probs (or need them raw): an f-transform of the log-ratio
# has no meaning for them.


def with_f_divergence(
    loss: str | LossFn, divergence: str = "reverse_kl", *, f_alpha_divergence_coef: float = 0.5
) -> LossFn:
    """The f-divergence version of a registered loss (Wang et al. 2023, "Beyond Reverse KL", f-DPO).

    f-DPO replaces DPO's implicit reward β·log(π/μ) by β·f'(π/μ) for the f-divergence regulariser
    D_f(π‖μ); for reverse KL f'(u) = log u and it is DPO. The returned function has the core
    signature and feeds the transformed log-ratio f'(π/μ) (:func:`f_divergence_scores`) into ``loss``
    in place of log π_θ − log μ, so the same transform reaches the pairwise losses (``dpo`` = f-DPO,
    ``hinge``, ``ipo`` — as TRL's ``f_divergence_type`` does) AND the K-way ones (``nca``,
    ``infonca``, ``plackett_luce``: an extension, not in the paper). The wrapped loss keeps its own
    keyword arguments (``alpha``, ``label_smoothing``, ``lengths`` ...); ``divergence`` and
    ``f_alpha_divergence_coef`` become call-time keywords whose defaults are the ones given here.

    ``implicit_rewards`` of the result are β·s (ncakit's convention), not β·f'(π/μ).

    Args:
        loss: a registered loss name or function, not a reference-free one (``asft``, ``cpl``, ``pro``).
        divergence: one of :data:`F_DIVERGENCES`. f_alpha_divergence_coef: c of the α-divergence.
    """
    base = _resolve(loss)
    if base.reference_free:
        raise ValueError(
            f"loss: {base.name!r} scores the policy's own log-probs (reference-free), so an f-transform of the "
            "log-ratio does not apply; use a reference-based loss (e.g. 'dpo', 'nca', 'infonca')"
        )
    default_divergence = _check_divergence(divergence)
    default_coef = check_real("f_alpha_divergence_coef", f_alpha_divergence_coef)

    def f_loss(
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        rewards: torch.Tensor | None = None,
        *,
        beta: float = 0.1,
        mask: torch.Tensor | None = None,
        divergence: str = default_divergence,
        f_alpha_divergence_coef: float = default_coef,
        validate: bool = True,
        **kwargs,
    ) -> LossOutput:
        if validate:
            check_loss_inputs(
                policy_logps,
                ref_logps,
                rewards,
                mask,
                need_rewards=base.needs_rewards,
                pairwise=base.pairwise,
                check_finite=True,
            )
        beta = check_positive("beta", beta)
        s = log_ratios(policy_logps, ref_logps, mask)
        scores = f_divergence_scores(s, divergence, f_alpha_divergence_coef)
        # The base loss computes "scores − 0" as its log-ratio; its own checks ran above on the raw inputs.
        out = base.fn(
            scores, torch.zeros_like(scores), rewards, beta=beta, mask=mask, validate=False, **kwargs
        )
        return out._replace(implicit_rewards=(beta * s).detach())

    f_loss.__name__ = f_loss.__qualname__ = f"f_{base.name}"
    f_loss.__doc__ = (
        f"f-divergence {base.name} (Wang et al. 2023, arXiv:2309.16240; made by ncakit.zoo.with_f_divergence):\n\n"
        f"    {base.name} with log π_θ − log μ replaced by f'(π_θ/μ), default divergence "
        f"{default_divergence!r} (f_alpha_divergence_coef={default_coef}).\n\n"
        "Inputs ``[B, K]`` as the wrapped loss; see :func:`ncakit.zoo.f_divergence_scores` for f'. "
        "``implicit_rewards`` are β·(log π_θ − log μ).\n"
    )
    return _with_signature(f_loss, base)


_f_dpo = with_f_divergence("dpo")


def f_dpo(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    divergence: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    validate: bool = True,
) -> LossOutput:
    """f-DPO (Wang et al. 2023, "Beyond Reverse KL", arXiv:2309.16240; TRL ``"sigmoid"`` with
    ``f_divergence_type``), pairwise ``[B, 2]`` with the chosen response in column 0:

        L = −log σ( β·f'(π_θ(y_w|x)/μ(y_w|x)) − β·f'(π_θ(y_l|x)/μ(y_l|x)) )

    ``divergence`` ∈ :data:`F_DIVERGENCES` (TRL's names and normalised f', see
    :func:`f_divergence_scores`); ``reverse_kl`` (the default, as in TRL) is exactly DPO (MATH.md,
    DPO family). ``f_alpha_divergence_coef`` is the c of the α-divergence (TRL's name, default 0.5).
    ``implicit_rewards`` are β·(log π_θ − log μ).
    """
    return _f_dpo(
        policy_logps,
        ref_logps,
        rewards,
        beta=beta,
        mask=mask,
        divergence=divergence,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        validate=validate,
    )


def _fixed_f_dpo(divergence: str, coef: float = 0.5) -> LossFn:
    fn = with_f_divergence("dpo", divergence, f_alpha_divergence_coef=coef)
    fn.__doc__ = (
        f'f-DPO with divergence={divergence!r} (Wang et al. 2023, arXiv:2309.16240; TRL "sigmoid" with '
        f"f_divergence_type={divergence!r}"
        + (f", f_alpha_divergence_coef={coef}" if divergence == "alpha_divergence" else "")
        + "): :func:`ncakit.zoo.f_dpo` with that default. Inputs ``[B, 2]``, chosen first; loss ``[B]``.\n"
    )
    return fn


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
    ``alpha`` (ncakit's reward temperature, 1 = the paper) divides the reward gaps; the code's 1e-10
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
    valid = _valid(s, mask)
    lens = _check_lengths(lengths, s, valid)
    logp = torch.where(valid, policy_logps.to(dtype), _zero(s))
    if reference_free:
        score = logp if lens is None else logp / lens
    else:
        score = beta * (s if lens is None else s / lens)
    r = torch.where(valid, rewards.to(dtype), _zero(s)) / alpha
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
    valid = _valid(s, None)
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
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> LossOutput:
    """CPL, Contrastive Preference Learning (Hejna et al. 2023, arXiv:2310.13639), pairwise ``[B, 2]``,
    chosen first, reference-free (``ref_logps`` only enter ``implicit_rewards``):

        L = −log σ( β·log π_θ(y_w|x) − λ·β·log π_θ(y_l|x) ) + bc_weight·(−log π_θ(y_w|x))

    CPL's segment score is α·Σ_t γ^t log π(a_t|s_t); at the sequence level (γ = 1) that is α times
    the summed log-prob, with β in the role of CPL's α (the released configs use α = 0.1, ncakit's
    default β). λ = ``contrastive_bias`` ∈ (0, 1] is the conservative bias of CPL(λ) on the
    dispreferred segment (released configs: 0.5, the default here; λ = 1 is reference-free DPO). The
    form is the authors' ``biased_bce_with_logits`` (jhejna/cpl, ``research/algs/cpl.py``). Their
    optional BC regulariser is offered on the chosen response (``bc_data="pos"``), off by default.
    """
    lam = check_real("contrastive_bias", contrastive_bias, low=0.0, low_inclusive=False, high=1.0)
    bc = check_real("bc_weight", bc_weight, low=0.0)
    beta, s = pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
    lp = policy_logps.to(s.dtype)
    loss = -F.logsigmoid(beta * (lp[:, 0] - lam * lp[:, 1]))
    if bc > 0:
        loss = loss + bc * (-lp[:, 0])
    return loss_output(loss, s, beta, chosen_one_hot(s))


# --------------------------------------------------------------------------------------------
# The LSC reward transform ("Transforming and Combining Rewards")
# --------------------------------------------------------------------------------------------


def transform_rewards(
    rewards: torch.Tensor,
    reference_reward: float | torch.Tensor | None = None,
    *,
    reference_quantile: float | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Log-sigmoid-centred rewards (Wang et al. 2024, "Transforming and Combining Rewards for Aligning
    Large Language Models", arXiv:2402.00742, the "LSC-transformation"):

        u(x, y) = log σ( r(x, y) − r_ref(x) )   ∈ (−∞, 0]

    log P(y is "good" | x) under Bradley–Terry against a reference response: increasing in r,
    bounded above by 0 (gains on already-good responses saturate), −log 2 at r = r_ref, and sums of
    u over several reward models are the log-probability that a response is good in all of them.

    r_ref(x) is the paper's free choice (the reward of a reference response, e.g. a quantile of the
    base policy's rewards). Give exactly one of

    - ``reference_reward``: a float, or a tensor ``[B]`` / ``[B, 1]`` (one reference per prompt);
    - ``reference_quantile`` q ∈ [0, 1]: r_ref(x) = the q-quantile of the prompt's own valid
      rewards (linear interpolation) — with responses sampled from μ, an estimate of μ's quantile.

    Returns ``[B, K]`` in float32/float64; 0 at masked slots.
    """
    check_tensor("rewards", rewards)
    if (reference_reward is None) == (reference_quantile is None):
        raise ValueError(
            "reference_reward / reference_quantile: pass exactly one (a reference reward per prompt, or the "
            "quantile of each prompt's rewards to use as its reference)"
        )
    dtype = compute_dtype(rewards)
    B, K = rewards.shape
    valid = _valid(rewards, mask)
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != rewards.shape
    ):
        raise ValueError(f"mask: expected a bool tensor of shape {shape_str(rewards)}")
    r = rewards.to(dtype)
    if validate and bool((~torch.isfinite(r) & valid).any()):
        raise ValueError("rewards: expected finite values for every valid response")
    if reference_quantile is not None:
        q = check_real("reference_quantile", reference_quantile, low=0.0, high=1.0)
        r_nan = torch.where(valid, r, torch.full((), math.nan, dtype=dtype, device=r.device))
        ref = torch.nanquantile(r_nan, q, dim=-1, keepdim=True)
    elif isinstance(reference_reward, torch.Tensor):
        if reference_reward.shape not in ((B,), (B, 1)):
            raise ValueError(
                f"reference_reward: expected a float or a tensor of shape [{B}] or [{B}, 1], got {shape_str(reference_reward)}"
            )
        ref = reference_reward.to(dtype).reshape(B, 1)
        if validate and not bool(torch.isfinite(ref).all()):
            raise ValueError("reference_reward: expected finite values")
    else:
        ref = torch.full(
            (B, 1), check_real("reference_reward", reference_reward), dtype=dtype, device=r.device
        )
    u = F.logsigmoid(r - ref)
    return torch.where(valid, u, torch.zeros((), dtype=dtype, device=r.device))


def with_reward_transform(loss: str | LossFn, *, reference_quantile: float = 0.5) -> LossFn:
    """A K-way reward loss (``nca``, ``infonca``, ``plackett_luce`` ...) fed LSC-transformed rewards
    (:func:`transform_rewards`): the soft labels become w = softmax(log σ(r − r_ref)/α).

    The returned function has the core signature plus ``reference_reward`` (float or ``[B]``) and
    ``reference_quantile``; with neither, r_ref(x) is the ``reference_quantile`` quantile (default
    0.5, the median: ncakit's choice, the paper leaves r_ref open) of each prompt's K rewards.
    """
    base = _resolve(loss)
    if not base.needs_rewards:
        raise ValueError(f"loss: {base.name!r} does not use rewards, so a reward transform has no effect")
    default_q = check_real("reference_quantile", reference_quantile, low=0.0, high=1.0)

    def lsc_loss(
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        rewards: torch.Tensor | None = None,
        *,
        beta: float = 0.1,
        mask: torch.Tensor | None = None,
        reference_reward: float | torch.Tensor | None = None,
        reference_quantile: float | None = None,
        validate: bool = True,
        **kwargs,
    ) -> LossOutput:
        if validate:
            check_loss_inputs(
                policy_logps,
                ref_logps,
                rewards,
                mask,
                need_rewards=True,
                pairwise=base.pairwise,
                check_finite=True,
            )
        if reference_reward is None and reference_quantile is None:
            reference_quantile = default_q
        u = transform_rewards(
            rewards, reference_reward, reference_quantile=reference_quantile, mask=mask, validate=validate
        )
        return base.fn(policy_logps, ref_logps, u, beta=beta, mask=mask, validate=False, **kwargs)

    lsc_loss.__name__ = lsc_loss.__qualname__ = f"{base.name}_lsc"
    lsc_loss.__doc__ = (
        f"{base.name} on log-sigmoid-centred rewards u = log σ(r − r_ref(x)) (Wang et al. 2024, "
        "arXiv:2402.00742; made by ncakit.zoo.with_reward_transform). Inputs ``[B, K]``; r_ref(x) = "
        f"``reference_reward`` or, by default, the {default_q}-quantile of each prompt's rewards.\n"
    )
    return _with_signature(lsc_loss, base)


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
        _fixed_f_dpo("forward_kl"),
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO (forward KL)",
        "#CC3311",  # red
        trl_name="sigmoid + f_divergence_type='forward_kl'",
    ),
    LossSpec(
        "f_dpo_js",
        _fixed_f_dpo("js_divergence"),
        "pairwise",
        False,
        _F_DPO_PAPER,
        "f-DPO (JS)",
        "#BB5566",  # rose
        trl_name="sigmoid + f_divergence_type='js_divergence'",
    ),
    LossSpec(
        "f_dpo_alpha",
        _fixed_f_dpo("alpha_divergence", 0.5),
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
        if existing is not None and getattr(existing.fn, "__module__", None) == __name__:
            continue  # importlib.reload(ncakit.zoo): already registered by this module
        register_loss(spec)


_register_all()
