"""Graded coding exercises for the course (tutorials/07_exercises.ipynb): the student writes a function,
``check_<name>(fn)`` grades it and says what is wrong, ``hint(name, level)`` helps in two steps.

Each checker calls the student's function on random float64 tensors AND on edge cases (K = 2, a batch
of one, tied rewards, padded responses under a ``mask``, α = 1e-4 / 1e4, β = 100), compares with the
library (:mod:`ncakit.losses`), autograd on it, or a closed form (ncakit/MATH.md), and returns
``True``/``False``. On a mismatch it prints the failing case and a diagnosis: first the known mistakes
(a missing 1/K, a softmax over the batch axis, a flipped sign, an ignored mask...) whose output matches
the student's, then generic ones (off by a constant, by a factor, the wrong shape). A function that
returns ``None`` or raises ``NotImplementedError`` prints "not implemented yet" and the level-1 hint,
and never raises, so a notebook with unfinished stubs still runs.

===================  ==============================================================================
exercise             the student writes
===================  ==============================================================================
``soft_labels``      ``fn(rewards, alpha, mask=None) -> w [B, K]``, w = softmax(r / α)
``infonca``          ``fn(policy_logps, ref_logps, rewards, beta, alpha, mask=None) -> loss [B]``
``nca``              the same signature, the NCA loss
``infonca_grad``     ``fn(r_hat, w) -> dL/dr̂ [B, K]`` by hand (checked against autograd)
``nca_grad``         ``fn(r_hat, w) -> dL/dr̂ [B, K]`` by hand (checked against autograd)
``nca_optimum``      ``fn(rewards, alpha, beta) -> s* [B, K]`` by minimising ``ncakit.losses.nca``
===================  ==============================================================================

Three more are in :mod:`ncakit.toy.exercises` (``pairs_to_k``, ``bandit_setting``, ``displaced``: data
and training runs; one trains the toy bandit, which the core may not import), with
:func:`ncakit.toy.exercises.check_all` over all nine.

    from ncakit.exercises import check_nca, hint
    check_nca(my_nca)          # prints "passed" or the failing case and a diagnosis
    hint("nca", 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ncakit.losses import infonca, log_ratios, nca, soft_labels

__all__ = [
    "HINTS",
    "hint",
    "Case",
    "NotImplementedYet",
    "call_student",
    "attempt",
    "NO_RESULT",
    "grade",
    "check_soft_labels",
    "check_infonca",
    "check_nca",
    "check_infonca_grad",
    "check_nca_grad",
    "check_nca_optimum",
]

F64 = torch.float64

#: Two hints per exercise: level 1 points at the idea, level 2 gives the shape of the code.
HINTS: dict[str, tuple[str, str]] = {
    "soft_labels": (
        "Divide the rewards by α, then take a softmax over each prompt's K responses (the LAST dim).",
        "logits = rewards / alpha; with a mask, put -inf at the padded slots first "
        "(logits.masked_fill(~mask, -math.inf)); then torch.softmax(logits, dim=-1). torch.softmax "
        "subtracts the row max, so α = 1e-4 cannot overflow.",
    ),
    "infonca": (
        "InfoNCA is a K-way classification: the 'logits' are r̂ = β·(log π − log μ), the targets are the "
        "soft labels w = softmax(r/α), and the loss is the cross-entropy −Σ_i w_i·log softmax(r̂)_i.",
        "r_hat = beta * (policy_logps - ref_logps); w = soft labels (your exercise 1); with a mask, "
        "r_hat.masked_fill(~mask, -inf) before F.log_softmax(r_hat, dim=-1), then zero the padded log-probs "
        "(torch.where) so 0·(−inf) is not NaN; loss = -(w * log_p).sum(-1): one number per prompt, no 1/K.",
    ),
    "nca": (
        "NCA asks K binary questions: 'is y_i a data sample (weight w_i) or noise (weight 1/K)?'. "
        "L = −Σ w_i·log σ(r̂_i) − (1/K)·Σ log σ(−r̂_i).",
        "r_hat = beta * (policy_logps - ref_logps); use F.logsigmoid (never log(sigmoid)); with a mask, "
        "K = mask.sum(-1) (valid responses only), and zero both terms at the padded slots with torch.where; "
        "loss = -(w * F.logsigmoid(r_hat)).sum(-1) - F.logsigmoid(-r_hat).sum(-1) / K.",
    ),
    "infonca_grad": (
        "Differentiate −Σ_j w_j·(r̂_j − logsumexp(r̂)) w.r.t. r̂_i; remember Σ_j w_j = 1.",
        "dL/dr̂_i = softmax(r̂)_i − w_i: torch.softmax(r_hat, dim=-1) - w. The entries of a row sum to zero.",
    ),
    "nca_grad": (
        "Use d/dx log σ(x) = σ(−x) = 1 − σ(x) on each of the two terms of the NCA loss; each response's "
        "gradient depends on its own r̂_i only.",
        "dL/dr̂_i = −w_i·σ(−r̂_i) + σ(r̂_i)/K: -w * torch.sigmoid(-r_hat) + torch.sigmoid(r_hat) / K, with "
        "K = r_hat.shape[-1].",
    ),
    "nca_optimum": (
        "Treat the log-ratios s as free parameters: a leaf tensor (requires_grad=True) passed to "
        "ncakit.losses.nca(s, zeros, rewards, beta=beta, alpha=alpha) as the policy log-probs, with a zero "
        "reference; then descend on .loss.sum() until the gradient is ~0.",
        "NCA sees s only through r̂ = β·s: descend on r̂ with beta=1.0 and return r̂/β. r_hat = "
        "torch.zeros_like(rewards, requires_grad=True); repeat: loss = nca(r_hat, zeros, rewards, beta=1.0, "
        "alpha=alpha).loss.sum(); (g,) = torch.autograd.grad(loss, r_hat); with torch.no_grad(): r_hat -= 4.0 * g "
        "(a few hundred steps). torch.optim.LBFGS works too (its first use imports torch._dynamo: seconds).",
    ),
    "pairs_to_k": (
        "Group the rows by prompt with a dict (keys keep insertion order); inside a prompt, collect each "
        "distinct response once with the list of scores it received.",
        "groups = {}; for row: g = groups.setdefault(row['prompt'], {}); g.setdefault(row['chosen'], [])"
        ".append(row['score_chosen']); the same for rejected. Then per prompt: rewards = means; order = "
        "sorted(range(K), key=lambda i: -rewards[i]) (Python's sort is stable); skip prompts with K < 2.",
    ),
    "bandit_setting": (
        "The chosen likelihood falls only when comparisons OVERLAP: a response chosen in one tuple is "
        "rejected in another. One tuple per prompt is the control, where nothing falls.",
        "Setting('mine', BanditConfig(n_prompts=8, n_responses=32, k=4, tuples_per_prompt=8), "
        "PolicyConfig('tabular'), beta=0.1, alpha=0.3, lr=0.05): several tuples per prompt, sharp-ish labels.",
    ),
    "displaced": (
        "Compare the LAST logged step with the FIRST: the chosen log-ratio must have fallen while the "
        "margin (chosen − rejected) rose. Both strictly.",
        "margin = chosen - rejected; return (chosen[-1] < chosen[0]) & (margin[-1] > margin[0]) (index the "
        "step axis 0 only, so any trailing [L, S] dims are kept).",
    ),
}


def hint(name: str, level: int = 1) -> None:
    """Print hint ``level`` (1: the idea, 2: the shape of the code) of exercise ``name``."""
    if name not in HINTS:
        raise ValueError(f"name: unknown exercise {name!r}; expected one of {list(HINTS)}")
    if level not in (1, 2):
        raise ValueError(f"level: expected 1 or 2, got {level!r}")
    print(f"Hint {level} ({name}): {HINTS[name][level - 1]}")


# --------------------------------------------------------------------------------------------
# The grading engine
# --------------------------------------------------------------------------------------------


class NotImplementedYet(Exception):
    """Raised by :func:`call_student` when the student's function returned None or raised NotImplementedError."""


