"""Contextual bandits that show why DPO/InfoNCA lower the chosen likelihood and NCA does not.

This is the toy track's engine (MATH.md, "What a toy bandit needs to show the effect"). A bandit
has X prompts and N responses, a reference policy μ(y|x) = softmax(ref_logits[x]) and a true reward
r(x, y). The offline data are drawn like the paper's: for every prompt, M tuples of K distinct
responses sampled from μ and scored by the reward (plus optional noise), sorted best-first. The
pairwise losses see a K = 2 view of every tuple (best vs worst / second / random, or a
Bradley–Terry-sampled pair), chosen first.

Policies start EXACTLY at μ: logits = ref_logits + delta, with the trainable delta zero at step 0.
The families differ in what the delta shares:

===========  ==================================================================================
``tabular``  a free logit per (prompt, response): nothing shared (the control)
``linear``   delta = θ·φ(x, y), θ ∈ R^d shared by all prompts and responses
``lowrank``  delta = P_x·Q_y (rank r; P random, Q zero): prompt and response embeddings
``mlp``      delta = MLP(φ(x, y)) (one tanh hidden layer, output layer zero)
===========  ==================================================================================

:func:`train` runs several losses x seeds x settings as ONE batched tensor program: every
setting's parameters are stacked with leading ``[L, S]`` dims (losses x seeds), the settings'
logits are concatenated along the prompt axis for one log-softmax (``[L, S, X_all, N]``), each loss
of ``ncakit.losses`` is called unchanged once per distinct (β, α) on the ``[B, K]`` log-probs of all
settings, the per-(loss, seed, setting) means are summed, and ONE backward and ONE Adam step update
everything. Different (loss, seed, setting) slices never interact, so their gradients are those of
separate runs (a test checks it in float64).

Also here: the closed-form references (π* ∝ μ·exp(r/(αβ)), the reward–KL frontier, NCA's
per-response optimum log(K·w̄)/β), the presets of ``toy/demo.py`` (:data:`PRESETS`; ``zoo`` trains
every registered loss, with per-loss keyword overrides :attr:`TrainConfig.loss_kwargs`), the ranking
accuracy of the final policy (:data:`END_METRICS`, A. Chen et al. 2024 via :mod:`ncakit.ranking`),
the claims the classic preset must show, checked seed by seed (:func:`check_claims`), the
summary/tables of a run (:func:`format_table`, :func:`format_zoo_table`), and :func:`quick_run`: one
small setting in about a second, the engine of the tutorials' live sliders.

Quick start::

    from ncakit import bandit
    runs = bandit.run_preset("classic", seeds=range(8))        # {setting name: History}
    h = runs["tabular-overlap"]
    h.final("chosen")                                           # [L, S] final chosen log-ratio

The command-line front end is ``toy/demo.py``; figures live in :mod:`ncakit.plots`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import ncakit.zoo  # noqa: F401  (registers the zoo losses, which the zoo preset trains)
from ncakit.ranking import ranking_accuracy
from ncakit.registry import LOSS_SPECS, check_loss_kwargs, get_loss, loss_spec

__all__ = [
    "FAMILIES",
    "PAIR_VIEWS",
    "METRICS",
    "END_METRICS",
    "BanditConfig",
    "Bandit",
    "make_bandit",
    "PolicyConfig",
    "Policy",
    "Setting",
    "TrainConfig",
    "History",
    "train",
    "Preset",
    "PRESETS",
    "get_preset",
    "preset_settings",
    "run_preset",
    "quick_run",
    "check_claims",
    "summarize",
    "format_table",
    "format_zoo_table",
    "ZOO_COLUMNS",
    "ZOO_EXCLUDED",
    "ZOO_LOSS_KWARGS",
    "zoo_losses",
    "SUMMARY_METRICS",
    "torch_threads",
]

FAMILIES = ("tabular", "linear", "lowrank", "mlp")
PAIR_VIEWS = ("best_worst", "best_second", "best_random", "bradley_terry")
ROLES = ("", "control", "overlap", "shared")

#: Metrics recorded at every logged step, each ``[T, L, S]`` unless noted (mean over the data).
METRICS = {
    "chosen": "log-ratio s = log π_θ − log μ of the chosen response (rank 1; a pair's column 0)",
    "rejected": "mean log-ratio of the loss's other responses (the pair's rejected; ranks 2..K)",
    "rank_logratio": "[T, L, S, K] log-ratio of the response at each reward rank of the K-tuples",
    "best_logratio": "log-ratio of each prompt's best SEEN response (by true reward)",
    "mass_best": "π_θ mass on each prompt's best seen response",
    "mass_other_seen": "π_θ mass on the other responses that appear in the data",
    "mass_unseen": "π_θ mass on responses that never appear in the data",
    "expected_reward": "E_{π_θ}[r] under the TRUE reward, all N responses",
    "kl": "KL(π_θ || μ) in nats",
    "entropy": "entropy of π_θ in nats",
    "loss": "the loss being minimised (mean over the data)",
    "track_probs": "[T, L, S, N] π_θ(·|x) of one tracked prompt (for the animation)",
}

#: Metrics measured once, at the last step, each ``[L, S]`` (``History.end_metrics``).
#: Ranking accuracy (A. Chen et al. 2024, arXiv:2405.19534) scores the MODEL's likelihood log π_θ(y|x), not
#: the implicit reward, with :func:`ncakit.ranking.ranking_accuracy`; pairs with tied data rewards are
#: skipped and counted in ``History.reference`` (``<name>_scored``, ``<name>_skipped_ties``, and μ's own
#: accuracy ``ref_<name>``).
END_METRICS = {
    "ranking_accuracy": "Def. 2.3 / Eq. 1 over EVERY within-tuple pair of the K-tuples (C(K, 2) per tuple): the "
    "fraction with log π_θ(higher-reward) >= log π_θ(lower-reward)",
    "ranking_accuracy_pairs": "Def. 2.3 / Eq. 1 on the pair view the pairwise losses train on (one pair per tuple)",
    "ranking_accuracy_exact": "Def. A.8 / Eq. 11: the fraction of K-tuples whose π_θ likelihoods are ordered "
    "exactly like their rewards",
}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent CPU generator per (seed, stream), so seed s gives the same draws whether it
    runs alone or inside a batch of seeds (numpy's SeedSequence mixes the pair without collisions)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63 - 1)))


_DATA, _POLICY = 0, 1  # generator streams


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)


def _check_float(name: str, value, *, low: float = 0.0, strict: bool = True, high: float | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if high is not None and value > high:
        bad = True
    if bad:
        rng = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ValueError(f"{name}: expected a finite value {rng}, got {value}")
    return value


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: unknown {value!r}; expected one of {list(choices)}")
    return value


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        raise TypeError(f"seeds: expected a sequence of ints such as range({seeds}), got the int {seeds}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got an empty sequence")
    for s in seeds:
        _check_int("seeds", s, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {list(seeds)}")
    return seeds


# ----------------------------------------------------------------------------------------------
# The bandit and its offline data
# ----------------------------------------------------------------------------------------------


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
        _check_int("n_prompts", self.n_prompts, 1)
        _check_int("n_responses", self.n_responses, 2)
        _check_int("k", self.k, 2)
        if self.k > self.n_responses:
            raise ValueError(
                f"k: expected K <= n_responses (K distinct responses per tuple), got K = {self.k} > N = "
                f"{self.n_responses}"
            )
        _check_int("tuples_per_prompt", self.tuples_per_prompt, 1)
        _check_int("feature_dim", self.feature_dim, 1)
        _check_float("ref_scale", self.ref_scale, strict=False)
        _check_float("reward_fit", self.reward_fit, strict=False, high=1.0)
        _check_float("reward_noise", self.reward_noise, strict=False)
        _check_choice("pair_view", self.pair_view, PAIR_VIEWS)


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
        (MATH.md, InfoNCA) with every response observed. In the paper's units (β = 1) it is
        μ·exp(r/α).
        """
        alpha = _check_float("alpha", alpha)
        beta = _check_float("beta", beta)
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

        NCA pulls each response to r̂* = log(K·w) (MATH.md, NCA); a response that appears in several
        tuples of its prompt is pulled to log(K · mean of its weights), because its loss terms add up.
        Divided by β to give the log-ratio s* = r̂*/β. Exact in the tabular family whenever μ-mass
        is left for the unseen responses (Σ μ·exp(s*) < 1 over the seen ones).
        """
        alpha = _check_float("alpha", alpha)
        beta = _check_float("beta", beta)
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
    seeds = _check_seeds(seeds)
    X, N, K, M, d = (
        config.n_prompts,
        config.n_responses,
        config.k,
        config.tuples_per_prompt,
        config.feature_dim,
    )
    parts: dict[str, list[torch.Tensor]] = {}
    for seed in seeds:  # generation only (cheap, once); training never loops over seeds
        g = _generator(seed, _DATA)
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


# ----------------------------------------------------------------------------------------------
# Policy families (parameters stacked [L, S, ...], delta exactly zero at step 0)
# ----------------------------------------------------------------------------------------------


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
        _check_choice("family", self.family, FAMILIES)
        _check_int("rank", self.rank, 1)
        _check_int("hidden", self.hidden, 1)
        _check_float("init_scale", self.init_scale)


class Policy:
    """Policies of one family for L losses x S seeds on one :class:`Bandit`: logits ``[L, S, X, N]``
    = ref_logits + delta, where ``delta`` is exactly 0 at initialisation.

    Initial weights are drawn per seed (same for every loss, so the losses start from the same
    policy and see the same data: paired comparisons)."""

    def __init__(self, config: PolicyConfig, bandit: Bandit, n_losses: int):
        if not isinstance(config, PolicyConfig):
            raise TypeError(f"config: expected a PolicyConfig, got {type(config).__name__}")
        self.config, self.bandit = config, bandit
        L = _check_int("n_losses", n_losses, 1)
        S, X, N = bandit.shape
        d = bandit.features.shape[-1]
        dev, dt = bandit.ref_logits.device, bandit.ref_logits.dtype

        def per_seed(*shape, scale):  # a random tensor [L, S, *shape], the same for every loss
            draws = [
                torch.randn(*shape, generator=_generator(s, _POLICY), dtype=torch.float64)
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


# ----------------------------------------------------------------------------------------------
# Settings, training configuration and the history
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One experimental condition: a bandit, a policy family and the loss hyper-parameters.

    Attributes:
        name: short id (a key of the results, a column of the figures).
        title: what the figures print above the column.
        bandit, policy: see :class:`BanditConfig`, :class:`PolicyConfig`.
        beta: β of every loss (implicit reward r̂ = β·log-ratio).
        alpha: α of the soft labels w = softmax(r/α), passed to the losses that take it (InfoNCA, NCA).
        lr: learning rate of this setting's parameters.
        role: what the setting demonstrates, used by :func:`check_claims`: ``"control"`` (no loss
            should lower the chosen likelihood), ``"overlap"`` (DPO/InfoNCA lower it, NCA does not),
            ``"shared"`` (as overlap, and the best response falls under DPO/InfoNCA only) or ``""``.
        swappable: whether ``--policy`` replaces this setting's family (the shared settings).
    """

    name: str
    bandit: BanditConfig = field(default_factory=BanditConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    beta: float = 0.1
    alpha: float = 1.0
    lr: float = 0.05
    title: str = ""
    role: str = ""
    swappable: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty str, got {self.name!r}")
        if not isinstance(self.bandit, BanditConfig):
            raise TypeError(f"bandit: expected a BanditConfig, got {type(self.bandit).__name__}")
        if not isinstance(self.policy, PolicyConfig):
            raise TypeError(f"policy: expected a PolicyConfig, got {type(self.policy).__name__}")
        _check_float("beta", self.beta)
        _check_float("alpha", self.alpha)
        _check_float("lr", self.lr)
        _check_choice("role", self.role, ROLES)
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def with_family(self, family: str, *, rename: bool = True) -> Setting:
        """A copy with another policy family; the old family's name in ``name``/``title`` is replaced."""
        _check_choice("family", family, FAMILIES)
        old = self.policy.family
        name, title = self.name, self.title
        if rename:
            name = name.replace(old, family) if old in name else f"{name}-{family}"
            title = title.replace(old, family) if old in title else f"{title}, {family}"
        return dataclasses.replace(
            self, policy=dataclasses.replace(self.policy, family=family), name=name, title=title
        )


@dataclass(frozen=True)
class TrainConfig:
    """How to train: which losses, how long, which optimiser, how often to log.

    Attributes:
        losses: loss names of :mod:`ncakit.losses` (pairwise ones train on the pair view).
        steps: full-batch optimisation steps (every step sees all the data).
        optimizer: ``adam`` or ``sgd`` (both elementwise, so stacked runs stay independent).
        log_every: record the history every this many steps (and at step 0 and the last step).
        track_prompt: the prompt whose full π_θ(·|x) is recorded (for the animation).
        loss_kwargs: per-loss keyword overrides ``{loss: {keyword: value}}`` for the losses of
            ``losses``, applied over the setting's ``beta`` (and ``alpha``, for the losses that take
            it), e.g. ``{"asft": {"beta": 1.0}}``. Every keyword must be one the loss accepts. Stored
            as sorted ``(loss, ((keyword, value), ...))`` pairs so the config stays hashable; read
            them back with :meth:`kwargs_for`.
    """

    losses: tuple[str, ...] = ("dpo", "nca_pair", "infonca", "nca")
    steps: int = 2000
    optimizer: str = "adam"
    log_every: int = 20
    track_prompt: int = 0
    loss_kwargs: Mapping[str, Mapping[str, object]] | tuple = ()

    def __post_init__(self):
        losses = self.losses
        if isinstance(losses, str) or not isinstance(losses, Sequence) or not losses:
            raise ValueError(f"losses: expected a non-empty sequence of loss names, got {losses!r}")
        for name in losses:
            loss_spec(name)  # ValueError listing the known names
        if len(set(losses)) != len(losses):
            raise ValueError(f"losses: expected distinct names, got {list(losses)}")
        object.__setattr__(self, "losses", tuple(losses))
        _check_int("steps", self.steps, 1)
        _check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        _check_int("log_every", self.log_every, 1)
        _check_int("track_prompt", self.track_prompt, 0)
        object.__setattr__(self, "loss_kwargs", _normalize_loss_kwargs(self.loss_kwargs, self.losses))

    def kwargs_for(self, loss: str) -> dict[str, object]:
        """The keyword overrides of one loss (``{}`` if none)."""
        return dict(dict(self.loss_kwargs).get(loss, ()))


def _normalize_loss_kwargs(loss_kwargs, losses: Sequence[str] | None) -> tuple:
    """``{loss: {kw: value}}`` (or its normalised tuple form) -> sorted ``((loss, ((kw, value), ...)), ...)``,
    checking that every loss is registered (and trained, when ``losses`` is given) and accepts every kw
    (:func:`ncakit.registry.check_loss_kwargs`, the check the scale config uses too)."""
    if isinstance(loss_kwargs, tuple):
        loss_kwargs = {name: dict(kw) for name, kw in loss_kwargs}
    if not isinstance(loss_kwargs, Mapping):
        raise TypeError(
            f"loss_kwargs: expected a mapping {{loss: {{keyword: value}}}}, got {type(loss_kwargs).__name__}"
        )
    out = []
    for name, kw in loss_kwargs.items():
        loss_spec(name)  # ValueError listing the known names
        if losses is not None and name not in losses:
            raise ValueError(
                f"loss_kwargs: {name!r} is not one of the trained losses {list(losses)}; drop its overrides "
                "or train it"
            )
        kw = check_loss_kwargs(name, kw, where=f"loss_kwargs[{name!r}]")
        for key, value in kw.items():
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"loss_kwargs[{name!r}][{key!r}]: expected a hashable value (a number, str or bool), "
                    f"got {type(value).__name__}"
                ) from None
        out.append((name, tuple(sorted(kw.items()))))
    return tuple(sorted(out))


