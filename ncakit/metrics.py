"""Training metrics with TRL's names, and their K-way analogues, from one loss call's tensors.

``preference_metrics(out, policy_logps, rewards, mask)`` returns a dict of detached 0-d tensors
(call ``.item()`` when logging; the scale loop gathers them across processes first):

==========================  =====================================================================
``rewards/chosen``          mean implicit reward r̂ of the chosen (highest-reward) response
``rewards/rejected``        mean r̂ of the other responses (per prompt, then over prompts)
``rewards/margins``         mean of chosen − rejected
``rewards/accuracies``      fraction of (chosen, other) pairs with r̂_chosen > r̂_other
                            (for K = 2 exactly TRL's ``rewards/accuracies``)
``rewards/top1_accuracy``   fraction of prompts whose argmax r̂ is the argmax-reward response; a tie
                            for the top r̂ among m responses counts 1/m (so 1/K at step 0,
                            where every r̂ is 0 -- chance, not a perfect score)
``rewards/rank_k``          mean r̂ of the k-th best response by reward, k = 1..K (K > 2 only)
``logps/chosen``            mean policy log-prob of the chosen response (TRL name)
``logps/rejected``          mean policy log-prob of the other responses
``labels/entropy``          mean entropy (nats) of the soft labels w = softmax(r/α)
==========================  =====================================================================

Without rewards (pairwise data) the chosen response is column 0 and ranks follow column order.

``token_metrics(stats, rewards, mask)`` adds TRL's token metrics, from the policy's per-response
:class:`ncakit.logprobs.TokenStats` (sums over each response's scored tokens, taken chunk by chunk
while the logits exist; ``batch_logps(..., stats=True)``). Each is a ratio of token sums (tokens
weigh equally, as TRL's gathered sums / gathered counts), chosen / rejected as above:

==========================  =====================================================================
``entropy``                 mean entropy (nats) of the policy's next-token distribution over
                            every completion token of every valid response (0 ≤ H ≤ ln V)
``logits/chosen``           mean over the chosen responses' tokens of the mean logit over the
                            vocabulary (TRL's ``logits/chosen``)
``logits/rejected``         the same over the other valid responses' tokens
``mean_token_accuracy``     fraction of the chosen responses' tokens whose argmax logit is the
                            token itself (TRL's DPO ``mean_token_accuracy``)
==========================  =====================================================================

A ratio with no token under it is 0, as in TRL.
"""

from __future__ import annotations

import math

import torch

from ncakit.logprobs import TokenStats
from ncakit.losses import LossOutput

__all__ = ["preference_metrics", "token_metrics", "reward_ranks", "to_floats"]


def reward_ranks(
    rewards: torch.Tensor | None, shape: torch.Size, mask: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """Column indices ``[B, K]`` sorted best-first by reward (stable: ties keep column order);
    masked responses go last. Without rewards, the column order itself (chosen first)."""
    B, K = shape
    if rewards is None:
        return torch.arange(K, device=device).expand(B, K)
    key = rewards.double()
    if mask is not None:
        key = key.masked_fill(~mask, -math.inf)
    return torch.sort(key, dim=-1, descending=True, stable=True).indices


@torch.no_grad()
def preference_metrics(
    out: LossOutput,
    policy_logps: torch.Tensor,
    rewards: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """TRL-named metrics ``{name: 0-d tensor}`` for one batch (see the module docstring).

    Args:
        out: what the loss returned (``implicit_rewards`` and ``weights`` ``[B, K]``).
        policy_logps: ``[B, K]`` policy sequence log-probs (for ``logps/*``).
        rewards: ``[B, K]`` data rewards, or None for pairwise data (chosen in column 0).
        mask: ``[B, K]`` bool of valid responses, or None.
    """
    r_hat = out.implicit_rewards.float()
    B, K = r_hat.shape
    valid = mask if mask is not None else torch.ones(B, K, dtype=torch.bool, device=r_hat.device)
    order = reward_ranks(rewards, r_hat.shape, mask, device=r_hat.device)
    r_sorted = r_hat.gather(1, order)
    v_sorted = valid.gather(1, order)
    lp_sorted = policy_logps.detach().float().gather(1, order)

    chosen = r_sorted[:, 0]
    others = v_sorted.clone()
    others[:, 0] = False
    n_other = others.sum(dim=1).clamp(min=1).float()
    rejected = (r_sorted * others).sum(dim=1) / n_other
    wins = ((chosen[:, None] > r_sorted) & others).sum(dim=1).float() / n_other
    masked = r_hat.masked_fill(~valid, -math.inf)
    at_top = (masked == masked.max(dim=1, keepdim=True).values) & valid  # ties share the credit
    top1 = at_top.gather(1, order[:, :1]).squeeze(1).float() / at_top.sum(dim=1).clamp(min=1)

    m = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": wins.mean(),
        "rewards/top1_accuracy": top1.mean(),
        "logps/chosen": lp_sorted[:, 0].mean(),
        "logps/rejected": ((lp_sorted * others).sum(dim=1) / n_other).mean(),
    }
    if K > 2:
        for k in range(K):
            present = v_sorted[:, k]
            m[f"rewards/rank_{k + 1}"] = (r_sorted[:, k] * present).sum() / present.sum().clamp(min=1)
    w = out.weights.float()
    ent = -(w * torch.log(w.clamp(min=1e-30))).masked_fill(~valid, 0.0).sum(dim=1)
    m["labels/entropy"] = ent.mean()
    return m


@torch.no_grad()
def token_metrics(
    stats: TokenStats, rewards: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """TRL's token metrics ``{name: 0-d float64 tensor}`` (see the module docstring).

    Args:
        stats: the policy's :class:`ncakit.logprobs.TokenStats` ``[B, K]`` (sums per response).
        rewards: ``[B, K]`` data rewards, or None for pairwise data (chosen in column 0).
        mask: ``[B, K]`` bool of valid responses, or None.
    """
    t = stats.apply(lambda v: v.double())
    B, K = t.tokens.shape
    device = t.tokens.device
    valid = mask.to(device) if mask is not None else torch.ones(B, K, dtype=torch.bool, device=device)
    order = reward_ranks(rewards, (B, K), valid if mask is not None else None, device=device)
    chosen = torch.zeros(B, K, dtype=torch.bool, device=device).scatter_(1, order[:, :1], True) & valid
    rejected = valid & ~chosen

    def ratio(num: torch.Tensor, den: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        n, d = num.masked_fill(~where, 0).sum(), den.masked_fill(~where, 0).sum()
        return torch.where(d > 0, n / d.clamp(min=1), torch.zeros_like(n))

    return {
        "entropy": ratio(t.entropy_sum, t.tokens, valid),
        "logits/chosen": ratio(t.logit_sum, t.tokens, chosen),
        "logits/rejected": ratio(t.logit_sum, t.tokens, rejected),
        "mean_token_accuracy": ratio(t.top1, t.tokens, chosen),
    }


def to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{name: tensor}`` -> ``{name: float}`` (one host sync per value)."""
    return {k: float(v) for k, v in metrics.items()}
