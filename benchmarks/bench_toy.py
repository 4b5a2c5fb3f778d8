"""Toy sweep benchmark: the default classic preset of ``toy/demo.py`` (4 losses x 3 settings x
8 seeds x 2000 steps, one batched program) on this machine's CPU.

Measures (target <= 10 s):
  sweep        a warm-up, then ``--repeats`` timed runs of ``ncakit.toy.presets.run_preset("classic")``:
               wall and process-CPU seconds (min / median / max), ms per step, and the load average
               around each run (other processes on a 2-core machine inflate wall times);
  scaling      ms per step with 1 and 8 seeds (equal => the step is per-op overhead, not arithmetic)
               and with 1 vs 2 torch threads;
  profile      the top operators by self CPU time over 200 steps (torch.profiler), to say where time goes;
  robustness   the classic claims checked seed by seed on ``--robustness-seeds`` seeds (default 20);
  demo         the wall time of ``python toy/demo.py`` end to end (imports, training, figures).

Usage: python benchmarks/bench_toy.py [--repeats 3] [--threads 1] [--robustness-seeds 20] [--no-demo]
Writes benchmarks/results/toy_sweep.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summarize, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _timed_run(presets, seeds, steps=None, log_every=None):
    load0 = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    runs = presets.run_preset("classic", seeds, steps=steps, log_every=log_every, threads=None)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return runs, wall, cpu, (load0, os.getloadavg()[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: fastest here)")
    p.add_argument("--robustness-seeds", type=int, default=20)
    p.add_argument("--no-demo", action="store_true", help="skip the end-to-end demo timing")
    args = p.parse_args(argv)

    import torch

    from ncakit.toy import presets, report

    torch.set_num_threads(args.threads)
    preset = presets.get_preset("classic")
    seeds = range(8)
    steps = preset.steps

    print("warm-up ...", file=sys.stderr)
    _timed_run(presets, seeds, steps=100)
    walls, cpus, loads = [], [], []
    for i in range(args.repeats):
        _, wall, cpu, load = _timed_run(presets, seeds)
        walls.append(wall)
        cpus.append(cpu)
        loads.append(load)
        print(
            f"repeat {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, load avg {load[0]:.1f} -> {load[1]:.1f}",
            file=sys.stderr,
        )

    # Scaling: fixed overhead vs work (1 vs 8 seeds), and 1 vs 2 threads.
    def ms_per_step(n_seeds, threads, n_steps=400):
        torch.set_num_threads(threads)
        _, wall, _, _ = _timed_run(presets, range(n_seeds), steps=n_steps, log_every=n_steps)
        torch.set_num_threads(args.threads)
        return 1e3 * wall / n_steps

    scaling = {
        "ms_per_step_1_seed_1_thread": ms_per_step(1, 1),
        "ms_per_step_8_seeds_1_thread": ms_per_step(8, 1),
        "ms_per_step_8_seeds_2_threads": ms_per_step(8, 2),
    }
    print(f"scaling: {scaling}", file=sys.stderr)

    # Where the time goes: operators by self CPU time over 200 steps.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        presets.run_preset("classic", seeds, steps=200, log_every=1000, threads=None)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    top_ops = [
        {
            "op": e.key,
            "calls_per_step": round(e.count / 200, 2),
            "self_cpu_ms_per_step": round(e.self_cpu_time_total / 200 / 1e3, 4),
            "share": round(e.self_cpu_time_total / total_us, 4),
        }
        for e in events[:12]
    ]
    n_ops = sum(e.count for e in events if e.key.startswith("aten::")) / 200

    # Robustness of the classic claims over more seeds.
    runs, rob_wall, _, _ = _timed_run(presets, range(args.robustness_seeds))
    claims = report.check_claims(runs)
    print(
        f"robustness: all claims hold in {claims['all']['count']}/{claims['n_seeds']} seeds", file=sys.stderr
    )
    robustness = {
        "seeds": args.robustness_seeds,
        "all_claims": claims["all"]["count"],
        "per_claim": {k: v["count"] for k, v in claims["claims"].items()},
        "final_chosen_mean_std": {
            name: {
                loss: [round(v["chosen"]["mean"], 3), round(v["chosen"]["std"], 3)]
                for loss, v in h.summary(["chosen"]).items()
            }
            for name, h in runs.items()
        },
        "wall_s": rob_wall,
    }

    demo = None
    if not args.no_demo:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "MPLBACKEND": "Agg"}
            load0 = os.getloadavg()[0]
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, str(ROOT / "toy" / "demo.py"), "--out", tmp, "--no-progress"],
                check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            demo = {"wall_s": time.perf_counter() - t, "load_avg_before": load0}
        print(f"demo: {demo['wall_s']:.1f} s wall", file=sys.stderr)

    payload = {
        "what": "ncakit.toy.presets.run_preset('classic'): 4 losses x 3 settings x 8 seeds x 2000 steps, one batched program",
        "threads": args.threads,
        "steps": steps,
        "wall_s": summarize(walls),
        "cpu_s": summarize(cpus),
        "ms_per_step_median": 1e3 * sorted(walls)[len(walls) // 2] / steps,
        "load_avg_before_after": loads,
        "target_s": 10.0,
        "meets_target": min(walls) <= 10.0,
        "scaling": scaling,
        "aten_ops_per_step": round(n_ops, 1),
        "top_ops": top_ops,
        "robustness": robustness,
        "demo": demo,
    }
    write_result("toy_sweep", payload)
    print(
        f"toy sweep: wall min {min(walls):.2f} / median {sorted(walls)[len(walls) // 2]:.2f} / max {max(walls):.2f} s "
        f"(target 10 s); CPU median {sorted(cpus)[len(cpus) // 2]:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
