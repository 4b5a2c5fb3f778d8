"""The toy's policy families: logits = ref_logits + delta, with the trainable delta exactly 0 at step 0.

Every family starts EXACTLY at the reference μ; they differ in what the delta shares:

===========  ==================================================================================
``tabular``  a free logit per (prompt, response): nothing shared (the control)
``linear``   delta = θ·φ(x, y), θ ∈ R^d shared by all prompts and responses
``lowrank``  delta = P_x·Q_y (rank r; P random, Q zero): prompt and response embeddings
``mlp``      delta = MLP(φ(x, y)) (one tanh hidden layer, output layer zero)
===========  ==================================================================================

A :class:`Policy` holds the parameters of L losses x S seeds stacked with leading ``[L, S]`` dims,
so the trainer (:mod:`ncakit.toy.trainer`) updates every run with one backward and one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ncakit.toy.bandit import POLICY_STREAM, Bandit, seed_generator
from ncakit.validation import check_choice, check_int, check_positive

__all__ = ["FAMILIES", "PolicyConfig", "Policy"]

FAMILIES = ("tabular", "linear", "lowrank", "mlp")


@dataclass(frozen=True)
class PolicyConfig:
    """A policy family and its size.

    Attributes:
        family: ``tabular`` | ``linear`` | ``lowrank`` | ``mlp`` (see the module docstring).
        rank: r of ``lowrank``: P ``[X, r]`` starts at N(0, init_scale²/r), Q ``[N, r]`` at zero,
            so delta = P·Qᵀ is exactly 0 at step 0 (the LoRA trick); both are trained.
        hidden: hidden width of ``mlp``.
        init_scale: scale of the random (non-zero) initial weights of ``lowrank`` and ``mlp``.
    """

    family: str = "tabular"
    rank: int = 4
    hidden: int = 32
    init_scale: float = 1.0

    def __post_init__(self):
        check_choice("family", self.family, FAMILIES)
        check_int("rank", self.rank, 1)
        check_int("hidden", self.hidden, 1)
        check_positive("init_scale", self.init_scale)


class Policy:
    """Policies of one family for L losses x S seeds on one :class:`Bandit`: logits ``[L, S, X, N]``
    = ref_logits + delta, where ``delta`` is exactly 0 at initialisation.

    Initial weights are drawn per seed (same for every loss, so the losses start from the same
    policy and see the same data: paired comparisons)."""

    def __init__(self, config: PolicyConfig, bandit: Bandit, n_losses: int):
        if not isinstance(config, PolicyConfig):
            raise TypeError(f"config: expected a PolicyConfig, got {type(config).__name__}")
        self.config, self.bandit = config, bandit
        L = check_int("n_losses", n_losses, 1)
        S, X, N = bandit.shape
        d = bandit.features.shape[-1]
        dev, dt = bandit.ref_logits.device, bandit.ref_logits.dtype

        def per_seed(*shape, scale):  # a random tensor [L, S, *shape], the same for every loss
            draws = [
                torch.randn(*shape, generator=seed_generator(s, POLICY_STREAM), dtype=torch.float64)
                for s in bandit.seeds
            ]
            return (scale * torch.stack(draws)).to(dev, dt).expand(L, S, *shape).clone()

        family = config.family
        if family == "tabular":
            self.names = ("logits",)
            params = [torch.zeros(L, S, X, N, device=dev, dtype=dt)]
        elif family == "linear":
            self.names = ("theta",)
            params = [torch.zeros(L, S, d, device=dev, dtype=dt)]
        elif family == "lowrank":
            r = config.rank
            self.names = ("P", "Q")
            params = [
                per_seed(X, r, scale=config.init_scale / math.sqrt(r)),
                torch.zeros(L, S, N, r, device=dev, dtype=dt),
            ]
        else:  # mlp
            h = config.hidden
            self.names = ("W1", "b1", "w2")
            params = [
                per_seed(d, h, scale=config.init_scale / math.sqrt(d)),
                torch.zeros(L, S, h, device=dev, dtype=dt),
                torch.zeros(L, S, h, device=dev, dtype=dt),
            ]
        self.params = [p.requires_grad_() for p in params]

    def delta(self) -> torch.Tensor:
        """The trainable logit offsets ``[L, S, X, N]`` (exactly 0 at initialisation)."""
        family, p = self.config.family, self.params
        if family == "tabular":
            return p[0]
        if family == "linear":
            return torch.einsum("sxnd,lsd->lsxn", self.bandit.features, p[0])
        if family == "lowrank":
            return p[0] @ p[1].transpose(-1, -2)
        W1, b1, w2 = p
        hidden = torch.tanh(
            torch.einsum("sxnd,lsdh->lsxnh", self.bandit.features, W1) + b1[:, :, None, None, :]
        )
        return (hidden * w2[:, :, None, None, :]).sum(-1)

    def logps(self) -> torch.Tensor:
        """log π_θ(y|x) ``[L, S, X, N]``; equal to the bandit's ``ref_logps`` bit for bit at step 0."""
        return F.log_softmax(self.bandit.ref_logits + self.delta(), dim=-1)
