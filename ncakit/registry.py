"""The loss registry: one entry per loss, read by every track.

A :class:`LossSpec` carries every fact about a loss that any part of ncakit needs: its function,
aliases, whether it is K-way or pairwise, whether it needs rewards, whether it is reference-free,
the keyword arguments it accepts (read from the function's signature), its TRL name, paper,
display label and colour. The toy trainer, the figures, the scale config and the tests all read
these entries; nothing about a loss is written down anywhere else.

    >>> from ncakit.registry import get_loss, loss_spec
    >>> loss_spec("sigmoid").name, loss_spec("nca").kind, loss_spec("nca").keywords
    ('dpo', 'k-way', ('alpha', 'first_bonus'))

Adding a loss is one function (the core signature, see :mod:`ncakit.losses`) and one
:func:`register_loss` call with its :class:`LossSpec`. :func:`check_loss_kwargs` is the one check
of per-loss keyword arguments, used by the toy trainer and the scale config alike.

This module imports nothing but torch; the losses register themselves when ``ncakit`` is imported
(``ncakit/__init__.py`` imports :mod:`ncakit.losses` and :mod:`ncakit.zoo`).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

__all__ = [
    "LossSpec",
    "LOSS_SPECS",
    "ALIASES",
    "CALL_ARGUMENTS",
    "register_loss",
    "loss_spec",
    "loss_names",
    "get_loss",
    "check_loss_kwargs",
    "loss_color",
    "loss_label",
    "REFERENCE_COLOR",
]

LossFn = Callable[..., object]

#: Arguments of the common loss call, passed by whoever calls the loss (a trainer, a notebook): they
#: are never per-loss keyword arguments. ``beta`` is the one exception, see :func:`check_loss_kwargs`.
CALL_ARGUMENTS = ("policy_logps", "ref_logps", "rewards", "beta", "mask", "validate")
#: Keyword inputs that are per-example tensors (IPO's ``lengths``): a caller passes them with the
#: data, a configuration cannot.
TENSOR_KEYWORDS = ("lengths",)

#: The reference policy μ (and other neutral references) in every figure: a neutral grey, apart from
#: every loss colour in lightness as well as hue.
REFERENCE_COLOR = "#6E6E6E"
# Paul Tol's "muted" palette (colour-blind safe) for names that are not registered.
_FALLBACK_COLORS = (
    "#CC6677",
    "#117733",
    "#88CCEE",
    "#DDCC77",
    "#44AA99",
    "#882255",
    "#332288",
    "#999933",
    "#AA4499",
)


def _keywords(fn: LossFn) -> tuple[str, ...]:
    """The keyword-only parameters of ``fn`` beyond the common call, in signature order."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValueError(
            f"fn: {getattr(fn, '__name__', fn)!r} takes **kwargs, so its keywords cannot be checked; give it an "
            "explicit signature (a wrapper can set __signature__, as ncakit.zoo's wrappers do)"
        )
    skip = set(CALL_ARGUMENTS) | set(TENSOR_KEYWORDS)
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip)


@dataclass(frozen=True)
class LossSpec:
    """Everything ncakit knows about one loss.

    Attributes:
        name: canonical name (``get_loss(name)``); ``aliases``: other accepted names (TRL's first).
        fn: the loss function, with the core signature of :mod:`ncakit.losses`.
        kind: ``"k-way"`` (any K >= 2) or ``"pairwise"`` (K = 2, chosen in column 0).
        needs_rewards: whether the call must pass ``rewards`` (K-way reward losses).
        reference_free: whether the loss scores π_θ's own log-probs, with no reference in it.
        paper: the source, with its arXiv id where there is one.
        label: display name in figures and tables; ``color``: its colour in every figure.
        trl_name: TRL's ``loss_type`` for the same loss, where TRL has it.
        keywords: the keyword arguments the loss accepts beyond the common call (``alpha``,
            ``label_smoothing`` ...), read from ``fn``'s signature; not given by hand.
    """

    name: str
    fn: LossFn
    kind: Literal["k-way", "pairwise"]
    needs_rewards: bool
    paper: str
    label: str
    color: str
    reference_free: bool = False
    trl_name: str | None = None
    aliases: tuple[str, ...] = ()
    keywords: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        if self.kind not in ("k-way", "pairwise"):
            raise ValueError(f"kind: expected 'k-way' or 'pairwise', got {self.kind!r}")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "keywords", _keywords(self.fn))

    @property
    def pairwise(self) -> bool:
        """K = 2 only, chosen response in column 0."""
        return self.kind == "pairwise"

    @property
    def takes_alpha(self) -> bool:
        """Whether the loss has the reward temperature α (a trainer passes its α only to these)."""
        return "alpha" in self.keywords


