"""The toy's presets: the classroom experiments of ``toy/demo.py`` and the tutorials' quick run.

:data:`PRESETS` holds the named experiments (``classic``, ``k4-rewards``, ``alpha-sweep``,
``beta-sweep``, ``zoo``), each a few :class:`~ncakit.toy.trainer.Setting` run side by side;
:func:`run_preset` trains one as a single batched program. The ``zoo`` preset trains every
registered loss (:func:`zoo_losses`, with per-loss keyword overrides :data:`ZOO_LOSS_KWARGS`).
:func:`quick_run` trains one small setting in about a second: the engine of the tutorials' live
sliders.

    from ncakit.toy.presets import run_preset
    runs = run_preset("classic", seeds=range(8))        # {setting name: History}
    runs["tabular-overlap"].final("chosen")              # [L, S] final chosen log-ratio
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ncakit.registry import LOSS_SPECS
from ncakit.toy.bandit import BanditConfig
from ncakit.toy.policies import FAMILIES, PolicyConfig
from ncakit.toy.trainer import BanditTrainConfig, History, Setting, normalize_loss_kwargs, train_bandits
from ncakit.validation import check_choice, check_int

__all__ = [
    "CLASSIC_BETA",
    "CLASSIC_ALPHA",
    "CLASSIC_LR",
    "CLASSIC_STEPS",
    "REPORTS",
    "Preset",
    "PRESETS",
    "get_preset",
    "preset_settings",
    "run_preset",
    "quick_run",
    "ZOO_EXCLUDED",
    "ZOO_LOSS_KWARGS",
    "ZOO_STEPS",
    "zoo_losses",
]

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


#: What ``toy/demo.py`` writes for a preset (``Preset.report``): the four standard figures, or the zoo's.
REPORTS = ("standard", "zoo")


@dataclass(frozen=True)
class Preset:
    """A named experiment: settings run side by side, the losses, the length, and which figures.

    ``sweep`` names the hyper-parameter that varies across the settings (``"alpha"``/``"beta"``),
    for the sweep figure; ``None`` otherwise. ``loss_kwargs`` are per-loss keyword overrides
    (:attr:`BanditTrainConfig.loss_kwargs`), applied to the losses of a run that has them. ``report`` says
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
        check_choice("report", self.report, REPORTS)
        object.__setattr__(self, "loss_kwargs", normalize_loss_kwargs(self.loss_kwargs, None))

    def kwargs_for(self, losses: Sequence[str]) -> dict[str, dict[str, object]]:
        """The preset's keyword overrides of the given losses (``{loss: {keyword: value}}``)."""
        return {name: dict(kw) for name, kw in self.loss_kwargs if name in losses}


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
        check_choice("policy", f, FAMILIES)
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
    check_int("steps", steps, 1)
    losses = tuple(losses) if losses is not None else preset.losses
    config = BanditTrainConfig(
        losses=losses,
        steps=steps,
        log_every=log_every if log_every is not None else max(1, steps // 100),
        loss_kwargs=preset.kwargs_for(losses),
    )
    return train_bandits(
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
            :class:`BanditTrainConfig`, :class:`BanditConfig`, :class:`Setting` and :func:`train_bandits`.
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
    steps = check_int("steps", steps, 1)
    train_config = BanditTrainConfig(losses=tuple(losses), steps=steps, log_every=max(1, steps // 50))
    return train_bandits(setting, seeds, train_config, threads=threads)["live"]