def call_student(fn: Callable, args: tuple, kwargs: dict):
    """``fn(*args, **kwargs)``, with an unfinished stub turned into :class:`NotImplementedYet`."""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotImplementedYet from None
    if out is None:
        raise NotImplementedYet
    return out


#: what :func:`attempt` returns when the student's function did not give a result
NO_RESULT = object()


def attempt(
    name: str, fn: Callable, args: tuple, kwargs: dict, *, case: str | None = None, hint_line: bool = False
):
    """The student's ``fn(*args, **kwargs)`` (:func:`call_student`), or :data:`NO_RESULT` after printing
    why: not implemented yet (with the first hint), or the exception it raised (on ``case``, and the
    hint command with ``hint_line``) -- reported, never raised."""
    try:
        return call_student(fn, args, kwargs)
    except NotImplementedYet:
        print(f"… {name}: not implemented yet (your function returned None).")
        hint(name, 1)
    except Exception as e:  # the student's bug
        print(
            f"✗ {name}: your function raised {type(e).__name__}: {e}"
            + (f"\n  on the case '{case}'." if case else "")
        )
        if hint_line:
            print(f"  For a hint: hint({name!r}, 1)")
    return NO_RESULT


def _fresh(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Copies of the tensors and arrays of a call, so a student's in-place edit cannot corrupt the case."""
    copy = lambda v: v.clone() if torch.is_tensor(v) else v.copy() if isinstance(v, np.ndarray) else v
    return tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}