@dataclass
class History:
    """Everything recorded for one setting: ``metrics[name]`` is ``[T, L, S, ...]`` (numpy, float64)
    at the logged ``steps`` ``[T]``; ``end_metrics[name]`` ``[L, S]`` are measured at the last step
    only (:data:`END_METRICS`); ``reference`` holds closed-form quantities per seed ``[S, ...]``;
    ``loss_kwargs`` the per-loss keyword overrides the run applied (:attr:`TrainConfig.loss_kwargs`)."""

    setting: Setting
    losses: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    end_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    loss_kwargs: dict[str, dict[str, object]] = field(default_factory=dict)

    def loss_index(self, loss: str) -> int:
        if loss not in self.losses:
            raise ValueError(f"loss: {loss!r} was not trained in this run; trained: {list(self.losses)}")
        return self.losses.index(loss)

    def final(self, metric: str) -> np.ndarray:
        """The last logged value ``[L, S, ...]`` of a metric (or of an end-of-training metric);
        ``"reward_gain"`` is derived: E_π[r] − E_μ[r] ``[L, S]``."""
        if metric in self.metrics:
            return self.metrics[metric][-1]
        if metric in self.end_metrics:
            return self.end_metrics[metric]
        if metric == "reward_gain":
            return self.final("expected_reward") - self.reference["ref_expected_reward"][None]
        known = sorted([*self.metrics, *self.end_metrics, "reward_gain"])
        raise ValueError(f"metric: unknown {metric!r}; expected one of {known}")

    def summary(self, metrics: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """``{loss: {metric: {"mean", "std", "min", "max"}}}`` of the final values over seeds
        (scalar metrics only; the std is the sample std, 0 for one seed)."""
        names = metrics or [m for m, v in self.metrics.items() if v.ndim == 3] + list(self.end_metrics)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for li, loss in enumerate(self.losses):
            out[loss] = {}
            for m in names:
                v = self.final(m)[li]
                out[loss][m] = {
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                    "min": float(v.min()),
                    "max": float(v.max()),
                }
        return out


# ----------------------------------------------------------------------------------------------
# The vectorised trainer
# ----------------------------------------------------------------------------------------------


class _Arm:
    """One setting inside a training run: its bandit, its stacked policy, its place on the fused
    prompt axis (``offset``), and its data as absolute indices into the flattened ``[X_all * N]``."""

    def __init__(self, setting: Setting, seeds, n_losses: int, offset: int, device, dtype):
        self.setting, self.offset = setting, offset
        self.bandit = make_bandit(setting.bandit, seeds, device=device, dtype=dtype)
        self.policy = Policy(setting.policy, self.bandit, n_losses)
        b = self.bandit
        S, X, M, K = b.tuples.shape
        N = b.shape[2]
        self.tuples_per_seed = X * M
        base = (offset + torch.arange(X, device=b.tuples.device)).view(1, X, 1, 1) * N
        self.index = {
            "k": (b.tuples + base).reshape(S, X * M * K),
            "pair": (b.pairs + base).reshape(S, X * M * 2),
        }
        self.ref = {
            "k": b.ref_logps.gather(2, b.tuples.reshape(S, X, M * K)).reshape(S, X * M, K),
            "pair": b.ref_logps.gather(2, b.pairs.reshape(S, X, M * 2)).reshape(S, X * M, 2),
        }
        # A pairwise view ordered by reward carries its rewards (the losses check the order);
        # a Bradley-Terry pair is a label, not a reward ordering.
        bt = setting.bandit.pair_view == "bradley_terry"
        self.rewards = {
            "k": b.tuple_rewards.reshape(S, X * M, K),
            "pair": None if bt else b.pair_rewards.reshape(S, X * M, 2),
        }


class _Rows:
    """The data rows of some arms in one view, laid out ``[S, R]`` seed-major (R = their tuples per
    seed), gathered from the fused log-probs with ONE gather per step."""

    def __init__(self, view: str, arms: list[_Arm]):
        self.view, self.arms = view, arms
        S = arms[0].index[view].shape[0]
        self.kv = arms[0].ref[view].shape[-1]
        cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts, 1)
        self.index = cat([a.index[view] for a in arms])  # [S, R * Kv]
        self.R = sum(a.tuples_per_seed for a in arms)
        self.ref = cat([a.ref[view] for a in arms]).reshape(S * self.R, self.kv)
        rw = [a.rewards[view] for a in arms]
        self.rewards = None if any(r is None for r in rw) else cat(rw).reshape(S * self.R, self.kv)
        # Each (loss, seed, setting) contributes the mean over its own tuples.
        w = [
            torch.full(
                (S, a.tuples_per_seed), 1.0 / a.tuples_per_seed, dtype=self.ref.dtype, device=self.ref.device
            )
            for a in arms
        ]
        self.weight = cat(w).reshape(S * self.R)
        self._expanded = None
        self.starts, start = {}, 0
        for a in arms:
            self.starts[id(a)] = start
            start += a.tuples_per_seed

    def gather(self, flat_logps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[L, S, X_all * N]`` -> one ``[S * R, Kv]`` tensor per loss (unbind: cheap backward)."""
        L = flat_logps.shape[0]
        if self._expanded is None or self._expanded.shape[0] != L:
            self._expanded = self.index.expand(L, *self.index.shape)
        g = flat_logps.gather(2, self._expanded)
        return g.view(L, -1, self.kv).unbind(0)

    def per_arm_mean(self, per_row: torch.Tensor, arm: _Arm) -> torch.Tensor:
        """Per-row values ``[S * R]`` -> the arm's per-seed mean ``[S]``."""
        S = per_row.shape[0] // self.R
        start = self.starts[id(arm)]
        return per_row.reshape(S, self.R)[:, start : start + arm.tuples_per_seed].mean(-1)


class _LossCall:
    """One loss on the rows of every setting that shares its (β, α, K); ``overrides`` (the loss's
    :attr:`TrainConfig.loss_kwargs`) replace or add keywords."""

    def __init__(self, li: int, name: str, rows: _Rows, beta: float, alpha: float, overrides=None):
        self.li, self.rows = li, rows
        self.fn = get_loss(name)
        # α only for the losses that take it (the reward temperature of soft labels, SPPO's win rates,
        # PRO's reward gaps); not DPO's pairwise family.
        self.kwargs = {"beta": beta, "alpha": alpha} if loss_spec(name).takes_alpha else {"beta": beta}
        self.kwargs.update(overrides or {})

    def __call__(self, gathered: dict[int, tuple[torch.Tensor, ...]], validate: bool) -> torch.Tensor:
        logps = gathered[id(self.rows)][self.li]
        # The design card: the SAME call as the tutorials and scale/train.py, on [B, K] log-probs.
        return self.fn(logps, self.rows.ref, self.rows.rewards, validate=validate, **self.kwargs).loss


class _Optimizer:
    """Adam (Kingma & Ba 2015, torch's default hyper-parameters) or SGD on a list of stacked tensors.

    Elementwise, so the [L, S] slices of a tensor are optimised exactly as separate runs would be.
    The update is torch.optim.Adam's (same bias correction and ε placement; a test compares them);
    written with ``torch._foreach_*`` because torch's optimiser spends more time in Python than in
    arithmetic on tensors this small (and its fused variant imports torch._dynamo: ~2 s).
    """

    def __init__(self, name: str, params: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.999), eps=1e-8):
        self.name, self.params, self.lrs = name, params, lrs
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0
        if name == "adam":
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.name == "sgd":
            for p, g, lr in zip(self.params, grads, self.lrs):
                p.add_(g, alpha=-lr)
            return
        self.t += 1
        bc1, bc2 = 1.0 - self.b1**self.t, 1.0 - self.b2**self.t
        torch._foreach_lerp_(self.m, grads, 1.0 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, grads, grads, 1.0 - self.b2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(bc2))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, [-lr / bc1 for lr in self.lrs])