#: Canonical name -> :class:`LossSpec`, in registration order (core losses first, then the zoo).
LOSS_SPECS: dict[str, LossSpec] = {}
#: Alias -> canonical name.
ALIASES: dict[str, str] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add a loss (and its aliases) to the registry; names must be new."""
    if not isinstance(spec, LossSpec):
        raise TypeError(f"spec: expected a LossSpec, got {type(spec).__name__}")
    for name in (spec.name, *spec.aliases):
        if name in LOSS_SPECS or name in ALIASES:
            raise ValueError(f"spec: a loss named {name!r} is already registered")
    LOSS_SPECS[spec.name] = spec
    for alias in spec.aliases:
        ALIASES[alias] = spec.name
    return spec


def loss_names(*, aliases: bool = False) -> list[str]:
    """Registered canonical names (registration order), plus the aliases if asked."""
    return [*LOSS_SPECS, *(ALIASES if aliases else ())]


def loss_spec(name: str) -> LossSpec:
    """The :class:`LossSpec` of a loss name or alias (``ValueError`` listing the names if unknown)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name (str), got {type(name).__name__}")
    key = ALIASES.get(name, name)
    if key not in LOSS_SPECS:
        raise ValueError(f"name: unknown loss {name!r}; expected one of {sorted(loss_names(aliases=True))}")
    return LOSS_SPECS[key]


def get_loss(name: str) -> LossFn:
    """Look a loss up by name: ``get_loss("nca")(policy_logps, ref_logps, rewards, beta=0.1)``.

    Names follow TRL where TRL has the loss (``"sigmoid"`` = ``"dpo"``, ``"ipo"``, ``"hinge"``,
    ``"robust"``, ``"nca_pair"``, ``"bco_pair"``); :func:`loss_names` lists them all.
    """
    return loss_spec(name).fn


def check_loss_kwargs(name: str, loss_kwargs: Mapping[str, object], *, where: str = "loss_kwargs") -> dict:
    """The one check of a loss's keyword arguments, for the toy trainer and the scale config alike.

    Accepted: the loss's own keywords (:attr:`LossSpec.keywords`, e.g. ``alpha`` for every K-way
    reward loss, the LSC and f-divergence variants included) and ``beta``, which overrides the
    caller's β for this loss. Refused with one line naming the key: the data arguments of the
    common call (``mask``, ``rewards`` ...), ``validate`` (the caller's choice), per-example
    tensors (``lengths``) and unknown keys. Values are then checked by calling the loss once on a
    one-prompt batch at policy = reference, so a bad value fails here and not mid-run.

    Returns a plain ``dict`` copy of ``loss_kwargs``.
    """
    spec = loss_spec(name)
    if not isinstance(loss_kwargs, Mapping):
        raise TypeError(
            f"{where}: expected a mapping {{keyword: value}} for loss {spec.name!r}, got {type(loss_kwargs).__name__}"
        )
    allowed = ["beta", *spec.keywords]
    for key in loss_kwargs:
        if key in CALL_ARGUMENTS and key != "beta":
            raise ValueError(f"{where}: {key!r} is passed by the trainer with every call, not per loss")
        if key in TENSOR_KEYWORDS:
            raise ValueError(f"{where}: {key!r} is a per-example tensor the trainer passes with the data")
        if key not in allowed:
            raise ValueError(
                f"{where}: {key!r} is not a keyword of loss {spec.name!r}; allowed values: {allowed}"
            )
    kwargs = dict(loss_kwargs)
    k = 2 if spec.pairwise else 3
    zeros = torch.zeros(1, k, dtype=torch.float64)
    rewards = (
        torch.linspace(1.0, 0.0, k, dtype=torch.float64)[None]
        if spec.needs_rewards or spec.pairwise
        else None
    )
    try:
        spec.fn(zeros, zeros, rewards, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None
    return kwargs


def loss_color(name: str) -> str:
    """The colour of a loss in every figure (aliases map to their loss). Unregistered names get a
    stable colour: the same name gives the same colour in every process (md5, not ``hash``)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name (str), got {type(name).__name__}")
    key = ALIASES.get(name, name)
    if key in LOSS_SPECS:
        return LOSS_SPECS[key].color
    digest = int(hashlib.md5(key.encode()).hexdigest(), 16)
    return _FALLBACK_COLORS[digest % len(_FALLBACK_COLORS)]


def loss_label(name: str) -> str:
    """Display name of a loss (``"nca_pair"`` -> ``"NCA (pairwise)"``); unregistered names unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name (str), got {type(name).__name__}")
    key = ALIASES.get(name, name)
    return LOSS_SPECS[key].label if key in LOSS_SPECS else name
