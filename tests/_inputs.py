"""Random ``[B, K]`` loss inputs shared by test_losses.py and test_zoo.py."""

from __future__ import annotations

import torch


def rand_inputs(B=5, K=4, seed=0, dtype=torch.float64, scale=3.0):
    """policy log-probs (requires grad), reference log-probs (both around −20, spread ``scale``) and
    standard-normal rewards, from their own generator."""
    g = torch.Generator().manual_seed(seed)
    pol = (torch.randn(B, K, generator=g, dtype=dtype) * scale - 20).requires_grad_(True)
    ref = torch.randn(B, K, generator=g, dtype=dtype) * scale - 20
    rew = torch.randn(B, K, generator=g, dtype=dtype)
    return pol, ref, rew


def chosen_first(rew):
    """Pairwise rewards [B, 2] with the higher one in column 0, as pairwise losses require."""
    return torch.sort(rew[:, :2], dim=1, descending=True).values
