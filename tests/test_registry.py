"""The loss registry (ncakit.registry): one entry per loss that every track reads, and one keyword
check that the toy trainer and the scale config share, so both give the same verdict on the same
per-loss keywords."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch

import ncakit  # noqa: F401  (registers the core and zoo losses)
from ncakit import losses as L
from ncakit.registry import (
    ALIASES,
    CALL_ARGUMENTS,
    LOSS_SPECS,
    LossSpec,
    check_loss_kwargs,
    get_loss,
    loss_color,
    loss_label,
    loss_spec,
    register_loss,
)


def _toy_verdict(name: str, kwargs: dict) -> str | None:
    """None if the toy trainer accepts ``{name: kwargs}``, else the exception type's name."""
    from ncakit.toy.trainer import BanditTrainConfig

    try:
        BanditTrainConfig(losses=(name,), loss_kwargs={name: kwargs})
    except (TypeError, ValueError) as err:
        return type(err).__name__
    return None


def _scale_verdict(name: str, kwargs: dict) -> str | None:
    """None if the scale config accepts ``--loss name --loss_kwargs <kwargs>``, else the exception type."""
    pytest.importorskip("yaml")
    from ncakit.scale.cli import parse_config

    try:
        parse_config(["--loss", name, "--loss_kwargs", json.dumps(kwargs)])
    except (TypeError, ValueError) as err:
        return type(err).__name__
    return None


def _defaults(spec: LossSpec) -> dict:
    params = inspect.signature(spec.fn).parameters
    return {k: params[k].default for k in spec.keywords}


# The cases that disagreed between the two tracks before the registry had one checker, and the rules.
AGREEMENT = [
    ("nca_lsc", {"alpha": 0.5}, None),  # a wrapper takes its base loss's alpha (the scale refused it)
    ("infonca_lsc", {"alpha": 0.5, "reference_quantile": 0.25}, None),
    ("nca", {"validate": False}, "ValueError"),  # the caller's choice, not a loss keyword (scale accepted)
    ("ipo", {"lengths": [3, 4]}, "ValueError"),  # a per-example tensor (scale accepted)
    ("asft", {"beta": 1.0}, None),  # a per-loss beta override (the toy accepted, the scale refused)
    ("nca", {"beta": 0.0}, "ValueError"),  # ... checked like beta itself
    ("nca", {"mask": None}, "ValueError"),
    ("nca", {"alpha": -1.0}, "ValueError"),  # values are checked too, by one call of the loss
    ("label_smoothed_dpo", {"label_smoothing": 0.7}, None),
    ("robust_dpo", {"label_smoothing": 0.7}, "ValueError"),  # robust needs eps < 1/2
    ("dpo", {"label_smoothing": 0.1}, "ValueError"),  # dpo has no label smoothing: use cdpo
    ("nca_pair", {"alpha": 1.0}, "ValueError"),  # pairwise: no reward temperature
    ("f_dpo", {"divergence": "js_divergence"}, None),
    ("f_dpo", {"divergence": "hellinger"}, "ValueError"),
    ("sppo", {"alpha": 1.0}, None),
    ("pro", {"temperature": "yes"}, "TypeError"),
]


@pytest.mark.parametrize(("name", "kwargs", "verdict"), AGREEMENT, ids=[f"{c[0]}-{c[1]}" for c in AGREEMENT])
def test_toy_and_scale_agree_on_loss_keywords(name, kwargs, verdict):
    assert _toy_verdict(name, kwargs) == verdict
    assert _scale_verdict(name, kwargs) == verdict


@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_every_loss_accepts_its_own_keywords_in_both_tracks_and_nothing_else(name):
    spec = loss_spec(name)
    own = _defaults(spec)
    assert _toy_verdict(name, own) is None and _scale_verdict(name, own) is None, own
    assert (
        _toy_verdict(name, {"not_a_keyword": 1}) == _scale_verdict(name, {"not_a_keyword": 1}) == "ValueError"
    )


@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_keywords_are_the_signature_minus_the_common_call(name):
    spec = loss_spec(name)
    params = inspect.signature(spec.fn).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), "explicit signature"
    assert set(spec.keywords).isdisjoint(CALL_ARGUMENTS)
    for kw in spec.keywords:  # every listed keyword really reaches the function
        assert kw in params
    assert spec.takes_alpha == ("alpha" in params)
    # The K-way reward losses all take the reward temperature alpha: one call fits every one of them.
    if spec.kind == "k-way" and spec.needs_rewards:
        assert spec.takes_alpha, name


def test_wrappers_expose_their_base_loss_keywords():
    assert set(loss_spec("nca").keywords) <= set(loss_spec("nca_lsc").keywords)
    assert {"reference_reward", "reference_quantile"} <= set(loss_spec("nca_lsc").keywords)
    assert set(loss_spec("f_dpo_js").keywords) == {"divergence", "f_alpha_divergence_coef"}


