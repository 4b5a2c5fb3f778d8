"""The graded exercises about data and training runs (tutorials/07_exercises.ipynb), and :func:`check_all`
over every exercise of the course. The six loss exercises, the grading engine and the hints are in
:mod:`ncakit.exercises` (the core, which imports no track, so the bandit exercises live here).

===================  ==============================================================================
exercise             the student writes
===================  ==============================================================================
``pairs_to_k``       ``fn(rows) -> rows``: chosen/rejected pairs grouped into K-response rows
``bandit_setting``   ``fn() -> Setting`` in which InfoNCA lowers the chosen likelihood and NCA does not
``displaced``        ``fn(chosen, rejected) -> bool [...]``: likelihood displacement in a history
===================  ==============================================================================

    from ncakit.toy.exercises import check_all, check_bandit_setting
    check_bandit_setting(my_bandit_setting)   # trains InfoNCA and NCA on it (about a second)
    check_all(globals())                      # every exercise, by the function names of EXERCISES
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from ncakit.exercises import (
    NO_RESULT,
    Case,
    attempt,
    check_infonca,
    check_infonca_grad,
    check_nca,
    check_nca_grad,
    check_nca_optimum,
    check_soft_labels,
    grade,
)
from ncakit.toy.bandit import make_bandit
from ncakit.toy.trainer import BanditTrainConfig, Setting, train_bandits

__all__ = [
    "EXERCISES",
    "check_all",
    "check_pairs_to_k",
    "pairs_to_k_oracle",
    "check_bandit_setting",
    "check_displaced",
    "displacement_oracle",
]


# --------------------------------------------------------------------------------------------
# 7. Pairwise rows -> K-response rows
# --------------------------------------------------------------------------------------------


def pairs_to_k_oracle(rows: list[Mapping]) -> list[dict]:
    """Pairwise rows ``{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}`` -> canonical
    K-response rows ``{"prompt", "responses", "rewards"}`` (the format of :mod:`ncakit.scale.data`):
    prompts in order of first appearance; each distinct response once, its reward the MEAN of the scores
    it received; sorted best-first (stable: ties keep first-appearance order); prompts left with fewer
    than 2 distinct responses dropped."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        g = groups.setdefault(row["prompt"], {})
        g.setdefault(row["chosen"], []).append(float(row["score_chosen"]))
        g.setdefault(row["rejected"], []).append(float(row["score_rejected"]))
    out = []
    for prompt, g in groups.items():
        if len(g) < 2:
            continue
        resp = list(g)
        rew = [sum(v) / len(v) for v in g.values()]
        order = sorted(range(len(resp)), key=lambda i: -rew[i])
        out.append(
            {"prompt": prompt, "responses": [resp[i] for i in order], "rewards": [rew[i] for i in order]}
        )
    return out


def _pair(p, c, r, sc, sr):
    return {"prompt": p, "chosen": c, "rejected": r, "score_chosen": sc, "score_rejected": sr}


_PAIR_CASES = [
    ("one pair per prompt (K = 2)", [_pair("p1", "a", "b", 8, 3), _pair("p2", "c", "d", 6, 5)], ""),
    (
        "one prompt, three pairs sharing responses",
        [_pair("p", "a", "b", 8, 4), _pair("p", "c", "a", 9, 8), _pair("p", "a", "d", 8, 1)],
        "a response in several pairs appears ONCE",
    ),
    (
        "interleaved prompts",
        [_pair("q", "x", "y", 5, 2), _pair("p", "a", "b", 7, 1), _pair("q", "z", "x", 6, 5)],
        "prompts in order of first appearance, their rows gathered from anywhere in the list",
    ),
    (
        "a response scored differently in two pairs",
        [_pair("p", "a", "b", 9, 2), _pair("p", "c", "a", 8, 5)],
        "a response scored twice gets the MEAN of its scores",
    ),
    (
        "tied scores",
        [_pair("p", "a", "b", 5, 5), _pair("p", "c", "d", 5, 7)],
        "ties keep first-appearance order (a stable sort)",
    ),
    (
        "a degenerate pair (chosen == rejected)",
        [_pair("p", "a", "a", 5, 5), _pair("q", "b", "c", 2, 1)],
        "a prompt with fewer than 2 distinct responses is dropped",
    ),
]