def _as_tensor(x) -> torch.Tensor | None:
    if torch.is_tensor(x):
        return x.detach().to(F64) if x.is_floating_point() else x.detach()
    try:
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=F64)
    except (TypeError, ValueError):
        return None


def _sym(shape, B: int | None, K: int | None) -> str:
    names = ["B" if d == B else "K" if d == K else str(d) for d in shape]
    return "[" + ", ".join(names) + "]"


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if a.shape != b.shape or a.is_floating_point() != b.is_floating_point():
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool(torch.isfinite(a).all()) and torch.allclose(a, b, rtol=rtol, atol=atol)


def _diff(got: torch.Tensor, want: torch.Tensor) -> str:
    if not want.is_floating_point():
        return f"expected {want.tolist()}, got {got.tolist()}"
    return f"max |Δ| = {float((got - want).abs().max()):.3g}"


def _matches(wrong: Callable, case: Case, got: torch.Tensor, rtol, atol, differ: bool = True) -> bool:
    """Whether mistake ``wrong`` gives ``got`` on ``case`` (and, if ``differ``, is wrong there)."""
    try:
        alt = _as_tensor(wrong(*case.args, **case.kwargs))
    except Exception:  # a mistake that cannot be computed on this case does not apply
        return False
    if alt is None or not _close(got, alt, rtol, atol):
        return False
    return not differ or not _close(alt, case.want, rtol, atol)


def _bound(err: float) -> str:
    """A coarse, machine-independent label for the largest error (checked notebook cells print it)."""
    for b in (1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 1e-2):
        if err <= b:
            return f"max |Δ| ≤ {b:.0e}"
    return f"max |Δ| = {err:.1e}"


def _generic(got: torch.Tensor, want: torch.Tensor, K: int) -> list[str]:
    """Diagnoses that need no knowledge of the exercise: sign, constant offset, constant factor."""
    out = []
    if not (got.is_floating_point() and want.is_floating_point()):
        return out
    if torch.allclose(got, -want, rtol=1e-5, atol=1e-6):
        return ["your result has the wrong sign (it is minus the expected one)."]
    d = got - want
    if want.dim() >= 1 and torch.allclose(d, d.flatten()[0].expand_as(d), atol=1e-5):
        c = float(d.flatten()[0])
        why = " — did you forget the log K?" if abs(abs(c) - math.log(K)) < 1e-4 else ""
        out.append(f"your result is off by a constant (Δ = {c:+.4g}){why}")
    elif want.dim() == 2 and torch.allclose(d, d[:, :1].expand_as(d), atol=1e-5):
        out.append("your result is off by a constant per prompt (each row shifted by its own amount).")
    nz = want.abs() > 1e-9
    if bool(nz.any()):
        ratio = got[nz] / want[nz]
        if torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5) and abs(float(ratio[0]) - 1) > 1e-4:
            c = float(ratio[0])
            why = ""
            if abs(c - 1 / K) < 1e-4:
                why = " — a mean over K where the formula has a sum?"
            elif abs(c - K) < 1e-4:
                why = " — a sum over K where the formula has a mean?"
            out.append(f"your result is off by a constant factor (× {c:.4g}){why}")
    return out


class Case:
    """One call of the student's function: its arguments, the expected answer, and what it tests."""

    def __init__(self, label: str, args: tuple, kwargs: dict, want, note: str = "", B=None, K=None):
        self.label, self.args, self.kwargs, self.want, self.note = label, args, kwargs, want, note
        self.B, self.K = B, K


