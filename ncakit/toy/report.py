"""The toy's reports: the claims the classic preset must show, the summary of a run, its tables.

:func:`check_claims` checks, seed by seed, what each setting's role says the toy must show (the
thresholds :data:`CLAIM_FALL`, :data:`CLAIM_NEAR`, :data:`CLAIM_GAP`); :func:`summarize` gives the
JSON-ready ``summary.json`` of ``toy/demo.py``; :func:`format_table` the printed table and
:func:`format_zoo_table` the zoo preset's Markdown table (:data:`ZOO_COLUMNS`). All take the
``{setting name: History}`` dict of :func:`ncakit.toy.trainer.train_bandits` or
:func:`ncakit.toy.presets.run_preset`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ncakit.registry import loss_spec
from ncakit.toy.trainer import END_METRICS, History

__all__ = [
    "CLAIM_FALL",
    "CLAIM_NEAR",
    "CLAIM_GAP",
    "CLAIM_TARGET",
    "CLAIM_SETS",
    "check_claims",
    "format_claims",
    "SUMMARY_METRICS",
    "summarize",
    "format_table",
    "ZOO_COLUMNS",
    "format_zoo_table",
]

#: Thresholds of the classic claims (log-ratios in nats).
CLAIM_FALL = 2.0  # "clearly below 0": DPO/InfoNCA's mean chosen log-ratio < −2 nats
CLAIM_NEAR = 1.0  # "near or above 0": NCA's > −1 nat
CLAIM_GAP = 3.0  # "far above theirs": NCA's exceeds the higher of DPO/InfoNCA's by > 3 nats
CLAIM_TARGET = 0.1  # k4-rewards: NCA's rank log-ratios end within 0.1 nat of its optimum log(K·w̄)/β
_DPO_LIKE, _NCA_LIKE = ("dpo", "infonca"), ("nca", "nca_pair")
#: The losses the classic claims speak about (a claim about "every loss" means these four).
_CLASSIC_LOSSES = ("dpo", "nca_pair", "infonca", "nca")


def _pick(h: History, names) -> list[int]:
    return [h.losses.index(x) for x in names if x in h.losses]


def _label(h: History, idx) -> str:
    return "/".join(h.losses[i] for i in idx)


def _classic_checks(name: str, h: History, add) -> None:
    """The classic preset's claims of one setting (by its role); ``add(text, losses, holds | None)``."""
    role = h.setting.role
    falls, ncas = _pick(h, _DPO_LIKE), _pick(h, _NCA_LIKE)
    chosen, best, gain = h.final("chosen"), h.final("best_logratio"), h.final("reward_gain")
    if role == "control":
        scope = _pick(h, _CLASSIC_LOSSES)
        extra = len(scope) != len(h.losses)
        add(
            f"{name}: no loss lowers the chosen log-ratio"
            + (f" ({_label(h, scope)})" if extra and scope else ""),
            "/".join(_CLASSIC_LOSSES),
            (chosen[scope] > 0).all(0) if scope else None,
        )
    elif role in ("overlap", "shared"):
        add(
            f"{name}: {_label(h, falls) or 'dpo/infonca'} chosen < -{CLAIM_FALL:g}",
            "dpo/infonca",
            (chosen[falls] < -CLAIM_FALL).all(0) if falls else None,
        )
        ok = None
        if ncas:
            ok = (chosen[ncas] > -CLAIM_NEAR).all(0)
            if falls:
                ok &= (chosen[ncas] - chosen[falls].max(0)[None] > CLAIM_GAP).all(0)
        suffix = " and far above" if falls else ""
        add(
            f"{name}: {_label(h, ncas) or 'nca/nca_pair'} chosen > -{CLAIM_NEAR:g}{suffix}",
            "nca/nca_pair",
            ok,
        )
        if role == "shared":
            ok = None
            if falls or ncas:
                ok = np.ones(len(h.seeds), dtype=bool)
                if falls:
                    ok &= (best[falls] < 0).all(0)
                if ncas:
                    ok &= (best[ncas] > 0).all(0)
            add(f"{name}: best response falls under DPO/InfoNCA only", "dpo/infonca/nca/nca_pair", ok)
    if role:
        add(
            f"{name}: NCA raises the expected reward",
            "nca/nca_pair",
            (gain[ncas] > 0).all(0) if ncas else None,
        )


