"""Loss variants built from any registered loss: the f-divergence version (f-DPO's transform of
the log-ratio) and the LSC reward transform (log-sigmoid-centred rewards).

    >>> import torch
    >>> from ncakit.variants import with_f_divergence
    >>> js_nca = with_f_divergence("nca", "js_divergence")
    >>> ref = torch.randn(2, 4, dtype=torch.float64)
    >>> round(js_nca(ref.clone(), ref, torch.randn(2, 4), beta=0.1).loss.mean().item(), 4)  # f'(1) = 0
    1.3863

A wrapper keeps the core signature of :mod:`ncakit.losses` and takes the wrapped loss's keywords
(``alpha``, ``label_smoothing`` ...) as its own; its ``__signature__`` lists them all, so the
registry (:attr:`ncakit.registry.LossSpec.keywords`) and ``help()`` see every keyword it accepts.
``alpha`` divides the rewards (w = softmax(r/α) in NCA/InfoNCA); it equals the authors' code's
``temperature_alpha`` (thu-ml/Noise-Contrastive-Alignment, ``reward_trainer.py:456`` divides the
scores by it), and the authors' own comment at ``reward_trainer.py:453`` says temperature_alpha =
1/(the paper's α) — so a value copied from the NCA paper's text may need its reciprocal. The
wrappers pass ``alpha`` through to the wrapped loss unchanged.
:mod:`ncakit.zoo` registers the variants the project trains (``f_dpo*``, ``nca_lsc``, ``infonca_lsc``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ncakit.losses import LossOutput, compute_dtype, log_ratios, valid_mask
from ncakit.registry import LOSS_SPECS, LossSpec, loss_spec
from ncakit.validation import check_loss_inputs, check_positive, check_real, check_tensor, shape_str

__all__ = [
    "F_DIVERGENCES",
    "f_divergence_scores",
    "with_f_divergence",
    "f_dpo",
    "f_dpo_with",
    "transform_rewards",
    "with_reward_transform",
    "resolve_loss",
]

LossFn = Callable[..., LossOutput]


#: TRL 1.16's ``f_divergence_type`` names (DPOConfig), in its order.
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Exponent cap of the f-divergence scores (exp(80) ≈ 5.5e34 is finite in float32 and bfloat16).
# - α-divergence: as in TRL 1.16, which clamps (c − 1)·s at 80 for float32/bfloat16 (11 for float16)
#   before exp (trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss, the "alpha_divergence" branch);
#   ncakit applies 80 in every dtype (TRL's table has no float64 entry).
# - forward KL: ncakit's OWN choice; TRL 1.16 does NOT clamp it (the "forward_kl" branch computes
#   1 − torch.exp(−logratios) as is). Unclamped, exp(−s) overflows float32/bfloat16 once s < −88.7,
#   the score is −inf and the loss inf or NaN (−inf − (−inf)); ncakit's losses promise finite losses
#   and gradients at extreme inputs (tests/test_zoo.py::test_extreme_values_stay_finite), so the
#   exponent −s is capped at 80 too. For s ≥ −80 the score equals TRL's exactly; below, it saturates
#   at 1 − e^80 with zero gradient, where TRL's is −inf.
_EXP_CAP = 80.0


def resolve_loss(loss) -> LossSpec:
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
    exponent is clamped at 80 so scores stay finite (and flat, zero gradient) for extreme
    log-ratios: for the α-divergence as TRL does; for forward KL by ncakit's choice — TRL 1.16 does
    not clamp forward KL (its score is −inf, its loss inf/NaN, once exp(−s) overflows), so the two
    agree only for s ≥ −80.

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
    keyword arguments (``alpha`` — the reward temperature, see the module docstring —,
    ``label_smoothing``, ``lengths`` ...); ``divergence`` and
    ``f_alpha_divergence_coef`` become call-time keywords whose defaults are the ones given here.

    ``implicit_rewards`` of the result are β·s (ncakit's convention), not β·f'(π/μ).

    Args:
        loss: a registered loss name or function, not a reference-free one (``asft``, ``cpl``, ``pro``).
        divergence: one of :data:`F_DIVERGENCES`. f_alpha_divergence_coef: c of the α-divergence.
    """
    base = resolve_loss(loss)
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


def f_dpo_with(divergence: str, coef: float = 0.5) -> LossFn:
    fn = with_f_divergence("dpo", divergence, f_alpha_divergence_coef=coef)
    fn.__doc__ = (
        f'f-DPO with divergence={divergence!r} (Wang et al. 2023, arXiv:2309.16240; TRL "sigmoid" with '
        f"f_divergence_type={divergence!r}"
        + (f", f_alpha_divergence_coef={coef}" if divergence == "alpha_divergence" else "")
        + "): :func:`ncakit.zoo.f_dpo` with that default. Inputs ``[B, 2]``, chosen first; loss ``[B]``.\n"
    )
    return fn


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
    valid = valid_mask(rewards, mask)
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != rewards.shape
    ):
        raise ValueError(f"mask: expected a bool tensor of shape {shape_str(rewards)}")
    r = rewards.detach().to(dtype)
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
    base = resolve_loss(loss)
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
