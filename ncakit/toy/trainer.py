"""The toy's vectorised trainer: every loss x seed x setting as ONE batched tensor program.

:func:`train_bandits` stacks every setting's policy parameters with leading ``[L, S]`` dims (losses x
seeds), concatenates the settings' logits along the prompt axis for one log-softmax
(``[L, S, X_all, N]``), calls each registered loss unchanged once per distinct (β, α) on the
``[B, K]`` log-probs of all settings, sums the per-(loss, seed, setting) means, and takes ONE
backward and ONE optimiser step (:class:`StackedOptimizer`). Different (loss, seed, setting) slices
never interact, so their gradients are those of separate runs (a test checks it in float64).

What it records: :data:`METRICS` at every logged step and :data:`END_METRICS` (the ranking accuracy
of the final policy, A. Chen et al. 2024 via :mod:`ncakit.ranking`) once, in a :class:`History` per
setting, with the bandit's closed-form references.

    from ncakit.toy.trainer import BanditTrainConfig, Setting, train_bandits
    runs = train_bandits(Setting("s"), seeds=range(4), config=BanditTrainConfig(steps=200))
    runs["s"].final("chosen")                              # [L, S] final chosen log-ratio

The presets of ``toy/demo.py`` are built on it in :mod:`ncakit.toy.presets`.
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

import ncakit.zoo  # noqa: F401  (registers the zoo losses, so every registered loss can be trained)
from ncakit.ranking import ranking_accuracy
from ncakit.registry import check_loss_kwargs, get_loss, loss_spec
from ncakit.toy.bandit import BanditConfig, check_seeds, make_bandit
from ncakit.toy.policies import FAMILIES, Policy, PolicyConfig
from ncakit.validation import check_choice, check_int, check_positive

__all__ = [
    "ROLES",
    "OPTIMIZERS",
    "METRICS",
    "END_METRICS",
    "Setting",
    "BanditTrainConfig",
    "normalize_loss_kwargs",
    "History",
    "StackedOptimizer",
    "train_bandits",
    "torch_threads",
]

#: What a :class:`Setting` demonstrates (``Setting.role``; ``""``: nothing checked).
ROLES = ("", "control", "overlap", "shared")
#: The optimisers of :class:`StackedOptimizer` (``BanditTrainConfig.optimizer``).
OPTIMIZERS = ("adam", "sgd")

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
        role: what the setting demonstrates, used by :func:`ncakit.toy.report.check_claims`: ``"control"`` (no loss
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
        check_positive("beta", self.beta)
        check_positive("alpha", self.alpha)
        check_positive("lr", self.lr)
        check_choice("role", self.role, ROLES)
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def with_family(self, family: str, *, rename: bool = True) -> Setting:
        """A copy with another policy family; the old family's name in ``name``/``title`` is replaced."""
        check_choice("family", family, FAMILIES)
        old = self.policy.family
        name, title = self.name, self.title
        if rename:
            name = name.replace(old, family) if old in name else f"{name}-{family}"
            title = title.replace(old, family) if old in title else f"{title}, {family}"
        return dataclasses.replace(
            self, policy=dataclasses.replace(self.policy, family=family), name=name, title=title
        )


@dataclass(frozen=True)
class BanditTrainConfig:
    """How to train: which losses, how long, which optimiser, how often to log.

    Attributes:
        losses: registered loss names (:mod:`ncakit.registry`; pairwise ones train on the pair view).
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
        check_int("steps", self.steps, 1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_int("log_every", self.log_every, 1)
        check_int("track_prompt", self.track_prompt, 0)
        object.__setattr__(self, "loss_kwargs", normalize_loss_kwargs(self.loss_kwargs, self.losses))

    def kwargs_for(self, loss: str) -> dict[str, object]:
        """The keyword overrides of one loss (``{}`` if none)."""
        return dict(dict(self.loss_kwargs).get(loss, ()))


def normalize_loss_kwargs(loss_kwargs, losses: Sequence[str] | None) -> tuple:
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
    ``loss_kwargs`` the per-loss keyword overrides the run applied (:attr:`BanditTrainConfig.loss_kwargs`)."""

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
    :attr:`BanditTrainConfig.loss_kwargs`) replace or add keywords."""

    def __init__(self, li: int, name: str, rows: _Rows, beta: float, alpha: float, overrides=None):
        self.li, self.rows = li, rows
        self.fn = get_loss(name)
        # α only for the losses that take it (the registry's LossSpec.takes_alpha).
        self.kwargs = {"beta": beta, "alpha": alpha} if loss_spec(name).takes_alpha else {"beta": beta}
        self.kwargs.update(overrides or {})

    def __call__(self, gathered: dict[int, tuple[torch.Tensor, ...]], validate: bool) -> torch.Tensor:
        logps = gathered[id(self.rows)][self.li]
        # The same call as the tutorials and the scale track make, on [B, K] log-probs.
        return self.fn(logps, self.rows.ref, self.rows.rewards, validate=validate, **self.kwargs).loss


class StackedOptimizer:
    """Adam (Kingma & Ba 2015, torch's default hyper-parameters) or SGD on a list of stacked tensors,
    one learning rate per tensor (``lrs``); ``zero_grad()`` then ``step()``, as with a torch optimiser.

    Elementwise, so the [L, S] slices of a tensor are optimised exactly as separate runs would be.
    The update is torch.optim.Adam's (same bias correction and ε placement; a test compares them);
    written with ``torch._foreach_*`` because torch's optimiser spends more time in Python than in
    arithmetic on tensors this small (and its fused variant imports torch._dynamo: ~2 s).
    """

    def __init__(self, name: str, params: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.999), eps=1e-8):
        self.name = check_choice("optimizer", name, OPTIMIZERS)
        self.params, self.lrs = params, lrs
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


def train_bandits(
    settings: Setting | Sequence[Setting],
    seeds: Iterable[int] = range(8),
    config: BanditTrainConfig | None = None,
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
        config: :class:`BanditTrainConfig` (losses, steps, optimiser, logging).
        device, dtype: where and in what precision to run (float32 by default).
        threads: torch intra-op CPU threads during the run, restored afterwards (None: leave as is).
            The default 1 is deliberate: the toy's tensors are tiny, so a second thread buys nothing
            (2.8 vs 2.5 ms per step, benchmarks/results/toy_sweep.json), and on a 2-core machine whose
            other core is busy it made a step tens of times slower (OpenMP barriers waiting on a
            descheduled thread; 109 vs 2.3 ms in one run).
        progress: True for a tqdm bar, or a callable called with the number of steps just done.
    """
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        return _train_bandits(settings, seeds, config, device, dtype, progress)


def _train_bandits(settings, seeds, config, device, dtype, progress) -> dict[str, History]:
    config = config if config is not None else BanditTrainConfig()
    if not isinstance(config, BanditTrainConfig):
        raise TypeError(f"config: expected a BanditTrainConfig, got {type(config).__name__}")
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
    seeds = check_seeds(seeds)
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
    opt = StackedOptimizer(config.optimizer, params, [a.setting.lr for a in arms for _ in a.policy.params])
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

    def __init__(self, arm: _Arm, config: BanditTrainConfig):
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