def _k4_checks(name: str, h: History, add) -> None:
    """The k4-rewards preset's claims (β = 1, α = 1: NCA's absolute targets vs InfoNCA's differences)."""
    role = h.setting.role
    nca = h.losses.index("nca") if "nca" in h.losses else None
    info = h.losses.index("infonca") if "infonca" in h.losses else None
    ranks = h.final("rank_logratio")  # [L, S, K]
    target = h.reference["nca_target_rank"]  # [S, K]
    if role in ("control", "overlap"):  # tabular: NCA's optimum is reachable (README: "reached exactly")
        add(
            f"{name}: nca ends at its optimum log(K·w̄)/β at every rank (±{CLAIM_TARGET:g})",
            "nca",
            (np.abs(ranks[nca] - target).max(-1) < CLAIM_TARGET) if nca is not None else None,
        )
    if role in ("control", "shared"):  # where the common shift shows
        both = nca is not None and info is not None
        add(
            f"{name}: infonca's whole tuple ends below nca's (every rank)",
            "infonca + nca",
            (ranks[info] < ranks[nca]).all(-1) if both else None,
        )
    if role:
        add(
            f"{name}: NCA raises the expected reward",
            "nca",
            (h.final("reward_gain")[nca] > 0) if nca is not None else None,
        )


def _sweep_checks(falls_at: tuple[float, ...]):
    def checks(name: str, h: History, add) -> None:
        falls, ncas = _pick(h, _DPO_LIKE), _pick(h, _NCA_LIKE)
        chosen, gain = h.final("chosen"), h.final("reward_gain")
        value = h.setting.alpha if name.startswith("alpha") else h.setting.beta
        if any(abs(value - v) < 1e-12 for v in falls_at):
            add(
                f"{name}: {_label(h, falls) or 'dpo/infonca'} chosen < -{CLAIM_FALL:g}",
                "dpo/infonca",
                (chosen[falls] < -CLAIM_FALL).all(0) if falls else None,
            )
        add(
            f"{name}: {_label(h, ncas) or 'nca/nca_pair'} chosen > -{CLAIM_NEAR:g}",
            "nca/nca_pair",
            (chosen[ncas] > -CLAIM_NEAR).all(0) if ncas else None,
        )
        add(
            f"{name}: NCA raises the expected reward",
            "nca/nca_pair",
            (gain[ncas] > 0).all(0) if ncas else None,
        )

    return checks


#: Each preset's claims: a function ``(setting name, History, add)`` that states the claims of one of the
#: preset's OWN settings, or ``None`` (the zoo: its table is its own story). toy/README.md lists them.
CLAIM_SETS = {
    "classic": _classic_checks,
    "k4-rewards": _k4_checks,
    "alpha-sweep": _sweep_checks((0.1, 0.3, 1.0)),
    "beta-sweep": _sweep_checks((0.03, 0.1)),
    "zoo": None,
}


def _same_conditions(a, b) -> bool:
    """Whether setting ``b`` is the condition ``a`` describes (policy, data, β, α, lr, role)."""
    return (a.policy, a.bandit, a.beta, a.alpha, a.lr, a.role) == (
        b.policy,
        b.bandit,
        b.beta,
        b.alpha,
        b.lr,
        b.role,
    )


def _not_covered(preset, st) -> str:
    same_name = [s for s in preset.settings if s.name == st.name]
    same_role = [s for s in preset.settings if s.role == st.role and s.swappable]
    for s in same_name + same_role:
        if s.policy.family != st.policy.family:
            return (
                f"the {preset.name} claims describe the {s.policy.family} policy of setting {s.name!r}, "
                f"not {st.policy.family}"
            )
    return f"not one of the {preset.name} preset's settings (its policy, data, β, α or lr differ)"


