"""The graded exercises (ncakit.exercises, ncakit.toy.exercises; tutorials/07_exercises.ipynb).

- every reference solution (tutorials/solutions/exercises_solutions.py) passes its checker;
- for every exercise, plausible WRONG implementations fail, and the printed message names the mistake
  (a missing 1/K, a wrong sign, a softmax over the batch axis, an ignored mask, ...);
- an unfinished stub (returns None / raises NotImplementedError) never raises and prints the level-1 hint;
- the two hint levels differ;
- the checkers' own oracles hold identities (pairs_to_k inverts "all pairs of K rows").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncakit import exercises as ex
from ncakit.losses import nca
from ncakit.toy import exercises as tex

ROOT = Path(__file__).resolve().parents[1]


def _solutions():
    spec = importlib.util.spec_from_file_location(
        "exercises_solutions", ROOT / "tutorials" / "solutions" / "exercises_solutions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOL = _solutions()
NAMES = list(tex.EXERCISES)


def _check(name, fn):
    return tex.EXERCISES[name][1](fn)


def test_there_are_at_least_eight_exercises_each_with_two_hints():
    assert len(NAMES) >= 8
    assert set(NAMES) == set(ex.HINTS)


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_solution_passes(name, capsys):
    fn = getattr(SOL, tex.EXERCISES[name][0])
    assert _check(name, fn) is True
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stub", ["none", "raise"])
def test_a_stub_prints_not_implemented_and_the_first_hint(name, stub, capsys):
    def returns_none(*args, **kwargs):
        return None

    def raises(*args, **kwargs):
        raise NotImplementedError

    assert _check(name, returns_none if stub == "none" else raises) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out
    assert ex.HINTS[name][0] in out


@pytest.mark.parametrize("name", NAMES)
def test_the_two_hint_levels_differ(name, capsys):
    ex.hint(name, 1)
    one = capsys.readouterr().out
    ex.hint(name, 2)
    two = capsys.readouterr().out
    assert one.strip() and two.strip() and one != two
    with pytest.raises(ValueError, match="level"):
        ex.hint(name, 3)


def test_a_crashing_function_is_reported_not_raised(capsys):
    def crashes(*args, **kwargs):
        raise KeyError("oops")

    assert ex.check_nca(crashes) is False
    assert "raised KeyError" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Wrong implementations: (exercise, wrong function, text the diagnosis must contain)
# --------------------------------------------------------------------------------------------


def _masked(z, mask, fill):
    return z if mask is None else z.masked_fill(~mask, fill)


def soft_dim0(r, alpha, mask=None):
    return torch.softmax(_masked(r / alpha, mask, -math.inf), dim=0)


def soft_times_alpha(r, alpha, mask=None):
    return torch.softmax(_masked(r * alpha, mask, -math.inf), dim=-1)


def soft_no_mask(r, alpha, mask=None):
    return torch.softmax(r / alpha, dim=-1)


def soft_naive_exp(r, alpha, mask=None):
    e = _masked((r / alpha).exp(), mask, 0.0)
    return e / e.sum(-1, keepdim=True)


def _info_terms(p, q, r, beta, alpha, mask=None, dim=-1):
    w = SOL.my_soft_labels(r, alpha, mask)
    lp = F.log_softmax(_masked(beta * (p - q), mask, -math.inf), dim=dim)
    return w, _masked(lp, mask, 0.0)


def info_mean_over_k(p, q, r, beta, alpha, mask=None):
    w, lp = _info_terms(p, q, r, beta, alpha, mask)
    return -(w * lp).sum(-1) / (mask.sum(-1) if mask is not None else r.shape[1])


def info_batch_axis(p, q, r, beta, alpha, mask=None):
    w, lp = _info_terms(p, q, r, beta, alpha, mask, dim=0)
    return -(w * lp).sum(-1)


def info_wrong_sign(*a, **kw):
    return -SOL.my_infonca(*a, **kw)


def info_plus_log_k(p, q, r, beta, alpha, mask=None):
    return SOL.my_infonca(p, q, r, beta, alpha, mask) + math.log(r.shape[1])


def info_no_mask(p, q, r, beta, alpha, mask=None):
    return SOL.my_infonca(p, q, r, beta, alpha)


def info_no_beta(p, q, r, beta, alpha, mask=None):
    return SOL.my_infonca(p, q, r, 1.0, alpha, mask)


def info_batch_mean(*a, **kw):
    return SOL.my_infonca(*a, **kw).mean()


def info_per_response(p, q, r, beta, alpha, mask=None):
    w, lp = _info_terms(p, q, r, beta, alpha, mask)
    return -(w * lp)


def _nca(p, q, r, beta, alpha, mask=None, *, k=None, neg_sign=-1.0, naive=False):
    z = beta * (p - q)
    w = SOL.my_soft_labels(r, alpha, mask)
    ls = (lambda x: torch.log(torch.sigmoid(x))) if naive else F.logsigmoid
    pos, neg = ls(z), ls(neg_sign * z)
    if mask is not None:
        pos, neg = pos.masked_fill(~mask, 0.0), neg.masked_fill(~mask, 0.0)
    if k is None:
        k = mask.sum(-1).double() if mask is not None else r.shape[1]
    return -(w * pos).sum(-1) - neg.sum(-1) / k


def nca_no_one_over_k(*a, **kw):
    return _nca(*a, **kw, k=1.0)


def nca_padded_k(p, q, r, beta, alpha, mask=None):
    return _nca(p, q, r, beta, alpha, mask, k=float(r.shape[1]))


def nca_positive_noise(*a, **kw):
    return _nca(*a, **kw, neg_sign=1.0)


def nca_log_of_sigmoid(*a, **kw):
    return _nca(*a, **kw, naive=True)


def nca_no_mask(p, q, r, beta, alpha, mask=None):
    return SOL.my_nca(p, q, r, beta, alpha)


def ncag_sign(z, w):
    return -SOL.my_nca_grad(z, w)


def ncag_no_k(z, w):
    return -w * torch.sigmoid(-z) + torch.sigmoid(z)


def ncag_swapped(z, w):
    return -w * torch.sigmoid(z) + torch.sigmoid(-z) / z.shape[-1]


def ncag_infonca(z, w):
    return torch.softmax(z, -1) - w


def infog_sign(z, w):
    return w - torch.softmax(z, -1)


def infog_dim0(z, w):
    return torch.softmax(z, 0) - w


def infog_no_softmax(z, w):
    return z - w


def _w(r, alpha):
    return SOL.my_soft_labels(r, alpha)


def opt_no_log_k(r, alpha, beta):
    return torch.log(_w(r, alpha)) / beta


def opt_r_hat(r, alpha, beta):
    return torch.log(r.shape[1] * _w(r, alpha))


def opt_infonca(r, alpha, beta):
    return r / (alpha * beta)


def opt_shifted(r, alpha, beta):
    return torch.log(r.shape[1] * _w(r, alpha)) / beta + 0.7


def opt_five_steps(r, alpha, beta):
    s = torch.zeros_like(r, requires_grad=True)
    for _ in range(5):
        (g,) = torch.autograd.grad(nca(s, torch.zeros_like(s), r, beta=beta, alpha=alpha).loss.sum(), s)
        with torch.no_grad():
            s -= 0.5 * g
    return s.detach()


def _groups(rows):
    groups = {}
    for row in rows:
        g = groups.setdefault(row["prompt"], {})
        g.setdefault(row["chosen"], []).append(row["score_chosen"])
        g.setdefault(row["rejected"], []).append(row["score_rejected"])
    return groups


def _rows(groups, *, key=None, keep_single=False, first_score=False):
    out = []
    for prompt, g in groups.items():
        if len(g) < 2 and not keep_single:
            continue
        resp = list(g)
        rew = [v[0] if first_score else sum(v) / len(v) for v in g.values()]
        order = sorted(range(len(resp)), key=key(rew) if key else (lambda i, rew=rew: -rew[i]))
        out.append(
            {"prompt": prompt, "responses": [resp[i] for i in order], "rewards": [rew[i] for i in order]}
        )
    return out


def pairs_no_dedup(rows):
    out = {}
    for row in rows:
        g = out.setdefault(row["prompt"], {"prompt": row["prompt"], "responses": [], "rewards": []})
        g["responses"] += [row["chosen"], row["rejected"]]
        g["rewards"] += [row["score_chosen"], row["score_rejected"]]
    return list(out.values())


def pairs_unsorted(rows):
    return _rows(_groups(rows), key=lambda rew: lambda i: i)


def pairs_unstable_ties(rows):
    return _rows(_groups(rows), key=lambda rew: lambda i: (-rew[i], -i))


def pairs_first_score(rows):
    return _rows(_groups(rows), first_score=True)


def pairs_keep_single(rows):
    return _rows(_groups(rows), keep_single=True)


def pairs_sorted_prompts(rows):
    return sorted(_rows(_groups(rows)), key=lambda r: r["prompt"])


def bandit_control():
    s = SOL.my_bandit_setting()
    return dataclasses.replace(s, bandit=dataclasses.replace(s.bandit, tuples_per_prompt=1))


def bandit_dict():
    return {"tuples_per_prompt": 8}


def disp_no_margin(c, r):
    return c[-1] < c[0]


def disp_rejected_fell(c, r):
    return (c[-1] < c[0]) & (r[-1] < r[0])


def disp_min_over_time(c, r):
    return (c.min(0) < c[0]) & ((c - r).max(0) > (c - r)[0])


def disp_not_strict(c, r):
    return (c[-1] <= c[0]) & ((c - r)[-1] >= (c - r)[0])


def disp_reduced(c, r):
    return bool(((c[-1] < c[0]) & ((c - r)[-1] > (c - r)[0])).any())


WRONG = [
    ("soft_labels", soft_dim0, "batch dimension"),
    ("soft_labels", soft_times_alpha, "multiplied the rewards by α"),
    ("soft_labels", soft_no_mask, "does not respect the mask"),
    ("soft_labels", soft_naive_exp, "overflow"),
    ("infonca", info_mean_over_k, "averaged over K"),
    ("infonca", info_batch_axis, "batch dimension"),
    ("infonca", info_wrong_sign, "wrong sign"),
    ("infonca", info_plus_log_k, "off by a constant (Δ = +1.386) — did you forget the log K?"),
    ("infonca", info_no_mask, "does not respect the mask"),
    ("infonca", info_no_beta, "forgot β"),
    ("infonca", info_batch_mean, "do not average over the batch"),
    ("infonca", info_per_response, "sum over the K responses"),
    ("nca", nca_no_one_over_k, "needs its 1/K"),
    ("nca", nca_padded_k, "number of VALID responses"),
    ("nca", nca_positive_noise, "log σ(−r̂_i)"),
    ("nca", nca_log_of_sigmoid, "F.logsigmoid"),
    ("nca", nca_no_mask, "does not respect the mask"),
    ("nca_grad", ncag_sign, "wrong sign"),
    ("nca_grad", ncag_no_k, "1/K of the noise term is missing"),
    ("nca_grad", ncag_swapped, "swapped σ(r̂) and σ(−r̂)"),
    ("nca_grad", ncag_infonca, "InfoNCA's gradient"),
    ("infonca_grad", infog_sign, "wrong sign"),
    ("infonca_grad", infog_dim0, "batch dimension"),
    ("infonca_grad", infog_no_softmax, "softmax is missing"),
    ("nca_optimum", opt_no_log_k, "forgot the log K"),
    ("nca_optimum", opt_r_hat, "divide by β"),
    ("nca_optimum", opt_infonca, "InfoNCA's optimum"),
    ("nca_optimum", opt_shifted, "off by a constant"),
    ("nca_optimum", opt_five_steps, "not converged"),
    ("pairs_to_k", pairs_no_dedup, "duplicate responses"),
    ("pairs_to_k", pairs_unsorted, "not sorted best-first"),
    ("pairs_to_k", pairs_unstable_ties, "stable sort"),
    ("pairs_to_k", pairs_first_score, "mean of its scores"),
    ("pairs_to_k", pairs_keep_single, "fewer than 2 distinct responses"),
    ("pairs_to_k", pairs_sorted_prompts, "order of first appearance"),
    ("bandit_setting", bandit_control, "CONTROL"),
    ("bandit_setting", bandit_dict, "expected a ncakit.toy.trainer.Setting"),
    ("displaced", disp_no_margin, "ignored the margin"),
    ("displaced", disp_rejected_fell, "'rejected fell'"),
    ("displaced", disp_min_over_time, "minimum over time"),
    ("displaced", disp_not_strict, "strict inequalities"),
    ("displaced", disp_reduced, "shape"),
]


@pytest.mark.parametrize("name, wrong, diagnosis", WRONG, ids=[w.__name__ for _, w, _ in WRONG])
def test_a_wrong_implementation_fails_with_its_diagnosis(name, wrong, diagnosis, capsys):
    assert _check(name, wrong) is False
    out = capsys.readouterr().out
    assert "✗" in out and diagnosis in out, out


def test_float32_and_in_place_implementations_still_pass(capsys):
    """The tolerances admit float32 rounding (a student's tensors need not be float64), and a function that
    edits its inputs in place cannot corrupt the checker's cases (each call gets copies)."""

    def nca_float32(p, q, r, beta, alpha, mask=None):
        return SOL.my_nca(p.float(), q.float(), r.float(), beta, alpha, mask)

    def soft_in_place(r, alpha, mask=None):
        r /= alpha
        return SOL.my_soft_labels(r, 1.0, mask)

    assert ex.check_nca(nca_float32) is True
    assert ex.check_soft_labels(soft_in_place) is True
    assert capsys.readouterr().out.count("✓") == 2


def test_every_exercise_has_a_wrong_implementation_tested():
    assert {name for name, _, _ in WRONG} == set(NAMES)


def test_check_all_reports_missing_and_unfinished_functions(capsys):
    results = tex.check_all({"my_displaced": SOL.my_displaced, "my_nca": lambda *a, **k: None})
    out = capsys.readouterr().out
    assert results["displaced"] is True and results["nca"] is False and results["infonca"] is False
    assert "no function my_infonca defined" in out and "1 of 9 exercises passed" in out


# --------------------------------------------------------------------------------------------
# The checkers' oracles
# --------------------------------------------------------------------------------------------


def test_pairs_to_k_oracle_inverts_all_pairs_of_k_rows():
    """K-response rows -> every within-row pair (higher reward chosen) -> the oracle gives the rows back,
    best first: grouping pairs is the inverse of pairing (the binarised data's relation to the K-way)."""
    rng = np.random.default_rng(0)
    rows, canonical = [], []
    for p in range(5):
        k = int(rng.integers(2, 6))
        rewards = rng.permutation(10)[:k].astype(float)  # distinct, so best-first is unique
        responses = [f"p{p}-r{i}" for i in range(k)]
        order = np.argsort(-rewards, kind="stable")
        canonical.append(
            {
                "prompt": f"p{p}",
                "responses": [responses[i] for i in order],
                "rewards": [float(rewards[i]) for i in order],
            }
        )
        for i, j in itertools.combinations(range(k), 2):
            c, r = (i, j) if rewards[i] > rewards[j] else (j, i)
            rows.append(
                {
                    "prompt": f"p{p}",
                    "chosen": responses[c],
                    "rejected": responses[r],
                    "score_chosen": float(rewards[c]),
                    "score_rejected": float(rewards[r]),
                }
            )
    assert tex.pairs_to_k_oracle(rows) == canonical
    # the order of the rows changes only the order of the prompts (rewards are distinct here)
    by_prompt = {row["prompt"]: row for row in tex.pairs_to_k_oracle(list(reversed(rows)))}
    assert by_prompt == {row["prompt"]: row for row in canonical}


def test_nca_optimum_closed_form_is_a_stationary_point_of_the_library_loss():
    """The checker's target log(K·w)/β zeroes the gradient of ncakit.losses.nca (MATH.md, NCA)."""
    r = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    beta = 0.3
    s = (torch.log(4 * SOL.my_soft_labels(r, 1.0)) / beta).requires_grad_(True)
    nca(s, torch.zeros_like(s), r, beta=beta, alpha=1.0).loss.sum().backward()
    assert float(s.grad.abs().max()) < 1e-12


def test_displacement_oracle_on_a_toy_history():
    """On the classic overlap bandit, InfoNCA displaces (chosen down, margin up) and NCA does not
    (MATH.md, "What a toy bandit needs"); the oracle must say so on the real History metrics."""
    from ncakit.toy.trainer import BanditTrainConfig, train_bandits

    setting = SOL.my_bandit_setting()
    h = train_bandits(
        setting, range(2), BanditTrainConfig(losses=("infonca", "nca"), steps=400, log_every=50)
    )[setting.name]
    d = tex.displacement_oracle(h.metrics["chosen"], h.metrics["rejected"])  # [L, S]
    assert d.shape == (2, 2)
    assert d[0].all() and not d[1].any()
    assert (SOL.my_displaced(h.metrics["chosen"], h.metrics["rejected"]) == d).all()