def train(
    settings: Setting | Sequence[Setting],
    seeds: Iterable[int] = range(8),
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int | None = 1,
    progress: bool | Callable[[int], None] = False,
) -> dict[str, History]:
    """Train every loss x seed x setting at once; returns ``{setting.name: History}``.

    One step = the settings' logits concatenated along the prompt axis (``[L, S, X_all, N]``), one
    log-softmax, one gather per (view, group of settings), one call of each loss per distinct
    (β, α, K) on ``[B, K]`` rows, the sum of the per-(loss, seed, setting) mean losses, ONE backward
    and ONE optimiser step. There is no loop over seeds or settings in the step.

    Args:
        settings: one :class:`Setting` or several (distinct names, the same ``n_responses``).
        seeds: the seeds (each gives its own bandit, data and initial weights).
        config: :class:`TrainConfig` (losses, steps, optimiser, logging).
        device, dtype: where and in what precision to run (float32 by default).
        threads: torch intra-op CPU threads during the run, restored afterwards (None: leave as is).
            The default 1 is deliberate: the toy's tensors are tiny, so a second thread buys nothing,
            and on a 2-core machine whose other core is busy it made a step ~40x slower (OpenMP
            barriers waiting on a descheduled thread; 109 vs 2.3 ms in one benchmark run).
        progress: True for a tqdm bar, or a callable called with the number of steps just done.
    """
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        return _train(settings, seeds, config, device, dtype, progress)


