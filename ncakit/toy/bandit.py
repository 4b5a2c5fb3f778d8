"""The toy's environment: contextual bandits and their offline preference data.

A bandit has X prompts and N responses, a reference policy μ(y|x) = softmax(ref_logits[x]) and a
true reward r(x, y). The offline data are drawn like the NCA paper's: for every prompt, M tuples of
K distinct responses sampled from μ and scored by the reward (plus optional noise), sorted
best-first. The pairwise losses see a K = 2 view of every tuple (:data:`PAIR_VIEWS`: best vs worst /
second / random, or a Bradley–Terry-sampled pair), chosen first.

:func:`make_bandit` draws S instances at once (one per seed, stacked on a leading seed dim) into a
:class:`Bandit`, which also holds the closed-form references the figures and the trainer report:
π* ∝ μ·exp(r/(αβ)) (:meth:`Bandit.target_logps`), the reward–KL frontier (:meth:`Bandit.frontier`)
and NCA's per-response optimum log(K·w̄)/β (:meth:`Bandit.nca_targets`).

Every random draw comes from :func:`seed_generator`, one independent generator per (seed, stream):
:data:`DATA_STREAM` for the bandit and its data here, :data:`POLICY_STREAM` for the initial weights
of :mod:`ncakit.toy.policies`, so seed s gives the same bandit and weights alone or in a batch.

    from ncakit.toy.bandit import BanditConfig, make_bandit
    b = make_bandit(BanditConfig(n_prompts=4, k=4, tuples_per_prompt=8), seeds=range(3))
    b.tuples.shape                                  # [S, X, M, K] = [3, 4, 8, 4]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ncakit.validation import check_choice, check_int, check_positive, check_real

__all__ = [
    "PAIR_VIEWS",
    "DATA_STREAM",
    "POLICY_STREAM",
    "BanditConfig",
    "Bandit",
    "make_bandit",
    "seed_generator",
    "check_seeds",
]

PAIR_VIEWS = ("best_worst", "best_second", "best_random", "bradley_terry")

#: The generator streams of :func:`seed_generator`: the bandit and its data, the policies' initial weights.
DATA_STREAM, POLICY_STREAM = 0, 1


def seed_generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU generator per (seed, stream), so seed s gives the same draws whether it
    runs alone or inside a batch of seeds (numpy's SeedSequence mixes the pair without collisions)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63 - 1)))


def check_seeds(seeds) -> tuple[int, ...]:
    """A non-empty sequence of distinct ints >= 0 (``range(8)``, ``(3, 4)``), as a tuple. A bare int is
    refused: ``seeds=8`` would be ambiguous between one seed and eight."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        raise TypeError(f"seeds: expected a sequence of ints such as range({seeds}), got the int {seeds}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got an empty sequence")
    for s in seeds:
        check_int("seeds", s, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {list(seeds)}")
    return seeds


@dataclass(frozen=True)
class BanditConfig:
    """Shape and generative model of a contextual bandit (one instance per seed).

    Attributes:
        n_prompts: X, prompts (contexts).
        n_responses: N, responses (arms) per prompt.
        k: K, distinct responses per data tuple (K <= N).
        tuples_per_prompt: M, data tuples per prompt. M = 1 is the control (each response is
            compared once); M > 1 makes comparisons overlap (a response chosen in one tuple can be
            rejected in another), as in real preference data.
        feature_dim: d, dimension of the features φ(x, y) ~ N(0, I) used by ``linear``/``mlp``.
        ref_scale: standard deviation of the reference logits (larger = a more peaked μ, whose
            tail responses are rarely sampled into the data).
        reward_fit: share of the true reward's variance explained linearly by the features:
            r = √fit·(φ·u) + √(1−fit)·ε with a random unit vector u and ε ~ N(0, 1).
        reward_noise: standard deviation of Gaussian noise added to the DATA rewards only.
        pair_view: which K = 2 view of each tuple the pairwise losses see: ``best_worst``,
            ``best_second``, ``best_random`` (best vs a uniformly drawn other) or
            ``bradley_terry`` (a random pair, ordered by a Bradley–Terry draw on the data rewards).
    """

    n_prompts: int = 16
    n_responses: int = 32
    k: int = 4
    tuples_per_prompt: int = 8
    feature_dim: int = 8
    ref_scale: float = 1.0
    reward_fit: float = 0.7
    reward_noise: float = 0.0
    pair_view: str = "best_worst"

    def __post_init__(self):
        check_int("n_prompts", self.n_prompts, 1)
        check_int("n_responses", self.n_responses, 2)
        check_int("k", self.k, 2)
        if self.k > self.n_responses:
            raise ValueError(
                f"k: expected K <= n_responses (K distinct responses per tuple), got K = {self.k} > N = "
                f"{self.n_responses}"
            )
        check_int("tuples_per_prompt", self.tuples_per_prompt, 1)
        check_int("feature_dim", self.feature_dim, 1)
        check_real("ref_scale", self.ref_scale, low=0.0)
        check_real("reward_fit", self.reward_fit, low=0.0, high=1.0)
        check_real("reward_noise", self.reward_noise, low=0.0)
        check_choice("pair_view", self.pair_view, PAIR_VIEWS)


@dataclass
class Bandit:
    """S bandit instances (one per seed), stacked on a leading seed dim. Built by :func:`make_bandit`.

    Tensors (float ones in the bandit's dtype):
        ref_logits ``[S, X, N]``, ref_logps ``[S, X, N]`` (= log_softmax(ref_logits)),
        reward ``[S, X, N]`` (true reward), features ``[S, X, N, d]``,
        tuples ``[S, X, M, K]`` response ids sorted best-first by data reward,
        tuple_rewards ``[S, X, M, K]`` data rewards (true + noise), sorted descending,
        pairs ``[S, X, M, 2]`` the pairwise view (chosen first), pair_rewards ``[S, X, M, 2]``,
        seen ``[S, X, N]`` bool (response appears in a tuple of that prompt),
        best_seen ``[S, X]`` the seen response with the highest TRUE reward.
    """

    config: BanditConfig
    seeds: tuple[int, ...]
    ref_logits: torch.Tensor
    ref_logps: torch.Tensor
    reward: torch.Tensor
    features: torch.Tensor
    tuples: torch.Tensor
    tuple_rewards: torch.Tensor
    pairs: torch.Tensor
    pair_rewards: torch.Tensor
    seen: torch.Tensor
    best_seen: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, X, N)."""
        return tuple(self.ref_logits.shape)

    def select(self, index: Sequence[int]) -> Bandit:
        """The bandit restricted to some seed positions (used to compare a batch with one seed)."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.ref_logits.device)
        kw = {
            f.name: getattr(self, f.name).index_select(0, idx)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return Bandit(config=self.config, seeds=tuple(self.seeds[i] for i in index), **kw)

    def chosen_and_rejected(self) -> torch.Tensor:
        """``[S, X]`` (long): how many responses of each prompt are CHOSEN (rank 1) in one data tuple
        and ranked below first in another: the overlap between comparisons that lets a loss push a
        chosen response down. Always 0 with one tuple per prompt (each response appears once)."""
        S, X, M, K = self.tuples.shape
        N = self.shape[2]
        first = torch.zeros(S, X, N, dtype=torch.bool, device=self.tuples.device)
        later = torch.zeros_like(first)
        first.scatter_(2, self.tuples[..., 0], True)
        later.scatter_(2, self.tuples[..., 1:].reshape(S, X, M * (K - 1)), True)
        return (first & later).sum(-1)

    # -- closed-form references ---------------------------------------------------------------

    def target_logps(self, alpha: float, beta: float) -> torch.Tensor:
        """log π* ``[S, X, N]`` of the target policy π* ∝ μ·exp(r/(α·β)) on the TRUE reward.

        π* is the policy whose implicit reward β·log(π*/μ) equals r/α + C(x): InfoNCA's optimum
        (ncakit/MATH.md, InfoNCA) with every response observed. In the paper's units (β = 1) it is
        μ·exp(r/α).
        """
        alpha = check_positive("alpha", alpha)
        beta = check_positive("beta", beta)
        return F.log_softmax(self.ref_logits + self.reward / (alpha * beta), dim=-1)

    def policy_stats(self, logps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Expected true reward, KL(π || μ) and entropy of policies ``[..., S, X, N]`` (mean over prompts)."""
        p = logps.exp()
        return {
            "expected_reward": (p * self.reward).sum(-1).mean(-1),
            "kl": (p * (logps - self.ref_logps)).sum(-1).mean(-1),
            "entropy": -(p * logps).sum(-1).mean(-1),
        }

    def frontier(self, n: int = 60) -> dict[str, torch.Tensor]:
        """The reward–KL frontier ``{"tau", "kl", "expected_reward"}`` (``[S, n]``) traced by
        π_τ ∝ μ·exp(r/τ): no policy gets more expected reward at the same KL to μ."""
        tau = torch.logspace(2.0, -2.5, n, dtype=self.reward.dtype, device=self.reward.device)
        logps = F.log_softmax(self.ref_logits[None] + self.reward[None] / tau[:, None, None, None], -1)
        stats = self.policy_stats(logps)  # [n, S]
        return {"tau": tau, "kl": stats["kl"].T, "expected_reward": stats["expected_reward"].T}

    def nca_targets(self, alpha: float, beta: float) -> torch.Tensor:
        """NCA's per-response optimum as a LOG-RATIO, at every tuple slot ``[S, X, M, K]``.

        NCA pulls each response to r̂* = log(K·w) (ncakit/MATH.md, NCA); a response that appears in several
        tuples of its prompt is pulled to log(K · mean of its weights), because its loss terms add up.
        Divided by β to give the log-ratio s* = r̂*/β. Exact in the tabular family whenever μ-mass
        is left for the unseen responses (Σ μ·exp(s*) < 1 over the seen ones).
        """
        alpha = check_positive("alpha", alpha)
        beta = check_positive("beta", beta)
        S, X, M, K = self.tuples.shape
        w = torch.softmax(self.tuple_rewards / alpha, dim=-1)
        flat = self.tuples.reshape(S, X, M * K)
        total = torch.zeros_like(self.reward).scatter_add_(2, flat, w.reshape(S, X, M * K))
        count = torch.zeros_like(self.reward).scatter_add_(2, flat, torch.ones_like(w).reshape(S, X, M * K))
        w_bar = (total / count.clamp(min=1)).gather(2, flat).reshape(S, X, M, K)
        return torch.log(K * w_bar) / beta


def make_bandit(
    config: BanditConfig | None = None,
    seeds: Iterable[int] = (0,),
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Bandit:
    """Draw one bandit and its offline data per seed (independent generators: seed s gives the same
    bandit alone or in a batch).

    The data are drawn like the paper's: K distinct responses per tuple sampled from μ without
    replacement (Gumbel top-K), scored by the true reward plus ``reward_noise``, sorted best-first.
    """
    config = config if config is not None else BanditConfig()
    if not isinstance(config, BanditConfig):
        raise TypeError(f"config: expected a BanditConfig, got {type(config).__name__}")
    seeds = check_seeds(seeds)
    X, N, K, M, d = (
        config.n_prompts,
        config.n_responses,
        config.k,
        config.tuples_per_prompt,
        config.feature_dim,
    )
    parts: dict[str, list[torch.Tensor]] = {}
    for seed in seeds:  # generation only (cheap, once); training never loops over seeds
        g = seed_generator(seed, DATA_STREAM)
        feats = torch.randn(X, N, d, generator=g, dtype=torch.float64)
        u = torch.randn(d, generator=g, dtype=torch.float64)
        u = u / u.norm()
        eps = torch.randn(X, N, generator=g, dtype=torch.float64)
        reward = math.sqrt(config.reward_fit) * feats @ u + math.sqrt(1.0 - config.reward_fit) * eps
        ref_logits = config.ref_scale * torch.randn(X, N, generator=g, dtype=torch.float64)
        ref_logps = F.log_softmax(ref_logits, dim=-1)
        # K distinct responses from μ per tuple: Gumbel top-K is sampling without replacement.
        unif = torch.rand(X, M, N, generator=g, dtype=torch.float64).clamp(min=1e-300)  # in (0, 1)
        gumbel = -torch.log(-torch.log(unif))
        tuples = (ref_logps[:, None, :] + gumbel).topk(K, dim=-1).indices  # [X, M, K]
        data_r = reward[:, None, :].expand(X, M, N).gather(2, tuples)
        data_r = data_r + config.reward_noise * torch.randn(X, M, K, generator=g, dtype=torch.float64)
        order = torch.sort(data_r, dim=-1, descending=True, stable=True).indices
        tuples, data_r = tuples.gather(2, order), data_r.gather(2, order)
        pos = _pair_positions(config.pair_view, data_r, g)  # [X, M, 2] positions in the tuple
        seen = torch.zeros(X, N, dtype=torch.bool).scatter_(1, tuples.reshape(X, M * K), True)
        best_seen = reward.masked_fill(~seen, -math.inf).argmax(dim=-1)
        for name, t in (
            ("ref_logits", ref_logits),
            ("ref_logps", ref_logps),
            ("reward", reward),
            ("features", feats),
            ("tuples", tuples),
            ("tuple_rewards", data_r),
            ("pairs", tuples.gather(2, pos)),
            ("pair_rewards", data_r.gather(2, pos)),
            ("seen", seen),
            ("best_seen", best_seen),
        ):
            parts.setdefault(name, []).append(t)
    tensors = {}
    for name, ts in parts.items():
        t = torch.stack(ts).to(device)
        tensors[name] = t.to(dtype) if t.is_floating_point() else t
    # In the working dtype, with the very call the policies make, so that log π_θ == log μ bit for
    # bit at step 0 (the float64 copy above only served the sampling).
    tensors["ref_logps"] = F.log_softmax(tensors["ref_logits"], dim=-1)
    return Bandit(config=config, seeds=seeds, **tensors)


def _pair_positions(view: str, data_r: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Positions ``[X, M, 2]`` (chosen, rejected) inside best-first tuples for a pairwise view."""
    X, M, K = data_r.shape
    first = torch.zeros(X, M, dtype=torch.long)
    if view == "best_worst":
        second = torch.full((X, M), K - 1, dtype=torch.long)
    elif view == "best_second":
        second = torch.ones(X, M, dtype=torch.long)
    elif view == "best_random":
        second = torch.randint(1, K, (X, M), generator=g)
    else:  # bradley_terry: a uniformly random pair i < j, then i ≻ j with probability σ(r_i − r_j)
        keys = torch.rand(X, M, K, generator=g)
        ij = torch.sort(keys.topk(2, dim=-1).indices, dim=-1).values
        r_ij = data_r.gather(2, ij)
        flip = torch.rand(X, M, generator=g, dtype=data_r.dtype) >= torch.sigmoid(r_ij[..., 0] - r_ij[..., 1])
        first = torch.where(flip, ij[..., 1], ij[..., 0])
        second = torch.where(flip, ij[..., 0], ij[..., 1])
    return torch.stack([first, second], dim=-1)