def check_claims(runs: dict[str, History], preset="classic") -> dict:
    """Check, seed by seed, the claims of ``preset`` (ncakit/MATH.md; toy/README.md) where they apply.

    A claim is checked only on a setting it describes (one of the preset's own settings, same policy,
    data, β, α and lr: ``--policy mlp`` runs a setting the classic claims do not describe) and only
    if the losses it speaks about were trained (checked on the subset that was). Classic claims, by
    the setting's role:

    - control: no loss (of dpo, nca_pair, infonca, nca) lowers the chosen log-ratio (final value > 0);
    - overlap and shared: DPO/InfoNCA's final chosen log-ratio < −CLAIM_FALL, NCA's > −CLAIM_NEAR and
      more than CLAIM_GAP above the higher of DPO/InfoNCA's;
    - shared: the best seen response's log-ratio ends < 0 under DPO/InfoNCA and > 0 under NCA;
    - every setting with a role: NCA raises the expected true reward above μ's.

    Returns ``{"preset", "n_seeds", "claims": {text: {"holds": [bool per seed], "count"}},
    "skipped": [{"setting", "claim", "reason"}], "all": {"holds", "count"}, "steps",
    "calibrated_steps"}``; ``all`` is over the checked claims (none checked: an empty list).
    """
    from ncakit.toy.presets import get_preset

    preset = get_preset(preset)
    claims: dict[str, np.ndarray] = {}
    skipped: list[dict] = []
    checks = CLAIM_SETS.get(preset.name)
    hs = list(runs.values())
    n_seeds = len(hs[0].seeds) if hs else 0
    for name, h in runs.items():
        if checks is None:
            continue
        st = h.setting
        if not st.role and preset.sweep is None:
            continue
        if not any(_same_conditions(s, st) for s in preset.settings):
            skipped.append(
                {"setting": name, "claim": "every claim of this setting", "reason": _not_covered(preset, st)}
            )
            continue

        def add(text, about, holds, name=name, h=h):
            if holds is None:
                skipped.append(
                    {
                        "setting": name,
                        "claim": text,
                        "reason": f"about {about}; trained: {', '.join(h.losses)}",
                    }
                )
            else:
                claims[text] = np.asarray(holds, dtype=bool)

        checks(name, h, add)
    out = {
        "preset": preset.name,
        "n_seeds": n_seeds,
        "claims": {k: {"holds": [bool(x) for x in v], "count": int(np.sum(v))} for k, v in claims.items()},
        "skipped": skipped,
        "steps": int(hs[0].steps[-1]) if hs else 0,
        "calibrated_steps": preset.steps,
    }
    every = np.all(np.stack(list(claims.values())), axis=0) if claims else np.zeros(0, dtype=bool)
    out["all"] = {"holds": [bool(x) for x in every], "count": int(every.sum())}
    return out


def format_claims(result: dict) -> str:
    """The printed claims of :func:`check_claims`: each checked claim's count of seeds, then the skipped
    ones with the reason (never a count for a claim that does not apply)."""
    n = result["n_seeds"]
    lines = []
    if result["claims"]:
        lines.append(f"what the {result['preset']} preset must show, seed by seed (toy/README.md):")
        for text, c in result["claims"].items():
            lines.append(f"  {c['count']:>3}/{n}  {text}")
        lines.append(f"  {result['all']['count']:>3}/{n}  all of the above")
        if result["steps"] < result["calibrated_steps"]:
            lines.append(
                f"  (the claims are calibrated at {result['calibrated_steps']} steps; this run has "
                f"{result['steps']}: a claim may not hold yet)"
            )
    elif CLAIM_SETS.get(result["preset"]) is None:
        return ""
    else:
        lines.append(f"no claim of the {result['preset']} preset applies to this run")
    if result["skipped"]:
        lines.append("not checked (they describe other settings or losses):")
        for s in result["skipped"]:
            lines.append(f"    -  {s['setting']}: {s['claim']}: {s['reason']}")
    return "\n".join(lines)


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


def summarize(runs: dict[str, History], preset="classic") -> dict:
    """A JSON-ready summary: per setting its configuration, the final metrics per loss
    (``{"mean", "std", "min", "max"}`` over seeds; ``reward_gain`` = E_π[r] − E_μ[r]), the
    closed-form references (means over seeds), and the claims of :func:`check_claims` of ``preset``
    (checked and skipped)."""
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
    out["claims"] = check_claims(runs, preset)
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
        raise ValueError(
            "runs: expected a non-empty {setting name: History} dict (ncakit.toy.trainer.train_bandits)"
        )
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
            label = f"`{loss}`" + (" †" if info.reference_free else "")
            data = "pair" if info.pairwise else f"K = {h.setting.bandit.k}"
            cells = [_cell(finals[m][li], digits, signed) for m, _, signed in ZOO_COLUMNS]
            lines.append("| " + " | ".join([label, data, *cells]) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