def grade(
    name: str,
    fn: Callable,
    cases: list[Case],
    mistakes: list[tuple[str, Callable]] = (),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    extra: Callable[[Case, torch.Tensor], list[str]] | None = None,
) -> bool:
    """Run every case; print "passed", or the first failing case and its diagnoses: the ``mistakes``
    ``(why, wrong_fn)`` whose output equals the student's (those that also fit the cases passed before,
    when several match), else the generic ones, else ``extra(case, got)``, else the case's note."""
    worst = 0.0
    for i, case in enumerate(cases):
        raw = attempt(name, fn, *_fresh(case.args, case.kwargs), case=case.label, hint_line=True)
        if raw is NO_RESULT:
            return False
        got, want = _as_tensor(raw), case.want
        problem = None
        if got is None:
            problem = f"expected a tensor, got {type(raw).__name__}."
        elif got.shape != want.shape:
            sym = _sym(want.shape, case.B, case.K)
            sym = sym if sym == str(list(want.shape)) else f"{sym} = {list(want.shape)}"
            problem = f"shape {sym} expected, got {list(got.shape)}."
            if got.dim() == 0 and want.dim() == 1:
                problem += " Return one value per prompt: do not average over the batch."
            elif want.dim() == 1 and tuple(got.shape) == (case.B, case.K):
                problem += " You returned one term per response: sum over the K responses."
            elif got.dim() < want.dim():
                problem += " You reduced over a dimension that should be kept."
        elif not bool(torch.isfinite(got).all()):
            problem = (
                "non-finite values (nan/inf). Overflow? exp(r/α) overflows for a small α and log(sigmoid(x)) "
                "underflows for a large |x|: use torch.softmax / F.log_softmax / F.logsigmoid."
            )
        elif not _close(got, want, rtol, atol):
            problem = f"values differ from the expected ones ({_diff(got, want)})."
        if problem is None:
            worst = max(worst, float((got - want).abs().max()) if got.is_floating_point() else 0.0)
            continue
        print(f"✗ {name}: wrong on the case '{case.label}': {problem}")
        found = []
        if got is not None and got.shape == want.shape and bool(torch.isfinite(got).all()):
            found = [why for why, wrong in mistakes if _matches(wrong, case, got, rtol, atol)]
            if len(found) > 1:  # keep the mistakes that also agree with the cases the function passed
                fits = [
                    w
                    for w, f in mistakes
                    if w in found and all(_matches(f, c, c.want, rtol, atol, False) for c in cases[:i])
                ]
                found = fits or found
            found = found or _generic(got, want, case.K or 1) or (extra(case, got) if extra else [])
        if not found and i > 0 and case.note:
            found = [f"the earlier cases passed; this one tests {case.note}."]
        for why in found:
            print(f"  Diagnosis: {why}")
        print(f"  For a hint: hint({name!r}, 1); a stronger one: hint({name!r}, 2)")
        return False
    exact = not cases[0].want.is_floating_point()
    print(f"✓ {name}: passed {len(cases)} cases ({'exact' if exact else _bound(worst)}).")
    return True


# --------------------------------------------------------------------------------------------
# Test inputs: random tensors and the edge cases
# --------------------------------------------------------------------------------------------


def _batch(g, B, K, *, beta=0.5, alpha=1.0, mask=None, tied=False, scale=2.0):
    """``dict(policy_logps, ref_logps, rewards, beta, alpha, mask)`` in float64; padded slots hold garbage
    (large finite values) so that ignoring the mask shows."""
    ref = -5.0 - 5.0 * torch.rand(B, K, generator=g, dtype=F64)
    pol = ref + scale * torch.randn(B, K, generator=g, dtype=F64)
    r = 3.0 * torch.randn(B, K, generator=g, dtype=F64)
    if tied:
        r[0] = 2.0  # a whole row tied
        r[1:, 1] = r[1:, 0]  # and one tie in every other row
    if mask is not None:
        pol, r = pol.masked_fill(~mask, 20.0), r.masked_fill(~mask, 50.0)
    return {"policy_logps": pol, "ref_logps": ref, "rewards": r, "beta": beta, "alpha": alpha, "mask": mask}


_PAD_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)


def _loss_inputs(seed: int = 0) -> list[tuple[str, dict, str]]:
    """(label, inputs, what it tests) for the loss-shaped exercises."""
    g = torch.Generator().manual_seed(seed)
    return [
        ("random, B = 5, K = 4, α = 2, β = 0.5", _batch(g, 5, 4, alpha=2.0), ""),
        ("K = 2", _batch(g, 3, 2), "K = 2: did you hard-code K = 4?"),
        (
            "a batch of one prompt",
            _batch(g, 1, 5),
            "a batch of ONE prompt: did you normalise over the batch axis?",
        ),
        ("tied rewards", _batch(g, 3, 4, tied=True), "tied rewards: equal rewards get equal weights"),
        (
            "padded responses (mask)",
            _batch(g, 4, 4, mask=_PAD_MASK),
            "the mask: padded responses get weight 0, are left out of every sum/softmax and do not count in K",
        ),
        (
            "extreme α = 1e-4 (one-hot labels)",
            _batch(g, 3, 4, alpha=1e-4),
            "a tiny α: exp(r/α) overflows; torch.softmax subtracts the row max and stays finite",
        ),
        ("extreme α = 1e4 (uniform labels)", _batch(g, 3, 4, alpha=1e4), "a huge α: labels → 1/K each"),
        (
            "extreme β = 100 (|r̂| ~ 1e3 to 1e4)",
            _batch(g, 3, 4, beta=100.0, scale=20.0),
            "a large |r̂|: log(sigmoid(x)) underflows to -inf; use F.logsigmoid / F.log_softmax",
        ),
    ]