def _diagnose_rows(got, want) -> str | None:
    """None if ``got`` equals ``want`` (rewards to 1e-9), else what is wrong."""
    if not isinstance(got, list) or not all(isinstance(g, Mapping) for g in got):
        return f"expected a list of dicts, got {type(got).__name__}."
    missing = {k for g in got for k in ("prompt", "responses", "rewards") if k not in g}
    if missing:
        return f"rows need the keys 'prompt', 'responses', 'rewards'; missing {sorted(missing)}."
    gp, wp = [g["prompt"] for g in got], [w["prompt"] for w in want]
    if sorted(gp) != sorted(wp):
        if len(gp) > len(wp) and set(gp) >= set(wp):
            return "kept a prompt with fewer than 2 distinct responses (drop it: no comparison is left)."
        return f"expected the prompts {wp}, got {gp}: group the rows by prompt, one output row per prompt."
    if gp != wp:
        return f"prompts out of order: expected {wp} (order of first appearance), got {gp}."
    for g, w in zip(got, want):
        resp, rew = list(g["responses"]), [float(x) for x in g["rewards"]]
        if len(resp) != len(rew):
            return f"prompt {g['prompt']!r}: {len(resp)} responses but {len(rew)} rewards."
        if len(resp) > len(set(resp)):
            return f"prompt {g['prompt']!r}: duplicate responses {resp}: a response in several pairs appears once."
        if sorted(resp) != sorted(w["responses"]):
            return f"prompt {g['prompt']!r}: expected the responses {sorted(w['responses'])}, got {sorted(resp)}."
        mine = dict(zip(resp, rew))
        wanted = dict(zip(w["responses"], w["rewards"]))
        bad = [k for k in wanted if abs(mine[k] - wanted[k]) > 1e-9]
        if bad:
            return (
                f"prompt {g['prompt']!r}: wrong reward for {bad[0]!r} ({mine[bad[0]]:g}, expected "
                f"{wanted[bad[0]]:g}): a response scored in several pairs gets the mean of its scores."
            )
        if any(a < b for a, b in zip(rew, rew[1:])):
            return f"prompt {g['prompt']!r}: responses not sorted best-first by reward ({rew})."
        if resp != list(w["responses"]):
            return (
                f"prompt {g['prompt']!r}: tied rewards in the wrong order ({resp}, expected {w['responses']}): "
                "ties keep first-appearance order (use a stable sort)."
            )
    return None


def check_pairs_to_k(fn: Callable) -> bool:
    """Exercise ``pairs_to_k``: ``fn(rows: list[dict]) -> list[dict]``, chosen/rejected pairs (with
    ``score_chosen``/``score_rejected``) grouped by prompt into K-response rows ``{"prompt", "responses",
    "rewards"}`` by the rules of :func:`pairs_to_k_oracle` (pure Python, no ``datasets``)."""
    for label, rows, note in _PAIR_CASES:
        want = pairs_to_k_oracle(rows)
        got = attempt("pairs_to_k", fn, ([dict(r) for r in rows],), {}, case=label)
        if got is NO_RESULT:
            return False
        problem = _diagnose_rows(got, want)
        if problem:
            print(f"✗ pairs_to_k: wrong on the case '{label}'.\n  Diagnosis: {problem}")
            if note:
                print(f"  (This case tests: {note}.)")
            print("  For a hint: hint('pairs_to_k', 1); a stronger one: hint('pairs_to_k', 2)")
            return False
    print(f"✓ pairs_to_k: passed {len(_PAIR_CASES)} cases (rows equal to the oracle's).")
    return True


# --------------------------------------------------------------------------------------------
# 8. A bandit setting that shows the effect
# --------------------------------------------------------------------------------------------


def check_bandit_setting(fn: Callable, *, steps: int = 400, seeds=range(2)) -> bool:
    """Exercise ``bandit_setting``: ``fn() -> ncakit.toy.trainer.Setting`` in which, after ``steps`` full-batch
    Adam steps, InfoNCA's mean chosen log-ratio (MATH.md, "What a toy bandit needs") has FALLEN below −0.5
    nats while NCA's stays above −0.5 (on average over the seeds). About a second on one core."""
    setting = attempt("bandit_setting", fn, (), {})
    if setting is NO_RESULT:
        return False
    if not isinstance(setting, Setting):
        print(f"✗ bandit_setting: expected a ncakit.toy.trainer.Setting, got {type(setting).__name__}.")
        return False
    overlap = int(make_bandit(setting.bandit, seeds=seeds).chosen_and_rejected().sum())
    runs = train_bandits(
        setting, seeds, BanditTrainConfig(losses=("infonca", "nca"), steps=steps, log_every=steps)
    )
    chosen = runs[setting.name].final("chosen").mean(axis=1)  # [L]: infonca, nca
    info, nc = float(chosen[0]), float(chosen[1])
    if info < -0.5 and nc > -0.5:
        print(
            f"✓ bandit_setting: passed (chosen log-ratio after {steps} steps: InfoNCA {info:.1f}, NCA {nc:+.1f})."
        )
        return True
    print(f"✗ bandit_setting: chosen log-ratio after {steps} steps: InfoNCA {info:+.2f}, NCA {nc:+.2f} nats.")
    if info >= -0.5:
        if setting.bandit.tuples_per_prompt == 1 or overlap == 0:
            why = (
                "no response is chosen in one tuple and rejected in another (tuples_per_prompt = "
                f"{setting.bandit.tuples_per_prompt}): that is the tabular CONTROL, where nothing falls. "
                "Give each prompt several overlapping tuples."
            )
        else:
            why = (
                f"InfoNCA's chosen likelihood did not fall ({overlap} chosen-and-rejected responses). Make "
                "the comparisons overlap more (more tuples per prompt, fewer responses N), sharpen the "
                "labels (smaller α), or raise lr so 400 steps are enough."
            )
    else:
        why = (
            "InfoNCA's chosen likelihood fell, but NCA's fell too: NCA holds it when its targets log(K·w̄)/β "
            "are reachable; try a larger α (softer labels), the tabular family, or a smaller lr."
        )
    print(f"  Diagnosis: {why}\n  For a hint: hint('bandit_setting', 1)")
    return False


