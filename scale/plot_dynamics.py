"""Draw a run's training dynamics (Chen et al. 2024, Figure 2): implicit reward of each reward rank
(or chosen / rejected) and the margin over training, from ``RUN_DIR/metrics.jsonl``.

    python scale/plot_dynamics.py out/scale-demo                      # -> out/scale-demo/dynamics.png
    python scale/plot_dynamics.py out/nca out/dpo --out out/nca-vs-dpo.png

A thin entry point to :func:`ncakit.scale.runlog.plot_run_dynamics`.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from ncakit.scale.runlog import plot_run_dynamics, read_run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", help="output_dir(s) of scale/train.py runs")
    parser.add_argument("--out", help="image path (default: RUN_DIR/dynamics.png of the first run)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    runs = [read_run(d) for d in args.run_dirs]
    fig = plot_run_dynamics(runs, title=args.title)
    out = Path(args.out) if args.out else runs[0].path / "dynamics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    for run in runs:
        last = (run.eval or run.train)[-1]
        prefix = "eval_" if run.eval else ""
        print(
            f"{run.path}: {run.label}, step {last['step']}: chosen {last[prefix + 'rewards/chosen']:+.4f}, "
            f"rejected {last[prefix + 'rewards/rejected']:+.4f}, margin {last[prefix + 'rewards/margins']:+.4f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