def _cases(make_want: Callable[[dict], torch.Tensor], keys: tuple[str, ...], seed: int = 0) -> list[Case]:
    cases = []
    for label, inp, note in _loss_inputs(seed):
        B, K = inp["rewards"].shape
        args = tuple(inp[k] for k in keys[:3] if k in ("policy_logps", "ref_logps", "rewards"))
        kwargs = {k: inp[k] for k in keys if k not in ("policy_logps", "ref_logps", "rewards")}
        cases.append(Case(label, args, kwargs, make_want(inp), note, B, K))
    return cases


def _k_valid(inp: dict) -> torch.Tensor:
    m, r = inp.get("mask"), inp["rewards"]
    return (m.sum(-1) if m is not None else torch.full(r.shape[:1], r.shape[1])).to(F64)


def _unmasked(fn: Callable) -> Callable:
    """A mistake: the same computation with the mask dropped (the padded garbage counts)."""
    return lambda *a, **kw: fn(*a, **{**kw, "mask": None})


# --------------------------------------------------------------------------------------------
# 1-3. Soft labels, InfoNCA, NCA
# --------------------------------------------------------------------------------------------


def check_soft_labels(fn: Callable) -> bool:
    """Exercise ``soft_labels`` (MATH.md, notation): ``fn(rewards [B, K], alpha, mask=None) -> w [B, K]``,

        w = softmax(r / α) over each prompt's valid responses; padded responses (mask False) get 0.

    Compared with :func:`ncakit.losses.soft_labels`.
    """
    keys = ("rewards", "alpha", "mask")

    def masked_logits(r, alpha, mask, scale):
        z = r * scale
        return z if mask is None else z.masked_fill(~mask, -math.inf)

    mistakes = [
        (
            "you took the softmax over the batch dimension (dim=0): normalise over each prompt's K responses "
            "(dim=-1).",
            lambda r, alpha, mask=None: torch.softmax(masked_logits(r, alpha, mask, 1 / alpha), dim=0),
        ),
        (
            "you multiplied the rewards by α: α is a temperature, it DIVIDES them (w = softmax(r/α)).",
            lambda r, alpha, mask=None: torch.softmax(masked_logits(r, alpha, mask, alpha), dim=-1),
        ),
        (
            "you forgot α: w = softmax(r/α), not softmax(r).",
            lambda r, alpha, mask=None: torch.softmax(masked_logits(r, alpha, mask, 1.0), dim=-1),
        ),
        (
            "does not respect the mask: padded responses must get weight 0 (set their logits to -inf).",
            lambda r, alpha, mask=None: soft_labels(r, alpha),
        ),
    ]
    cases = _cases(lambda i: soft_labels(i["rewards"], i["alpha"], i["mask"]), keys)
    return grade("soft_labels", fn, cases, mistakes)


_LOSS_KEYS = ("policy_logps", "ref_logps", "rewards", "beta", "alpha", "mask")


def _log_softmax_masked(z, mask, dim=-1):
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    lp = F.log_softmax(z, dim=dim)
    return lp if mask is None else torch.where(mask, lp, torch.zeros((), dtype=lp.dtype))


def _argument_mistakes(lib: Callable) -> list[tuple[str, Callable]]:
    """The mistakes every reward-based loss exercise shares: β, the reference or α used wrongly,
    each made by calling the library loss ``lib(p, q, r, beta, alpha, mask)`` with that argument off."""
    return [
        (
            "you forgot β: r̂ = β·(log π − log μ).",
            lambda p, q, r, beta, alpha, mask=None: lib(p, q, r, 1.0, alpha, mask),
        ),
        (
            "you used log π instead of the log-ratio log π − log μ (the reference is missing).",
            lambda p, q, r, beta, alpha, mask=None: lib(p, torch.zeros_like(q), r, beta, alpha, mask),
        ),
        (
            "you multiplied the rewards by α: α divides them (w = softmax(r/α)).",
            lambda p, q, r, beta, alpha, mask=None: lib(p, q, r, beta, 1 / alpha, mask),
        ),
    ]


