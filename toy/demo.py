"""Classroom demo: on toy bandits, DPO and InfoNCA lower the likelihood of the chosen responses and
NCA does not; and the controls that show why (see toy/README.md and ncakit/MATH.md).

    python toy/demo.py                                   # the classic preset, 8 seeds -> out/demo/
    python toy/demo.py --animate                         # plus GIFs of π_θ(·|x): DPO vs NCA
    python toy/demo.py --projector                       # plus hero.png, one 16:9 figure for a lecture hall
    python toy/demo.py --policy linear lowrank mlp       # the shared setting with every family
    python toy/demo.py --preset beta-sweep --seeds 4 --steps 1000
    python toy/demo.py --preset zoo --out out/zoo                # every registered loss: zoo_table.md, zoo.png

Writes PNG figures, ``summary.json`` (final metrics per loss x setting, mean/std over seeds, and
the claims checked seed by seed) and, with ``--animate``, GIFs; prints a compact table. The ``zoo``
preset writes one figure, ``zoo.png``, and the full table, ``zoo_table.md``.
Run ``python toy/demo.py --help`` for every flag.
Everything importable lives in ``ncakit.toy`` (presets, report, figures, classroom); this file only
parses arguments, runs a preset and writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import ncakit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")

from ncakit.registry import loss_names  # noqa: E402
from ncakit.toy import classroom, figures, presets, projector, report  # noqa: E402
from ncakit.toy.policies import FAMILIES  # noqa: E402

LOSSES = loss_names(aliases=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="toy/demo.py",
        description="Toy bandits that show DPO/InfoNCA lowering the chosen likelihood and NCA not doing so.",
        epilog="Presets:\n"
        + "\n".join(
            textwrap.fill(
                pr.description,
                100,
                initial_indent=f"  {name:12s} ",
                subsequent_indent=" " * 15,
                break_on_hyphens=False,
            )  # fmt: skip
            for name, pr in presets.PRESETS.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", default="classic", choices=list(presets.PRESETS), help="experiment (default: classic)"
    )
    p.add_argument(
        "--losses",
        nargs="+",
        metavar="LOSS",
        help=f"losses to train (default: the preset's); any of: {', '.join(sorted(LOSSES))}",
    )
    p.add_argument(
        "--policy",
        nargs="+",
        metavar="FAMILY",
        help=f"family (or families) of the preset's shared setting(s): {', '.join(FAMILIES)}",
    )
    p.add_argument(
        "--seeds", type=_positive_int, default=8, help="number of seeds, run as one batch (default: 8)"
    )
    p.add_argument(
        "--seed-offset", type=int, default=0, help="first seed (default: 0; seeds are offset..offset+n-1)"
    )
    p.add_argument(
        "--steps", type=_positive_int, help="training steps (default: the preset's: 2000, zoo 1000)"
    )
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument(
        "--animate",
        nargs="*",
        metavar="SETTING",
        help="also write GIFs of π_θ(·|x) of one prompt, DPO vs NCA (~5-10 s each): for the named settings, "
        "or, with no name, for those that show the effect (overlap/shared; every setting of a sweep)",
    )
    p.add_argument(
        "--projector",
        action="store_true",
        help="also write hero.png: ONE 16:9 figure with large type for a lecture hall, the chosen "
        "likelihood over training under DPO, InfoNCA and NCA with overlapping comparisons",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--threads", type=_positive_int, default=1, help="torch CPU threads (default: 1, fastest here)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.losses:
        unknown = [n for n in args.losses if n not in LOSSES]
        if unknown:
            parser.error(
                f"--losses: unknown {', '.join(map(repr, unknown))}; expected any of {', '.join(sorted(LOSSES))}"
            )
        if len(set(args.losses)) != len(args.losses):
            parser.error(f"--losses: each loss once, got {' '.join(args.losses)}")
    if args.policy:
        unknown = [f for f in args.policy if f not in FAMILIES]
        if unknown:
            parser.error(
                f"--policy: unknown {', '.join(map(repr, unknown))}; expected any of {', '.join(FAMILIES)}"
            )
    if args.seed_offset < 0:
        parser.error(f"--seed-offset: expected an integer >= 0, got {args.seed_offset}")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected a torch device such as cpu, cuda or cuda:0, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    preset = presets.get_preset(args.preset)
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = presets.run_preset(
        preset,
        seeds,
        losses=args.losses,
        steps=args.steps,
        families=args.policy,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    t_train = time.perf_counter() - t0

    written = []
    for stem, fig in figures.preset_figures(runs, preset.sweep, preset.report).items():
        written.append(figures.save_figure(fig, out / f"{stem}.png"))
    if preset.report == "zoo":
        table = out / "zoo_table.md"
        table.write_text(report.format_zoo_table(runs))
        written.append(table)
    if args.projector:
        try:
            hero = projector.plot_hero(runs)
        except ValueError as err:
            print(f"--projector: {err}", file=sys.stderr)
            return 2
        hero.savefig(out / "hero.png", dpi=120)
        matplotlib.pyplot.close(hero)
        written.append(out / "hero.png")
    if args.animate is not None:
        h0 = next(iter(runs.values()))
        pair = [n for n in ("dpo", "nca") if n in h0.losses] or list(h0.losses[:2])
        unknown = [n for n in args.animate if n not in runs]
        if unknown:
            print(
                f"--animate: no setting named {', '.join(map(repr, unknown))}; settings: {', '.join(runs)}",
                file=sys.stderr,
            )
            return 2
        names = (
            args.animate
            or [n for n, h in runs.items() if h.setting.role in ("overlap", "shared")]
            or list(runs)
        )
        for name in names:
            written.append(classroom.animate_policy(runs[name], out / f"animation_{name}.gif", losses=pair))
    t_figs = time.perf_counter() - t0 - t_train

    summary = {
        "preset": preset.name,
        "description": preset.description,
        "seeds": list(seeds),
        "steps": int(next(iter(runs.values())).steps[-1]),
        "losses": list(next(iter(runs.values())).losses),
        "loss_kwargs": next(iter(runs.values())).loss_kwargs,
        "device": str(args.device),
        **report.summarize(runs, preset),
        "files": [p.name for p in written],
        "seconds": {"train": round(t_train, 2), "figures": round(t_figs, 2)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    n = len(seeds)
    print(
        f"ncakit toy demo: preset {preset.name}, {len(summary['losses'])} losses x {len(runs)} settings x {n} seeds x "
        f"{summary['steps']} steps (training {t_train:.1f} s, figures {t_figs:.1f} s)\n"
    )
    print(f"final log-ratio log π/μ of the chosen response (nats), mean ± std over {n} seeds")
    print(report.format_table(runs, "chosen"))
    if preset.report == "zoo":
        print(f"\n(every column of every loss, with what each measures: {out}/zoo_table.md)")
    else:
        print("\nfinal log-ratio of each prompt's best seen response (nats)")
        print(report.format_table(runs, "best_logratio"))
        print("\nexpected true reward gain over μ")
        print(report.format_table(runs, "reward_gain"))
    # Each preset's own claims, checked only where they apply (the zoo has none: its table is its story).
    text = report.format_claims(summary["claims"])
    if text:
        print("\n" + text)
    print(f"\nwrote {out}/: {', '.join(p.name for p in written)}, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
