"""Reference solutions to the exercises of tutorials/07_exercises.ipynb.

TRY FIRST. Each exercise has a checker that tells you what is wrong and two levels of hints
(``ncakit.exercises.hint(name, 1)``, then ``hint(name, 2)``); read a solution only after you have
a version of your own, then compare. Every function here passes its checker (tests/test_exercises.py
and the notebook's last cell run them)::

    from ncakit.toy.exercises import check_all
    import exercises_solutions
    check_all(exercises_solutions)

Formulas: ncakit/MATH.md (cited by section). Shapes: ``[B, K]`` = B prompts with K responses each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ncakit.losses import nca
from ncakit.toy.bandit import BanditConfig
from ncakit.toy.policies import PolicyConfig
from ncakit.toy.trainer import Setting


def my_soft_labels(rewards, alpha, mask=None):
    """Soft labels w = softmax(r / α) over each prompt's valid responses (MATH.md, notation). [B, K] -> [B, K]."""
    logits = rewards / alpha
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)  # padded responses: weight exp(-inf) = 0
    return torch.softmax(logits, dim=-1)  # subtracts the row max: no overflow for a tiny α


def my_infonca(policy_logps, ref_logps, rewards, beta, alpha, mask=None):
    """InfoNCA (MATH.md): L = −Σ_i w_i·log softmax(r̂)_i, r̂ = β·(log π − log μ). [B, K] -> [B]."""
    r_hat = beta * (policy_logps - ref_logps)
    w = my_soft_labels(rewards, alpha, mask)
    if mask is not None:
        r_hat = r_hat.masked_fill(~mask, -math.inf)  # padded responses leave the softmax
    log_p = F.log_softmax(r_hat, dim=-1)
    if mask is not None:
        log_p = torch.where(mask, log_p, torch.zeros_like(log_p))  # avoid 0 * (-inf) = nan
    return -(w * log_p).sum(dim=-1)  # a sum over K, no 1/K


def my_nca(policy_logps, ref_logps, rewards, beta, alpha, mask=None):
    """NCA (MATH.md): L = −Σ_i w_i·log σ(r̂_i) − (1/K)·Σ_i log σ(−r̂_i). [B, K] -> [B]."""
    r_hat = beta * (policy_logps - ref_logps)
    w = my_soft_labels(rewards, alpha, mask)
    pos, neg = F.logsigmoid(r_hat), F.logsigmoid(-r_hat)
    if mask is None:
        k = r_hat.shape[-1]
    else:
        k = mask.sum(dim=-1).to(r_hat.dtype)  # K = the prompt's number of VALID responses
        pos = torch.where(mask, pos, torch.zeros_like(pos))
        neg = torch.where(mask, neg, torch.zeros_like(neg))
    return -(w * pos).sum(dim=-1) - neg.sum(dim=-1) / k


def my_infonca_grad(r_hat, w):
    """dL_InfoNCA/dr̂ = softmax(r̂) − w (MATH.md, InfoNCA): each row sums to zero. [B, K] -> [B, K]."""
    return torch.softmax(r_hat, dim=-1) - w


def my_nca_grad(r_hat, w):
    """dL_NCA/dr̂_i = −w_i·σ(−r̂_i) + σ(r̂_i)/K (MATH.md, NCA): each entry depends on r̂_i only."""
    K = r_hat.shape[-1]
    return -w * torch.sigmoid(-r_hat) + torch.sigmoid(r_hat) / K


def my_nca_optimum(rewards, alpha, beta):
    """The log-ratios s [B, K] that minimise ncakit.losses.nca, found by plain gradient descent.

    NCA sees s only through r̂ = β·s, so we descend on r̂ (the loss at β = 1) and return s = r̂/β: the
    curvature in r̂ is at most (1 + 1/K)/4, so a step of 4 is stable whatever β is. The answer should
    land on s* = log(K·w)/β (MATH.md, NCA: r̂* = log(K·w)); no closed form is used here."""
    r_hat = torch.zeros_like(rewards, requires_grad=True)  # start at policy = reference
    ref = torch.zeros_like(rewards)
    for _ in range(5000):
        loss = nca(r_hat, ref, rewards, beta=1.0, alpha=alpha, validate=False).loss.sum()
        (grad,) = torch.autograd.grad(loss, r_hat)  # prompts are independent: sum, not mean
        with torch.no_grad():
            r_hat -= 4.0 * grad
        if grad.abs().max() < 1e-10:
            break
    return r_hat.detach() / beta


def my_pairs_to_k(rows):
    """Chosen/rejected pairs -> one row per prompt with its K distinct responses, best first.

    ``rows``: dicts with ``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``.
    Returns dicts ``{"prompt", "responses", "rewards"}`` (ncakit.scale.data's canonical format)."""
    groups = {}  # prompt -> {response: [scores]}; dicts keep first-appearance order
    for row in rows:
        g = groups.setdefault(row["prompt"], {})
        g.setdefault(row["chosen"], []).append(float(row["score_chosen"]))
        g.setdefault(row["rejected"], []).append(float(row["score_rejected"]))
    out = []
    for prompt, scores in groups.items():
        if len(scores) < 2:  # nothing left to compare
            continue
        responses = list(scores)
        rewards = [sum(v) / len(v) for v in scores.values()]
        order = sorted(range(len(responses)), key=lambda i: -rewards[i])  # stable: ties keep their order
        out.append(
            {
                "prompt": prompt,
                "responses": [responses[i] for i in order],
                "rewards": [rewards[i] for i in order],
            }
        )
    return out


def my_bandit_setting():
    """A tabular bandit with overlapping comparisons: 8 tuples of K = 4 per prompt, so a response chosen in
    one tuple is rejected in another (MATH.md, "What a toy bandit needs to show the effect")."""
    bandit = BanditConfig(n_prompts=8, n_responses=32, k=4, tuples_per_prompt=8, pair_view="best_random")
    return Setting("overlap", bandit, PolicyConfig("tabular"), beta=0.1, alpha=0.3, lr=0.05)


def my_displaced(chosen, rejected):
    """Likelihood displacement: the chosen log-ratio fell while the margin rose. [T, ...] -> bool [...]."""
    margin = chosen - rejected
    return (chosen[-1] < chosen[0]) & (margin[-1] > margin[0])