# --------------------------------------------------------------------------------------------
# 9. A likelihood-displacement diagnostic
# --------------------------------------------------------------------------------------------


def displacement_oracle(chosen, rejected) -> np.ndarray:
    """``[T, ...]`` chosen / rejected log-ratios over logged steps -> bool ``[...]``: the chosen log-ratio
    fell (last < first) while the margin chosen − rejected rose (last > first), both strictly."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    m = c - r
    return (c[-1] < c[0]) & (m[-1] > m[0])


def check_displaced(fn: Callable) -> bool:
    """Exercise ``displaced``: ``fn(chosen [T, ...], rejected [T, ...]) -> bool [...]`` (numpy arrays, like
    ``History.metrics["chosen"]`` ``[T, L, S]``): True where the chosen log-ratio FELL while the margin
    ROSE (likelihood displacement: the model separates the pair by pushing both down). Compared with
    :func:`displacement_oracle` on a real toy history and on hand-made traces."""
    g = np.random.default_rng(3)
    walk = np.cumsum(g.normal(size=(12, 3, 5)), axis=0)
    hand = {  # [T] traces: (chosen, rejected)
        "chosen falls, rejected falls faster": ([0.0, -1.0, -2.0], [0.0, -3.0, -6.0]),
        "chosen falls, rejected rises": ([0.0, -1.0], [0.0, 1.0]),
        "chosen falls, margin falls too": ([0.0, -1.0, -2.0], [0.0, -0.5, -1.0]),
        "chosen rises, margin rises": ([0.0, 1.0, 2.0], [0.0, -1.0, -2.0]),
        "dip then recovery (last vs FIRST)": ([0.0, -3.0, 0.5], [0.0, -4.0, -2.0]),
        "a single logged step (T = 1)": ([0.3], [0.1]),
        "no change at all (strict inequalities)": ([0.5, 0.5], [0.5, 0.5]),
    }
    cases = [Case("random walks [T, L, S] = [12, 3, 5]", (walk, walk - np.abs(walk).cumsum(0)), {}, None)]
    cases += [Case(k, (np.array(c), np.array(r)), {}, None, k) for k, (c, r) in hand.items()]
    for case in cases:
        case.want = torch.as_tensor(displacement_oracle(*case.args))
    mistakes = [
        (
            "you ignored the margin: 'the chosen log-ratio fell' alone is not displacement; the pair must "
            "also be separated better (margin up).",
            lambda c, r: c[-1] < c[0],
        ),
        (
            "you tested 'rejected fell' instead of 'margin rose': the margin is chosen − rejected.",
            lambda c, r: (c[-1] < c[0]) & (r[-1] < r[0]),
        ),
        (
            "you used the minimum over time: compare the LAST logged step with the FIRST.",
            lambda c, r: (c.min(0) < c[0]) & ((c - r).max(0) > (c - r)[0]),
        ),
        (
            "use strict inequalities: no change is not a fall.",
            lambda c, r: (c[-1] <= c[0]) & ((c - r)[-1] >= (c - r)[0]),
        ),
    ]

    def as_bool(fn):  # numpy, torch or Python bools -> a bool tensor; None (a stub) stays None
        def wrapped(*a):
            out = fn(*a)
            return None if out is None else torch.as_tensor(np.asarray(out, dtype=bool))

        return wrapped

    return grade("displaced", as_bool(fn), cases, [(w, as_bool(m)) for w, m in mistakes], 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------

#: exercise name -> (the name of the student's function, its checker).
EXERCISES: dict[str, tuple[str, Callable[[Callable], bool]]] = {
    "soft_labels": ("my_soft_labels", check_soft_labels),
    "infonca": ("my_infonca", check_infonca),
    "nca": ("my_nca", check_nca),
    "infonca_grad": ("my_infonca_grad", check_infonca_grad),
    "nca_grad": ("my_nca_grad", check_nca_grad),
    "nca_optimum": ("my_nca_optimum", check_nca_optimum),
    "pairs_to_k": ("my_pairs_to_k", check_pairs_to_k),
    "bandit_setting": ("my_bandit_setting", check_bandit_setting),
    "displaced": ("my_displaced", check_displaced),
}


def check_all(namespace) -> dict[str, bool]:
    """Run every checker on the functions ``namespace`` defines (a module, or a dict such as ``globals()``),
    looked up by the names of :data:`EXERCISES`; returns ``{exercise: passed}``."""
    get = namespace.get if isinstance(namespace, Mapping) else lambda n: getattr(namespace, n, None)
    results = {}
    for name, (fn_name, checker) in EXERCISES.items():
        fn = get(fn_name)
        if fn is None:
            print(f"… {name}: no function {fn_name} defined.")
            results[name] = False
        else:
            results[name] = checker(fn)
    print(f"{sum(results.values())} of {len(results)} exercises passed.")
    return results