def _train(settings, seeds, config, device, dtype, progress) -> dict[str, History]:
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if isinstance(settings, Setting):
        settings = [settings]
    settings = list(settings)
    if not settings or not all(isinstance(s, Setting) for s in settings):
        raise TypeError("settings: expected a Setting or a non-empty sequence of Settings")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"settings: expected distinct names, got {names}")
    sizes = {s.bandit.n_responses for s in settings}
    if len(sizes) > 1:
        raise ValueError(
            f"settings: one run needs the same n_responses in every setting, got {sorted(sizes)}"
        )
    seeds = _check_seeds(seeds)
    for s in settings:
        if config.track_prompt >= s.bandit.n_prompts:
            raise ValueError(
                f"track_prompt: expected < n_prompts = {s.bandit.n_prompts} of setting {s.name!r}, got {config.track_prompt}"
            )
    L = len(config.losses)
    arms, offset = [], 0
    for s in settings:
        arms.append(_Arm(s, seeds, L, offset, device, dtype))
        offset += s.bandit.n_prompts
    ref_logits = (
        arms[0].bandit.ref_logits if len(arms) == 1 else torch.cat([a.bandit.ref_logits for a in arms], 1)
    )

    # Loss calls: settings with the same (β, α, K) share one call per loss, on rows gathered once.
    row_sets: dict[tuple, _Rows] = {}
    calls: list[_LossCall] = []
    for li, name in enumerate(config.losses):
        view = "pair" if loss_spec(name).pairwise else "k"
        groups: dict[tuple, list[_Arm]] = {}
        for a in arms:
            st = a.setting
            key = (st.beta, st.bandit.k) if view == "pair" else (st.beta, st.alpha, st.bandit.k)
            groups.setdefault(key, []).append(a)
        for key, members in groups.items():
            rkey = (view, tuple(id(a) for a in members))
            if rkey not in row_sets:
                row_sets[rkey] = _Rows(view, members)
            calls.append(
                _LossCall(li, name, row_sets[rkey], key[0], members[0].setting.alpha, config.kwargs_for(name))
            )

    params = [p for a in arms for p in a.policy.params]
    opt = _Optimizer(config.optimizer, params, [a.setting.lr for a in arms for _ in a.policy.params])
    recorders = [_Recorder(a, config) for a in arms]
    bar, tick = _progress(progress, config.steps)
    log_at = set(range(0, config.steps + 1, config.log_every)) | {config.steps}
    try:
        for step in range(config.steps + 1):
            deltas = [a.policy.delta() for a in arms]
            delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas, 2)
            logps = F.log_softmax(ref_logits + delta, dim=-1)  # [L, S, X_all, N]
            flat = logps.reshape(*logps.shape[:2], -1)
            gathered = {id(r): r.gather(flat) for r in row_sets.values()}
            per_row = [c(gathered, validate=(step == 0)) for c in calls]
            if step in log_at:
                with torch.no_grad():
                    for rec in recorders:
                        rec.record(step, logps, calls, per_row)
            if step == config.steps:
                break
            total = sum(torch.dot(loss, c.rows.weight) for c, loss in zip(calls, per_row))
            opt.zero_grad()
            total.backward()
            opt.step()
            tick(1)
    finally:
        if bar is not None:
            bar.close()
    return {rec.arm.setting.name: rec.history(seeds) for rec in recorders}


def _progress(progress, total):
    if callable(progress) and not isinstance(progress, bool):
        return None, progress
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="training", unit="step", leave=False, mininterval=0.25)
        return bar, bar.update
    return None, lambda n: None


