"""Argument checks shared by the core and both tracks.

Every check raises at the public boundary with one line that names the argument, what it got and
what was expected (``"beta: expected a finite value > 0, got -1.0"``), so a wrong call fails where it
is made rather than three layers deeper. The losses, the zoo, the ranking metric, the toy trainer
and the scale config all use these functions; nothing here imports beyond torch.

    >>> check_real("beta", 0.1, low=0.0, low_inclusive=False)
    0.1
    >>> check_real("label_smoothing", 0.7, low=0.0, high=0.5, high_inclusive=False)
    Traceback (most recent call last):
    ...
    ValueError: label_smoothing: expected a value in [0, 0.5), got 0.7
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "shape_str",
    "check_tensor",
    "check_real",
    "check_positive",
    "check_int",
    "check_bool",
    "check_choice",
    "check_loss_inputs",
]


def shape_str(t: torch.Tensor) -> str:
    """``"[B, K]"``-style text of a tensor's shape, for error messages."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(name: str, t, *, floating: bool = True) -> None:
    """``t`` is a 2-D ``[B, K]`` tensor (floating point unless ``floating=False``)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [B, K], got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32/float64/bfloat16/float16), got {t.dtype}"
        )
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape [B, K] (2-D: prompts x responses), got {shape_str(t)}")


def _range_text(low, low_inclusive, high, high_inclusive) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {high:g}"
    return ""


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    high_inclusive: bool = True,
) -> float:
    """A finite real number (Python, NumPy or a one-element tensor) within the given bounds, as a float.

    Bools are refused (``True`` is an int to Python, never a learning rate to a person)."""
    wanted = _range_text(low, low_inclusive, high, high_inclusive)
    a_float = "a float" + (f" {wanted}" if wanted else "")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name}: expected {a_float}, got a tensor of shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {a_float}, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = low is not None and (value < low or (value == low and not low_inclusive))
    too_high = high is not None and (value > high or (value == high and not high_inclusive))
    if not math.isfinite(value) or too_low or too_high:
        what = "a finite value" + (f" {wanted}" if wanted.startswith(("<", ">")) else "")
        if wanted.startswith("in"):
            what = f"a value {wanted}"
        raise ValueError(f"{name}: expected {what}, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """A finite real number > 0 (β, α, temperatures), as a float."""
    return check_real(name, value, low=0.0, low_inclusive=False)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer (Python or NumPy, not a bool) with ``low <= value <= high``, as an int."""
    if low is not None and high is not None:
        bound = f" in [{low}, {high}]"
    else:
        bound = f" >= {low}" if low is not None else (f" <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int{bound}, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected an int{bound}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Exactly ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return value


def check_choice(name: str, value, choices: Sequence):
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: unknown {value!r}; expected one of {list(choices)}")
    return value


def check_loss_inputs(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None,
    mask: torch.Tensor | None,
    *,
    need_rewards: bool,
    pairwise: bool,
    check_finite: bool = True,
) -> None:
    """The ``[B, K]`` inputs of a loss call: shapes, dtypes, K >= 2, >= 2 valid responses per prompt,
    finite values (``check_finite``), and for pairwise losses the chosen response in column 0.

    Host syncs: one per data-dependent test that passes (the mask count, one per finiteness check of
    the up to three tensors, the pairwise order): at most five ``bool(tensor)`` reads per call. A
    training loop that cannot afford them per micro-batch calls the loss with ``validate=False`` and
    checks what it needs once per optimizer step (the scale loop checks the loss is finite).
    """
    check_tensor("policy_logps", policy_logps)
    check_tensor("ref_logps", ref_logps)
    B, K = policy_logps.shape
    if B == 0:
        raise ValueError("policy_logps: empty batch (B = 0); expected at least one prompt, shape [B >= 1, K]")
    if K < 2:
        raise ValueError(
            f"policy_logps: expected K >= 2 responses per prompt, got shape {shape_str(policy_logps)}"
        )
    if ref_logps.shape != policy_logps.shape:
        raise ValueError(
            f"ref_logps: expected the same shape as policy_logps {shape_str(policy_logps)}, "
            f"got {shape_str(ref_logps)}"
        )
    if pairwise and K != 2:
        raise ValueError(
            "policy_logps: pairwise losses expect K = 2 (chosen in column 0, rejected in column 1), got shape "
            f"{shape_str(policy_logps)}; use a K-way loss ('infonca', 'nca', 'plackett_luce') or build pairs first"
        )
    if rewards is None:
        if need_rewards:
            raise ValueError(
                f"rewards: this loss needs explicit rewards of shape {shape_str(policy_logps)}, got None"
            )
    else:
        check_tensor("rewards", rewards)
        if rewards.shape != policy_logps.shape:
            raise ValueError(
                f"rewards: expected the same shape as policy_logps {shape_str(policy_logps)}, "
                f"got {shape_str(rewards)}"
            )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask: expected a bool torch.Tensor of shape [B, K], got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected dtype torch.bool (True = real response), got {mask.dtype}")
        if mask.shape != policy_logps.shape:
            raise ValueError(
                f"mask: expected shape {shape_str(policy_logps)} like policy_logps, got {shape_str(mask)}"
            )
        n_valid = mask.sum(dim=1)
        if bool((n_valid < 2).any()):
            bad = torch.nonzero(n_valid < 2).flatten()[:5].tolist()
            raise ValueError(
                f"mask: every prompt needs at least 2 valid responses; rows {bad} have fewer "
                f"(valid counts {n_valid[bad].tolist()})"
            )
    if check_finite:
        valid = mask if mask is not None else torch.ones_like(policy_logps, dtype=torch.bool)
        for name, t in (("policy_logps", policy_logps), ("ref_logps", ref_logps), ("rewards", rewards)):
            if t is None:
                continue
            finite = torch.isfinite(t) | ~valid
            if not bool(finite.all()):
                where = torch.nonzero(~finite)[0].tolist()
                raise ValueError(
                    f"{name}: expected finite values for every valid response, found {t[tuple(where)].item()} "
                    f"at [b, k] = {where} ({int((~finite).sum())} non-finite in all)"
                )
    if pairwise and rewards is not None:
        wrong = rewards[:, 0] < rewards[:, 1]
        if bool(wrong.any()):
            rows = torch.nonzero(wrong).flatten()[:5].tolist()
            raise ValueError(
                "rewards: pairwise losses expect the chosen response first (rewards[:, 0] >= rewards[:, 1]); "
                f"rows {rows} have the higher reward in column 1. Reorder with pairwise_to_k(chosen, rejected)."
            )