def check_infonca(fn: Callable) -> bool:
    """Exercise ``infonca`` (MATH.md, InfoNCA):
    ``fn(policy_logps, ref_logps, rewards, beta, alpha, mask=None) -> loss [B]`` (all ``[B, K]``),

        L = − Σ_i w_i · log softmax(r̂)_i,   r̂ = β·(log π − log μ),   w = softmax(r/α)   (sum, no 1/K)

    Compared with ``ncakit.losses.infonca(...).loss``.
    """

    def lib(p, q, r, beta, alpha, mask=None):
        return infonca(p, q, r, beta=beta, alpha=alpha, mask=mask).loss

    def custom(p, q, r, beta, alpha, mask=None, *, dim=-1, w=None, norm=True):
        w = soft_labels(r, alpha, mask) if w is None else w
        z = beta * log_ratios(p, q, mask)
        lp = _log_softmax_masked(z, mask, dim) if norm else z
        return -(w * lp).sum(-1)

    def hard(p, q, r, beta, alpha, mask=None):
        key = r if mask is None else r.masked_fill(~mask, -math.inf)
        return custom(p, q, r, beta, alpha, mask, w=F.one_hot(key.argmax(-1), r.shape[1]).to(F64))

    def labels_only(p, q, r, beta, alpha, mask=None):
        return -(soft_labels(r, alpha, mask) * F.log_softmax(beta * (p - q), dim=-1)).sum(-1)

    mistakes = [
        (
            "you averaged over K: InfoNCA is a SUM over the K responses, with no 1/K.",
            lambda p, q, r, beta, alpha, mask=None: (
                lib(p, q, r, beta, alpha, mask) / (mask.sum(-1) if mask is not None else r.shape[1])
            ),
        ),
        (
            "you used log-softmax over the batch dimension (dim=0): the K responses of ONE prompt compete.",
            lambda *a, **kw: custom(*a, **kw, dim=0),
        ),
        *_argument_mistakes(lib),
        ("you used one-hot labels on the best response: use the soft labels w = softmax(r/α).", hard),
        (
            "you forgot the normaliser: log softmax(r̂)_i = r̂_i − logsumexp(r̂), not r̂_i.",
            lambda *a, **kw: custom(*a, **kw, norm=False),
        ),
        (
            "you masked the labels but not the softmax: padded logits must be -inf before the log-softmax.",
            labels_only,
        ),
        (
            "does not respect the mask: padded responses must drop out of the softmax and the sum.",
            _unmasked(lib),
        ),
    ]
    cases = _cases(lambda i: lib(*(i[k] for k in _LOSS_KEYS)), _LOSS_KEYS)
    return grade("infonca", fn, cases, mistakes)


def check_nca(fn: Callable) -> bool:
    """Exercise ``nca`` (MATH.md, NCA):
    ``fn(policy_logps, ref_logps, rewards, beta, alpha, mask=None) -> loss [B]`` (all ``[B, K]``),

        L = − Σ_i w_i · log σ(r̂_i) − (1/K) · Σ_i log σ(−r̂_i),   K = the prompt's number of VALID responses

    Compared with ``ncakit.losses.nca(...).loss``.
    """

    def lib(p, q, r, beta, alpha, mask=None):
        return nca(p, q, r, beta=beta, alpha=alpha, mask=mask).loss

    def custom(p, q, r, beta, alpha, mask=None, *, k=None, neg_w=None, neg_sign=-1.0, w_dim=-1):
        z = beta * log_ratios(p, q, mask)
        if w_dim == -1:
            w = soft_labels(r, alpha, mask)
        else:
            w = torch.softmax((r / alpha).masked_fill(~mask, -math.inf) if mask is not None else r / alpha, 0)
        k = _k_valid({"rewards": r, "mask": mask})[:, None] if k is None else k
        neg = F.logsigmoid(neg_sign * z) * (1.0 / k if neg_w is None else neg_w)
        if mask is not None:
            neg = torch.where(mask, neg, torch.zeros((), dtype=F64))
        return -(w * F.logsigmoid(z)).sum(-1) - neg.sum(-1)

    mistakes = [
        (
            "the noise term needs its 1/K: −(1/K)·Σ_i log σ(−r̂_i).",
            lambda *a, **kw: custom(*a, **kw, k=1.0),
        ),
        (
            "with a mask, K is the number of VALID responses of the prompt (mask.sum(-1)), not the padded "
            "width.",
            lambda p, q, r, beta, alpha, mask=None: custom(p, q, r, beta, alpha, mask, k=float(r.shape[1])),
        ),
        (
            "the noise term weighs every response by 1/K, not by its label w_i.",
            lambda p, q, r, beta, alpha, mask=None: custom(
                p, q, r, beta, alpha, mask, neg_w=soft_labels(r, alpha, mask)
            ),
        ),
        (
            "the second term is log σ(−r̂_i) (the noise samples are pushed DOWN), not log σ(r̂_i).",
            lambda *a, **kw: custom(*a, **kw, neg_sign=1.0),
        ),
        (
            "you normalised the soft labels over the batch dimension (dim=0): use dim=-1.",
            lambda *a, **kw: custom(*a, **kw, w_dim=0),
        ),
        *_argument_mistakes(lib),
        ("does not respect the mask: padded responses must drop out of both sums and of K.", _unmasked(lib)),
    ]
    cases = _cases(lambda i: lib(*(i[k] for k in _LOSS_KEYS)), _LOSS_KEYS)
    return grade("nca", fn, cases, mistakes)