class _Recorder:
    """Collects the metrics of one setting at the logged steps (all [L, S] at once)."""

    def __init__(self, arm: _Arm, config: TrainConfig):
        self.arm, self.config = arm, config
        self.steps: list[int] = []
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.pairwise = [loss_spec(n).pairwise for n in config.losses]
        self.end: dict[str, np.ndarray] = {}  # END_METRICS, filled at the last step

    def record(self, step, all_logps, calls, per_row):
        arm, b = self.arm, self.arm.bandit
        S, X, M, K = b.tuples.shape
        logps = all_logps[:, :, arm.offset : arm.offset + X]  # [L, S, X, N]
        L = logps.shape[0]
        s_all = logps - b.ref_logps  # log-ratios of every response
        k_s = s_all.gather(3, b.tuples.reshape(S, X, M * K).expand(L, S, X, M * K)).reshape(L, S, X * M, K)
        p_s = s_all.gather(3, b.pairs.reshape(S, X, M * 2).expand(L, S, X, M * 2)).reshape(L, S, X * M, 2)
        rank, pair = k_s.mean(2), p_s.mean(2)  # [L, S, K], [L, S, 2]
        pw = torch.tensor(self.pairwise, device=logps.device)[:, None]
        best_idx = b.best_seen[None, :, :, None].expand(L, S, X, 1)
        p = logps.exp()
        mass_best = p.gather(3, best_idx).squeeze(-1)
        mass_seen = (p * b.seen).sum(-1)
        stats = b.policy_stats(logps)
        loss = torch.zeros(L, S, dtype=logps.dtype, device=logps.device)
        for c, pr in zip(calls, per_row):
            if id(arm) in c.rows.starts:
                loss[c.li] = c.rows.per_arm_mean(pr.detach(), arm)
        values = {
            "chosen": torch.where(pw, pair[..., 0], rank[..., 0]),
            "rejected": torch.where(pw, pair[..., 1], rank[..., 1:].mean(-1)),
            "rank_logratio": rank,
            "best_logratio": s_all.gather(3, best_idx).squeeze(-1).mean(-1),
            "mass_best": mass_best.mean(-1),
            "mass_other_seen": (mass_seen - mass_best).mean(-1),
            "mass_unseen": (1.0 - mass_seen).clamp(min=0.0).mean(-1),
            "expected_reward": stats["expected_reward"],
            "kl": stats["kl"],
            "entropy": stats["entropy"],
            "loss": loss,
            "track_probs": p[:, :, self.config.track_prompt],
        }
        self.steps.append(step)
        for k, v in values.items():
            self.rows.setdefault(k, []).append(v.detach().to("cpu", torch.float64))
        if step == self.config.steps:
            self.end = {
                name: self._ranking(logps, rewards)
                for name, (logps, rewards) in self._ranking_views(k_s, p_s).items()
            }

    def _ranking_views(self, k_s: torch.Tensor, p_s: torch.Tensor) -> dict[str, tuple]:
        """The data views of :data:`END_METRICS`: ``{name: (log π ``[..., S, B, Kv]``, rewards ``[S, B, Kv]``
        or None)}``, log π = log-ratio + log μ (``k_s``/``p_s``: log-ratios ``[..., S, R, K]``/``[..., S, R, 2]``;
        zeros give μ's own ranking accuracy)."""
        arm = self.arm
        k_logps, k_rewards = k_s + arm.ref["k"], arm.rewards["k"]
        K = k_logps.shape[-1]
        # Every within-tuple pair (i, j), i < j: C(K, 2) pairs per tuple, as K = 2 rows.
        i, j = torch.triu_indices(K, K, offset=1, device=k_logps.device)
        pairs_of = lambda t: torch.stack([t[..., i], t[..., j]], dim=-1).flatten(-3, -2)  # noqa: E731
        return {
            "ranking_accuracy": (pairs_of(k_logps), pairs_of(k_rewards)),
            "ranking_accuracy_pairs": (p_s + arm.ref["pair"], arm.rewards["pair"]),
            "ranking_accuracy_exact": (k_logps, k_rewards),
        }

    @staticmethod
    def _ranking(logps: torch.Tensor, rewards: torch.Tensor | None, counts: bool = False):
        """:func:`ncakit.ranking.ranking_accuracy` of log-probs ``[L, S, B, Kv]`` -> ``[L, S]``, one call per
        (loss, seed) since it returns one aggregate per call. With ``counts`` (for μ, ``[S, B, Kv]`` -> ``[S]``)
        also the items scored and those skipped for tied data rewards."""
        logps = logps.detach().to("cpu", torch.float64)
        rewards = None if rewards is None else rewards.detach().to("cpu", torch.float64)
        lead = logps.shape[:-2]
        flat = logps.reshape(-1, *logps.shape[-2:])
        S = 1 if rewards is None else rewards.shape[0]
        res = [ranking_accuracy(x, None if rewards is None else rewards[n % S]) for n, x in enumerate(flat)]
        acc = np.array([r.accuracy.item() for r in res]).reshape(lead)
        if not counts:
            return acc
        scored = np.array([r.total for r in res], dtype=float).reshape(lead)
        skipped = np.array([r.skipped_ties for r in res], dtype=float).reshape(lead)
        return acc, scored, skipped

    def _reference_ranking(self) -> dict[str, np.ndarray]:
        """μ's ranking accuracy ``[S]`` on every view, with the data items each view scores and those it
        skips because their data rewards tie (so that nothing is dropped silently)."""
        arm = self.arm
        S = arm.ref["k"].shape[0]
        zeros_k = torch.zeros_like(arm.ref["k"]).reshape(S, -1, arm.ref["k"].shape[-1])
        zeros_p = torch.zeros_like(arm.ref["pair"])
        out = {}
        for name, (logps, rewards) in self._ranking_views(zeros_k, zeros_p).items():
            acc, scored, skipped = self._ranking(logps, rewards, counts=True)
            out[f"ref_{name}"], out[f"{name}_scored"], out[f"{name}_skipped_ties"] = acc, scored, skipped
        return out

    def history(self, seeds) -> History:
        b, st, config = self.arm.bandit, self.arm.setting, self.config
        metrics = {k: torch.stack(v).numpy() for k, v in self.rows.items()}
        ref_stats = b.policy_stats(b.ref_logps)
        target = b.policy_stats(b.target_logps(st.alpha, st.beta))
        front = b.frontier()
        S, X, M, K = b.tuples.shape
        nca_t = b.nca_targets(st.alpha, st.beta)
        # Is NCA's optimum reachable by a tabular policy? Σ_seen μ·exp(s*) must leave mass <= 1.
        s_star = torch.full_like(b.reward, -math.inf).scatter_(
            2, b.tuples.reshape(S, X, M * K), nca_t.reshape(S, X, M * K)
        )
        need = (b.ref_logps + s_star).exp().sum(-1)  # [S, X]
        reference = {
            "ref_expected_reward": ref_stats["expected_reward"],
            "target_expected_reward": target["expected_reward"],
            "target_kl": target["kl"],
            "frontier_kl": front["kl"],
            "frontier_expected_reward": front["expected_reward"],
            "max_expected_reward": b.reward.max(-1).values.mean(-1),
            "nca_target_rank": nca_t.reshape(S, X * M, K).mean(1),
            "nca_target_feasible": (need <= 1.0).to(b.reward.dtype).mean(-1),
            "track_reward": b.reward[:, config.track_prompt],
            "track_ref_probs": b.ref_logps[:, config.track_prompt].exp(),
            "track_seen": b.seen[:, config.track_prompt].to(b.reward.dtype),
        }
        reference = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in reference.items()}
        # The ranking accuracy of μ, and how many data items it scores (ties in the data rewards are
        # skipped by ncakit.ranking and counted here, so none is dropped silently).
        reference.update(self._reference_ranking())
        return History(
            setting=st,
            losses=config.losses,
            seeds=tuple(seeds),
            steps=np.asarray(self.steps),
            metrics=metrics,
            reference=reference,
            end_metrics=self.end,
            loss_kwargs={name: config.kwargs_for(name) for name, _ in config.loss_kwargs},
        )


# ----------------------------------------------------------------------------------------------
# Presets: the classroom experiments, and the claims the classic one must show
# ----------------------------------------------------------------------------------------------