@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_every_entry_is_complete(name):
    spec = loss_spec(name)
    assert spec.kind in ("k-way", "pairwise") and spec.pairwise == (spec.kind == "pairwise")
    assert re.fullmatch(r"#[0-9A-F]{6}", spec.color), spec.color
    assert spec.label and loss_label(name) == spec.label and loss_color(name) == spec.color
    assert re.search(r"(19|20)\d\d", spec.paper), spec.paper
    assert get_loss(name) is spec.fn
    for alias in spec.aliases:
        assert ALIASES[alias] == name and loss_spec(alias) is spec


def test_reference_free_losses_are_the_ones_that_ignore_the_reference():
    # Shifting the reference log-probs changes every reference-based loss and no reference-free one.
    g = torch.Generator().manual_seed(0)
    for name, spec in LOSS_SPECS.items():
        K = 2 if spec.pairwise else 4
        pol = -torch.rand(5, K, generator=g, dtype=torch.float64) * 5 - 1  # log-probs < 0
        ref = -torch.rand(5, K, generator=g, dtype=torch.float64) * 5 - 1
        rew = torch.sort(torch.randn(5, K, generator=g, dtype=torch.float64), dim=1, descending=True).values
        kw = {"alpha": 1.0} if spec.takes_alpha else {}
        a = spec.fn(pol, ref, rew, beta=0.5, **kw).loss
        b = spec.fn(pol, ref - torch.rand(5, K, generator=g, dtype=torch.float64), rew, beta=0.5, **kw).loss
        assert torch.allclose(a, b) == spec.reference_free, name


def test_adding_a_loss_is_one_function_and_one_entry():
    def hinge_squared(
        policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, margin=1.0, validate=True
    ):
        """Squared hinge on the margin (a test loss)."""
        beta, s = L.pairwise_setup(policy_logps, ref_logps, rewards, mask, beta, validate)
        h = beta * (s[:, 0] - s[:, 1])
        return L.loss_output(torch.relu(margin - h) ** 2, s, beta, L.chosen_one_hot(s))

    spec = LossSpec("hinge_sq_test", hinge_squared, "pairwise", False, "a test, 2026", "hinge²", "#123456")
    register_loss(spec)
    try:
        assert spec.keywords == ("margin",)
        zeros = torch.zeros(3, 2)
        assert torch.allclose(get_loss("hinge_sq_test")(zeros, zeros, margin=2.0).loss, torch.full((3,), 4.0))
        assert _toy_verdict("hinge_sq_test", {"margin": 2.0}) is None
        assert _scale_verdict("hinge_sq_test", {"margin": 2.0}) is None
        assert loss_color("hinge_sq_test") == "#123456"
        with pytest.raises(ValueError, match="already registered"):
            register_loss(spec)
    finally:
        del LOSS_SPECS["hinge_sq_test"]


def test_a_loss_with_open_kwargs_is_refused():
    def open_loss(policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, validate=True, **kw):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="takes \\*\\*kwargs"):
        LossSpec("open", open_loss, "k-way", True, "x 2026", "open", "#000000")


def test_check_loss_kwargs_errors_name_the_key():
    with pytest.raises(
        ValueError, match=r"^loss_kwargs: 'gamma' is not a keyword of loss 'dpo'; allowed values: \['beta'\]"
    ):
        check_loss_kwargs("dpo", {"gamma": 1})
    with pytest.raises(TypeError, match=r"^loss_kwargs: expected a mapping"):
        check_loss_kwargs("dpo", [("beta", 1)])
    with pytest.raises(ValueError, match=r"^name: unknown loss 'nope'"):
        check_loss_kwargs("nope", {})
    assert check_loss_kwargs("sigmoid", {"beta": 0.2}) == {"beta": 0.2}  # aliases resolve


@pytest.mark.parametrize("name", list(LOSS_SPECS))
def test_rewards_are_labels_no_gradient_flows_into_them(name):
    spec = loss_spec(name)
    K = 2 if spec.pairwise else 4
    g = torch.Generator().manual_seed(1)
    pol = (-torch.rand(3, K, generator=g) * 4 - 1).requires_grad_(True)
    ref = -torch.rand(3, K, generator=g) * 4 - 1
    rew = torch.sort(torch.rand(3, K, generator=g), dim=1, descending=True).values.requires_grad_(True)
    kw = {"alpha": 0.5} if spec.takes_alpha else {}
    out = spec.fn(pol, ref, rew, beta=0.3, **kw)
    out.loss.sum().backward()
    assert rew.grad is None, f"{name}: a gradient reached the rewards"
    assert pol.grad is not None and torch.isfinite(pol.grad).all()


def test_first_bonus_must_be_finite():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^first_bonus: expected a finite value, got nan"):
        L.nca(zeros, zeros, torch.rand(2, 3), first_bonus=float("nan"))