# --------------------------------------------------------------------------------------------
# 4-5. Gradients by hand, checked against autograd on the library losses
# --------------------------------------------------------------------------------------------


def _grad_cases(loss_fn: Callable, seed: int = 1) -> list[Case]:
    """Cases ``fn(r_hat, w)``: the autograd gradient of the library loss (summed over prompts) w.r.t. r̂
    (policy log-probs = r̂ with β = 1 and log μ = 0; w = soft_labels(r, α))."""
    g = torch.Generator().manual_seed(seed)
    spec = [
        ("random, B = 5, K = 4", 5, 4, 2.0, 1.0, ""),
        ("K = 2", 3, 2, 2.0, 1.0, "K = 2: did you hard-code K = 4?"),
        ("a batch of one prompt", 1, 6, 2.0, 1.0, "a batch of ONE prompt: normalise over K, not the batch"),
        ("policy = reference (r̂ = 0)", 3, 4, 0.0, 1.0, "at r̂ = 0 (MATH.md anchor: NCA gives (1/K − w_i)/2)"),
        ("one-hot labels (α = 1e-4)", 3, 4, 2.0, 1e-4, "one-hot labels"),
        ("large |r̂| ~ 1e3", 3, 4, 500.0, 1.0, "a large |r̂|: torch.sigmoid / torch.softmax stay finite"),
    ]
    cases = []
    for label, B, K, scale, alpha, note in spec:
        r_hat = scale * torch.randn(B, K, generator=g, dtype=F64)
        r = 3.0 * torch.randn(B, K, generator=g, dtype=F64)
        leaf = r_hat.clone().requires_grad_(True)
        loss_fn(leaf, torch.zeros_like(leaf), r, beta=1.0, alpha=alpha).loss.sum().backward()
        cases.append(Case(label, (r_hat, soft_labels(r, alpha)), {}, leaf.grad.detach(), note, B, K))
    return cases


def _per_batch(fn: Callable) -> Callable:
    return lambda z, w: fn(z, w) / z.shape[0]


def check_infonca_grad(fn: Callable) -> bool:
    """Exercise ``infonca_grad`` (MATH.md, InfoNCA): ``fn(r_hat [B, K], w [B, K]) -> dL/dr̂ [B, K]`` by hand,
    the gradient of each prompt's InfoNCA loss −Σ_i w_i·log softmax(r̂)_i: softmax(r̂) − w.
    Checked against autograd on ``ncakit.losses.infonca``."""
    right = lambda z, w: torch.softmax(z, -1) - w  # noqa: E731
    mistakes = [
        (
            "gradient has the wrong sign: dL/dr̂ = softmax(r̂) − w (descent lowers the loss).",
            lambda z, w: w - torch.softmax(z, -1),
        ),
        (
            "you took the softmax over the batch dimension (dim=0): use dim=-1.",
            lambda z, w: torch.softmax(z, 0) - w,
        ),
        ("the labels are missing: the gradient is softmax(r̂) − w.", lambda z, w: torch.softmax(z, -1)),
        ("the softmax is missing: differentiate logsumexp(r̂) to get softmax(r̂).", lambda z, w: z - w),
        (
            "you differentiated the batch MEAN: the exercise wants each prompt's loss (no 1/B).",
            _per_batch(right),
        ),
    ]
    return grade("infonca_grad", fn, _grad_cases(infonca), mistakes)