#: The toy's defaults, chosen so the classic claims hold for every one of 20 seeds (see toy/README.md):
#: β = 0.1 (the paper's small-β regime, where NCA's targets sit well away from DPO's), α = 0.3 (sharp
#: but soft labels), 4-tuples with best-vs-random pairs (how binarized UltraFeedback was built),
#: 8 prompts x 8 overlapping tuples (the control: 16 prompts x 1 tuple; a tabular policy treats
#: prompts independently, so the control's per-prompt dynamics do not depend on how many there are).
CLASSIC_BETA, CLASSIC_ALPHA, CLASSIC_LR, CLASSIC_STEPS = 0.1, 0.3, 0.05, 2000
_OVERLAP = BanditConfig(n_prompts=8, n_responses=32, k=4, tuples_per_prompt=8, pair_view="best_random")
_CONTROL = dataclasses.replace(_OVERLAP, n_prompts=16, tuples_per_prompt=1)


def _three_settings(beta: float, alpha: float) -> tuple[Setting, ...]:
    kw = {"beta": beta, "alpha": alpha, "lr": CLASSIC_LR}
    return (
        Setting(
            "tabular-control",
            _CONTROL,
            PolicyConfig("tabular"),
            title="tabular, 1 tuple per prompt",
            role="control",
            **kw,
        ),
        Setting(
            "tabular-overlap",
            _OVERLAP,
            PolicyConfig("tabular"),
            title="tabular, 8 overlapping tuples",
            role="overlap",
            **kw,
        ),
        Setting(
            "lowrank",
            _OVERLAP,
            PolicyConfig("lowrank"),
            title="lowrank (shared), 8 tuples",
            role="shared",
            swappable=True,
            **kw,
        ),
    )


@dataclass(frozen=True)
class Preset:
    """A named experiment: settings run side by side, the losses, the length, and which figures.

    ``sweep`` names the hyper-parameter that varies across the settings (``"alpha"``/``"beta"``),
    for the sweep figure; ``None`` otherwise. ``loss_kwargs`` are per-loss keyword overrides
    (:attr:`TrainConfig.loss_kwargs`), applied to the losses of a run that has them. ``report`` says
    what ``toy/demo.py`` writes: ``"standard"`` (dynamics, mass, reward–KL and rank figures) or
    ``"zoo"`` (``zoo.png`` and ``zoo_table.md``: one point / row per loss, for many losses)."""

    name: str
    description: str
    settings: tuple[Setting, ...]
    losses: tuple[str, ...]
    steps: int = CLASSIC_STEPS
    sweep: str | None = None
    loss_kwargs: Mapping[str, Mapping[str, object]] | tuple = ()
    report: str = "standard"

    def __post_init__(self):
        _check_choice("report", self.report, REPORTS)
        object.__setattr__(self, "loss_kwargs", _normalize_loss_kwargs(self.loss_kwargs, None))

    def kwargs_for(self, losses: Sequence[str]) -> dict[str, dict[str, object]]:
        """The preset's keyword overrides of the given losses (``{loss: {keyword: value}}``)."""
        return {name: dict(kw) for name, kw in self.loss_kwargs if name in losses}


REPORTS = ("standard", "zoo")


def _sweep(param: str, values, losses, description) -> Preset:
    settings = []
    for v in values:
        kw = {"beta": CLASSIC_BETA, "alpha": CLASSIC_ALPHA, param: v}
        sym = {"alpha": "α", "beta": "β"}[param]
        settings.append(
            Setting(
                f"{param}={v:g}",
                _OVERLAP,
                PolicyConfig("tabular"),
                lr=CLASSIC_LR,
                title=f"{sym} = {v:g}",
                swappable=True,
                **kw,
            )
        )
    return Preset(f"{param}-sweep", description, tuple(settings), tuple(losses), sweep=param)


#: Registered losses the zoo preset leaves out, and why; it runs every other canonical (non-alias) name.
ZOO_EXCLUDED = {
    "f_dpo": "its default divergence (reverse KL) is DPO itself; the zoo runs f_dpo_forward_kl / _js / _alpha",
}
#: The zoo preset's per-loss keyword overrides (each explained in toy/README.md, "The zoo preset").
#: Every loss gets the setting's β and, if it takes one, α (as in classic); its other keywords keep their
#: defaults. ASFT keeps its OWN default β = 1: the paper has no β (the odds enter unscaled), and there β
#: is no KL strength (ASFT has no reference), so the setting's β would be a knob of ours, not the loss.
ZOO_LOSS_KWARGS = {"asft": {"beta": 1.0}}
#: Steps of the zoo preset: half the classic's, so 20 losses x 3 settings x 8 seeds train in ~13 s on one
#: CPU core (2000 steps: ~24 s; both measured on a shared machine). The classic's signs are there at 1000.
ZOO_STEPS = 1000


def zoo_losses() -> tuple[str, ...]:
    """Every registered canonical loss name (core + :mod:`ncakit.zoo`, registry order) except
    :data:`ZOO_EXCLUDED`: what the zoo preset trains."""
    return tuple(name for name in LOSS_SPECS if name not in ZOO_EXCLUDED)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "classic",
            "The three settings side by side (MATH.md, 'What a toy bandit needs'): a tabular policy with one "
            "comparison per prompt (control: every loss raises the chosen likelihood), a tabular policy with "
            "overlapping comparisons (DPO/InfoNCA push the average chosen log-ratio far below 0, NCA keeps it "
            "above), and a shared low-rank policy (displacement: even the best response falls under DPO/InfoNCA "
            "and mass leaks to unseen responses; NCA resists).",
            _three_settings(CLASSIC_BETA, CLASSIC_ALPHA),
            ("dpo", "nca_pair", "infonca", "nca"),
        ),
        Preset(
            "k4-rewards",
            "K = 4 reward data with soft labels (β = 1, α = 1, where NCA's optimum is reachable): the log-ratio "
            "of each reward rank. NCA pulls every response to its own absolute target log(K·w)/β (dashed); "
            "InfoNCA only fixes the differences r/α and lets a common shift drift the whole tuple down.",
            _three_settings(1.0, 1.0),
            ("infonca", "nca"),
        ),
        _sweep(
            "alpha",
            (0.1, 0.3, 1.0, 3.0),
            ("infonca", "nca"),
            "Reward temperature α (tabular, overlapping tuples, β = 0.1): sharper labels (small α) make InfoNCA "
            "concentrate mass on the best response and push the average chosen log-ratio further down; NCA's "
            "chosen log-ratio stays near or above 0 for every α.",
        ),
        _sweep(
            "beta",
            (0.03, 0.1, 0.3, 1.0),
            ("dpo", "nca_pair", "infonca", "nca"),
            "KL strength β (tabular, overlapping tuples, α = 0.3): a small β lets every loss move far from μ; "
            "the fall of the chosen likelihood under DPO/InfoNCA grows as β shrinks, NCA's does not appear.",
        ),
        Preset(
            "zoo",
            "Every registered loss (core + ncakit.zoo: SPPO, f-DPO, DPOP, PRO, ASFT, CPL, LSC rewards) on the "
            "classic's three settings, 1000 steps: a table (zoo_table.md) of the final chosen and best-response "
            "log-ratios, mass on unseen responses, reward gain, KL and ranking accuracy, and one figure (zoo.png).",
            _three_settings(CLASSIC_BETA, CLASSIC_ALPHA),
            zoo_losses(),
            steps=ZOO_STEPS,
            loss_kwargs=ZOO_LOSS_KWARGS,
            report="zoo",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """A preset by name (``ValueError`` listing the names if unknown)."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}; expected one of {list(PRESETS)}")
    return PRESETS[name]


def preset_settings(preset: Preset | str, families: Sequence[str] | None = None) -> list[Setting]:
    """The preset's settings, with every swappable one replaced by one copy per family in ``families``."""
    preset = get_preset(preset)
    if families is None:
        return list(preset.settings)
    if isinstance(families, str):
        families = [families]
    families = list(families)
    if not families:
        raise ValueError("families: expected at least one policy family")
    for f in families:
        _check_choice("policy", f, FAMILIES)
    out = []
    for s in preset.settings:
        if not s.swappable:
            out.append(s)
        elif preset.sweep and len(families) == 1:
            out.append(s.with_family(families[0], rename=False))
        else:
            out.extend(s.with_family(f) for f in families)
    return out


def run_preset(
    preset: Preset | str = "classic",
    seeds: Iterable[int] = range(8),
    *,
    losses: Sequence[str] | None = None,
    steps: int | None = None,
    families: Sequence[str] | None = None,
    log_every: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int | None = 1,
    progress: bool | Callable[[int], None] = False,
) -> dict[str, History]:
    """Run a preset (all its settings in one batched program); ``{setting name: History}``.

    ``losses``/``steps`` override the preset's (the preset's per-loss keyword overrides still apply to
    the losses that have them); ``families`` replaces the family of its swappable
    (shared) settings; ``log_every`` defaults to steps/100; ``threads`` sets torch's intra-op threads
    for the run (the toy's tensors are small: 1 thread is the fastest on a 2-core machine).
    """
    preset = get_preset(preset)
    steps = preset.steps if steps is None else steps
    _check_int("steps", steps, 1)
    losses = tuple(losses) if losses is not None else preset.losses
    config = TrainConfig(
        losses=losses,
        steps=steps,
        log_every=log_every if log_every is not None else max(1, steps // 100),
        loss_kwargs=preset.kwargs_for(losses),
    )
    return train(
        preset_settings(preset, families),
        seeds,
        config,
        device=device,
        dtype=dtype,
        threads=threads,
        progress=progress,
    )


def quick_run(
    alpha: float = CLASSIC_ALPHA,
    beta: float = CLASSIC_BETA,
    k: int = 4,
    family: str = "lowrank",
    tuples_per_prompt: int = 8,
    *,
    losses: Sequence[str] = ("dpo", "nca_pair", "infonca", "nca"),
    seeds: Iterable[int] = range(3),
    steps: int = 400,
    n_prompts: int = 8,
    n_responses: int = 32,
    lr: float = CLASSIC_LR,
    pair_view: str = "best_random",
    threads: int | None = 1,
) -> History:
    """ONE small setting of the classic bandit, trained in about a second on one CPU core: the engine
    of the tutorials' live controls (sliders for α, β, K, the policy family and M).

    The bandit is the classic preset's (N = 32 responses, best-vs-random pairs, lr 0.05) with the
    knobs replaced; fewer seeds and steps than the presets keep a redraw interactive. Arguments are
    hashable, so a notebook can wrap it in ``functools.lru_cache``. Returns the setting's
    :class:`History` (metrics ``[T, L, S, ...]``; ``log_every`` = steps/50).

    Args:
        alpha: reward temperature α of the soft labels (InfoNCA, NCA).
        beta: β of every loss (implicit reward r̂ = β·log-ratio).
        k: K, responses per data tuple (2 <= K <= n_responses).
        family: policy family, one of :data:`FAMILIES`.
        tuples_per_prompt: M, data tuples per prompt (1: the control; > 1: overlapping comparisons).
        losses, seeds, steps, n_prompts, n_responses, lr, pair_view, threads: as in
            :class:`TrainConfig`, :class:`BanditConfig`, :class:`Setting` and :func:`train`.
    """
    config = dataclasses.replace(
        _OVERLAP,
        n_prompts=n_prompts,
        n_responses=n_responses,
        k=k,
        tuples_per_prompt=tuples_per_prompt,
        pair_view=pair_view,
    )
    setting = Setting(
        "live",
        config,
        PolicyConfig(family),
        beta=beta,
        alpha=alpha,
        lr=lr,
        title=f"{family}, K = {k}, M = {tuples_per_prompt}, α = {alpha:g}, β = {beta:g}",
    )
    steps = _check_int("steps", steps, 1)
    train_config = TrainConfig(losses=tuple(losses), steps=steps, log_every=max(1, steps // 50))
    return train(setting, seeds, train_config, threads=threads)["live"]


#: Thresholds of the classic claims (log-ratios in nats).
CLAIM_FALL = 2.0  # "clearly below 0": DPO/InfoNCA's mean chosen log-ratio < −2 nats
CLAIM_NEAR = 1.0  # "near or above 0": NCA's > −1 nat
CLAIM_GAP = 3.0  # "far above theirs": NCA's exceeds the higher of DPO/InfoNCA's by > 3 nats
_DPO_LIKE, _NCA_LIKE = ("dpo", "infonca"), ("nca", "nca_pair")


def check_claims(runs: dict[str, History]) -> dict:
    """Check, seed by seed, what the toy must show (MATH.md; toy/README.md), using each setting's role.

    - control: no loss lowers the chosen log-ratio (every final value > 0);
    - overlap and shared: DPO/InfoNCA's final chosen log-ratio < −CLAIM_FALL, NCA's > −CLAIM_NEAR and
      more than CLAIM_GAP above the higher of DPO/InfoNCA's;
    - shared: the best seen response's log-ratio ends < 0 under DPO/InfoNCA and > 0 under NCA;
    - every setting with a role: NCA raises the expected true reward above μ's.

    Only the losses that were trained are checked (dpo/infonca vs nca/nca_pair). Returns
    ``{"n_seeds", "claims": {text: {"holds": [bool per seed], "count"}}, "all": {"holds", "count"}}``.
    """
    claims: dict[str, list[bool]] = {}
    n_seeds = None
    for name, h in runs.items():
        role = h.setting.role
        if not role:
            continue
        n_seeds = len(h.seeds)
        idx = {loss: i for i, loss in enumerate(h.losses)}
        falls = [idx[x] for x in _DPO_LIKE if x in idx]
        ncas = [idx[x] for x in _NCA_LIKE if x in idx]
        chosen, best = h.final("chosen"), h.final("best_logratio")
        gain = h.final("reward_gain")
        if role == "control":
            claims[f"{name}: no loss lowers the chosen log-ratio"] = (chosen > 0).all(0)
        else:
            if falls:
                claims[f"{name}: {'/'.join(h.losses[i] for i in falls)} chosen < -{CLAIM_FALL:g}"] = (
                    chosen[falls] < -CLAIM_FALL
                ).all(0)
            if ncas:
                ok = (chosen[ncas] > -CLAIM_NEAR).all(0)
                if falls:
                    ok &= (chosen[ncas] - chosen[falls].max(0)[None] > CLAIM_GAP).all(0)
                claims[
                    f"{name}: {'/'.join(h.losses[i] for i in ncas)} chosen > -{CLAIM_NEAR:g} and far above"
                ] = ok
            if role == "shared" and (falls or ncas):
                ok = np.ones(len(h.seeds), dtype=bool)
                if falls:
                    ok &= (best[falls] < 0).all(0)
                if ncas:
                    ok &= (best[ncas] > 0).all(0)
                claims[f"{name}: best response falls under DPO/InfoNCA only"] = ok
        if ncas:
            claims[f"{name}: NCA raises the expected reward"] = (gain[ncas] > 0).all(0)
    out = {
        "n_seeds": n_seeds or 0,
        "claims": {k: {"holds": [bool(x) for x in v], "count": int(np.sum(v))} for k, v in claims.items()},
    }
    every = np.all(np.stack(list(claims.values())), axis=0) if claims else np.zeros(0, dtype=bool)
    out["all"] = {"holds": [bool(x) for x in every], "count": int(every.sum())}
    return out


# ----------------------------------------------------------------------------------------------
# Summaries (summary.json and the printed table)
# ----------------------------------------------------------------------------------------------

#: The scalar metrics a summary reports (final values, mean/std/min/max over seeds).
SUMMARY_METRICS = (
    "chosen",
    "rejected",
    "best_logratio",
    "mass_best",
    "mass_other_seen",
    "mass_unseen",
    "expected_reward",
    "reward_gain",
    "kl",
    "entropy",
    "loss",
    *END_METRICS,
)


def summarize(runs: dict[str, History]) -> dict:
    """A JSON-ready summary: per setting its configuration, the final metrics per loss
    (``{"mean", "std", "min", "max"}`` over seeds; ``reward_gain`` = E_π[r] − E_μ[r]), the
    closed-form references (means over seeds), and the claims of :func:`check_claims`."""
    out = {"settings": {}}
    for name, h in runs.items():
        st = h.setting
        final = h.summary(SUMMARY_METRICS)
        for li, loss in enumerate(h.losses):
            final[loss]["rank_logratio"] = [float(x) for x in h.final("rank_logratio")[li].mean(0)]
        ref = h.reference
        out["settings"][name] = {
            "title": st.title,
            "role": st.role,
            "family": st.policy.family,
            "policy": dataclasses.asdict(st.policy),
            "bandit": dataclasses.asdict(st.bandit),
            "beta": st.beta,
            "alpha": st.alpha,
            "lr": st.lr,
            "loss_kwargs": h.loss_kwargs,
            "final": final,
            "reference": {
                "ref_expected_reward": float(ref["ref_expected_reward"].mean()),
                "target_expected_reward": float(ref["target_expected_reward"].mean()),
                "target_kl": float(ref["target_kl"].mean()),
                "max_expected_reward": float(ref["max_expected_reward"].mean()),
                "nca_target_rank": [float(x) for x in ref["nca_target_rank"].mean(0)],
                "nca_target_reachable_fraction": float(ref["nca_target_feasible"].mean()),
                **{f"ref_{m}": float(ref[f"ref_{m}"].mean()) for m in END_METRICS},
                **{f"{m}_scored": int(ref[f"{m}_scored"].sum()) for m in END_METRICS},
                **{f"{m}_skipped_ties": int(ref[f"{m}_skipped_ties"].sum()) for m in END_METRICS},
            },
        }
    out["claims"] = check_claims(runs)
    return out


def format_table(runs: dict[str, History], metric: str = "chosen", *, digits: int = 2) -> str:
    """A text table of the final ``metric`` (or ``"reward_gain"``), one row per loss, one column per
    setting, cells ``mean ± std`` over seeds."""
    hs = list(runs.values())
    cells = [["loss", *runs.keys()]]
    for loss in hs[0].losses:
        row = [loss]
        for h in hs:
            row.append(_cell(h.final(metric)[h.loss_index(loss)], digits, signed=True))
        cells.append(row)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for j, r in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: The columns of :func:`format_zoo_table`: (metric, header, signed).
ZOO_COLUMNS = (
    ("chosen", "chosen log π/μ", True),
    ("best_logratio", "best seen log π/μ", True),
    ("mass_unseen", "mass on unseen", False),
    ("reward_gain", "E[r] gain", True),
    ("kl", "KL(π‖μ)", False),
    ("ranking_accuracy", "ranking acc.", False),
)


def _cell(v: np.ndarray, digits: int, signed: bool) -> str:
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def format_zoo_table(runs: dict[str, History], *, digits: int = 2) -> str:
    """The zoo table as Markdown: a caption, then per setting one row per loss (and μ's row) with the final
    values of :data:`ZOO_COLUMNS`, ``mean ± std`` over seeds.

    The caption says what every column measures, including which ranking-accuracy variant (A. Chen et
    al. 2024 via :func:`ncakit.ranking.ranking_accuracy`: Def. 2.3 / Eq. 1 on every within-tuple pair).
    """
    hs = list(runs.values())
    if not hs:
        raise ValueError("runs: expected a non-empty {setting name: History} dict (ncakit.bandit.train)")
    h0 = hs[0]
    K = h0.setting.bandit.k
    steps, n_seeds = int(h0.steps[-1]), len(h0.seeds)
    overrides = {name: kw for h in hs for name, kw in h.loss_kwargs.items()}
    settings_line = "; ".join(
        f"`{name}`: β = {h.setting.beta:g}, α = {h.setting.alpha:g}" for name, h in runs.items()
    )
    lines = [
        f"Final values after {steps} full-batch Adam steps, mean ± std over {n_seeds} seeds ({settings_line}; "
        f"K = {K}). Pairwise losses (data `pair`) train on one best-vs-random pair per K-tuple, K-way ones on "
        "the whole tuple with its rewards. **chosen log π/μ**: mean log-ratio log π_θ − log μ of the chosen "
        "response of the loss's own data (the pair's chosen; rank 1 of the tuple). **best seen log π/μ**: of "
        "each prompt's best response seen in the data (by true reward). **mass on unseen**: π_θ mass on "
        "responses never seen in the data. **E[r] gain**: E_π_θ[r] − E_μ[r] under the true reward. "
        "**KL(π‖μ)** in nats. **ranking acc.**: ranking accuracy (A. Chen et al. 2024, arXiv:2405.19534, "
        "Def. 2.3 / Eq. 1, via `ncakit.ranking.ranking_accuracy`) of the MODEL's likelihood on every "
        f"within-tuple pair of the training K-tuples ({K * (K - 1) // 2} per tuple): the fraction with "
        "log π_θ(higher-reward response) ≥ log π_θ(lower-reward response); the μ row is the reference "
        "policy's (summary.json also has the variants on the pair view and the exact K-way match, Eq. 11). "
        "† reference-free loss (the loss never sees μ; its log-ratio is still measured against μ)."
        + (
            " Keyword overrides: "
            + ", ".join(
                f"`{n}`: {', '.join(f'{k} = {v}' for k, v in d.items())}" for n, d in overrides.items()
            )
            + " (toy/README.md says why); every other keyword is the loss's default."
            if overrides
            else ""
        ),
        "",
    ]
    header = ["loss", "data", *(c[1] for c in ZOO_COLUMNS)]
    for name, h in runs.items():
        lines += [f"**{h.setting.title}** (`{name}`)", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * len(ZOO_COLUMNS)) + "|")
        ref = h.reference
        mu = {
            "chosen": "0",
            "best_logratio": "0",
            "mass_unseen": _cell(h.metrics["mass_unseen"][0, 0], digits, False),  # step 0: π_θ = μ
            "reward_gain": "0",
            "kl": "0",
            "ranking_accuracy": _cell(ref["ref_ranking_accuracy"], digits, False),
        }
        lines.append("| μ (reference) | | " + " | ".join(mu[c[0]] for c in ZOO_COLUMNS) + " |")
        finals = {m: h.final(m) for m, _, _ in ZOO_COLUMNS}
        for li, loss in enumerate(h.losses):
            info = loss_spec(loss)
            label = f"`{loss}`" + (" †" if loss_spec(loss).reference_free else "")
            data = "pair" if info.pairwise else f"K = {h.setting.bandit.k}"
            cells = [_cell(finals[m][li], digits, signed) for m, _, signed in ZOO_COLUMNS]
            lines.append("| " + " | ".join([label, data, *cells]) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (the toy's tensors are tiny: 1 thread is fastest)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