def check_nca_grad(fn: Callable) -> bool:
    """Exercise ``nca_grad`` (MATH.md, NCA): ``fn(r_hat [B, K], w [B, K]) -> dL/dr̂ [B, K]`` by hand,
    the gradient of each prompt's NCA loss: −w_i·σ(−r̂_i) + σ(r̂_i)/K.
    Checked against autograd on ``ncakit.losses.nca``."""
    sg = torch.sigmoid
    right = lambda z, w: -w * sg(-z) + sg(z) / z.shape[-1]  # noqa: E731
    mistakes = [
        ("gradient has the wrong sign: dL/dr̂_i = −w_i·σ(−r̂_i) + σ(r̂_i)/K.", lambda z, w: -right(z, w)),
        ("the 1/K of the noise term is missing: + σ(r̂_i)/K.", lambda z, w: -w * sg(-z) + sg(z)),
        (
            "you put the 1/K on the wrong term: −w_i·σ(−r̂_i) + σ(r̂_i)/K.",
            lambda z, w: -w * sg(-z) / z.shape[-1] + sg(z),
        ),
        (
            "you swapped σ(r̂) and σ(−r̂): d/dx log σ(x) = σ(−x) and d/dx log σ(−x) = −σ(x).",
            lambda z, w: -w * sg(z) + sg(-z) / z.shape[-1],
        ),
        (
            "that is InfoNCA's gradient softmax(r̂) − w; NCA's depends on each r̂_i alone.",
            lambda z, w: torch.softmax(z, -1) - w,
        ),
        (
            "you differentiated the batch MEAN: the exercise wants each prompt's loss (no 1/B).",
            _per_batch(right),
        ),
    ]
    return grade("nca_grad", fn, _grad_cases(nca), mistakes)


# --------------------------------------------------------------------------------------------
# 6. The NCA optimum by minimisation
# --------------------------------------------------------------------------------------------


def check_nca_optimum(fn: Callable) -> bool:
    """Exercise ``nca_optimum`` (MATH.md, NCA): ``fn(rewards [B, K], alpha, beta) -> s [B, K]``, the log-ratios
    that minimise ``ncakit.losses.nca`` (found numerically, e.g. with torch.optim), which should land on

        s* = r̂*/β = log(K · w)/β,   w = softmax(r/α).

    Compared with that closed form (tolerance 1e-3); a wrong answer is also tested for stationarity
    (the loss gradient at it), so "not converged" is told apart from "wrong target".
    """
    g = torch.Generator().manual_seed(2)
    spec = [
        ("random, B = 3, K = 4, α = β = 1", 3, 4, 1.0, 1.0, ""),
        ("K = 2 with tied rewards (w = ½: s* = 0)", 2, 2, 1.0, 1.0, "tied rewards"),
        ("β = 0.1 (s* = 10·log(K·w))", 2, 4, 1.0, 0.1, "a small β: the log-ratio is r̂*/β"),
        ("a batch of one, K = 6, α = 2, β = 0.5", 1, 6, 2.0, 0.5, "a batch of one prompt"),
    ]
    cases = []
    for label, B, K, alpha, beta, note in spec:
        r = torch.randn(B, K, generator=g, dtype=F64)
        if "tied" in label:
            r[:, 1] = r[:, 0]
        want = torch.log(K * soft_labels(r, alpha)) / beta
        cases.append(Case(label, (r, alpha, beta), {}, want, note, B, K))

    def closed(r, alpha, beta, *, k=True, div=True, power=-1.0):
        lw = torch.log(soft_labels(r, alpha)) + (math.log(r.shape[1]) if k else 0.0)
        return lw * beta**power if div else lw

    mistakes = [
        ("you forgot the log K: s* = log(K·w)/β, not log(w)/β.", lambda r, a, b: closed(r, a, b, k=False)),
        (
            "you returned r̂* = log(K·w): the log-ratio is s* = r̂*/β (divide by β).",
            lambda r, a, b: closed(r, a, b, div=False),
        ),
        ("you multiplied by β: s* = log(K·w)/β.", lambda r, a, b: closed(r, a, b, power=1.0)),
        (
            "that is InfoNCA's optimum r/(αβ) (defined only up to a per-prompt constant); NCA's is absolute.",
            lambda r, a, b: r / (a * b),
        ),
    ]

    def not_converged(case: Case, got: torch.Tensor) -> list[str]:
        s = got.clone().requires_grad_(True)
        r, alpha, beta = case.args
        nca(s, torch.zeros_like(s), r, beta=beta, alpha=alpha).loss.sum().backward()
        gmax = float(s.grad.abs().max())
        if gmax <= 1e-4:
            return []
        return [
            f"not converged: the NCA gradient at your answer is {gmax:.2g} (0 at the minimum). Take more "
            "steps or a larger learning rate (descend on r̂ = β·s with beta=1.0 and divide by β at the end)."
        ]

    return grade("nca_optimum", fn, cases, mistakes, rtol=1e-3, atol=1e-3, extra=not_converged)
