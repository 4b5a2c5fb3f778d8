"""The GPU acceptance run in one command (``make gpu-check``): at most 8 minutes on one H100/H200, no downloads.

    .venv/bin/python benchmarks/gpu_check.py                  # on a GPU machine (what `make gpu-check` runs)
    .venv/bin/python benchmarks/gpu_check.py --budget-s 300   # a shorter overall deadline
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke      # the whole flow on tiny shapes on the CPU

What it runs, in this order, each in its own fresh subprocess (so each peak memory is its own):
  1. ``pytest -m gpu tests -q``  the suite's ``gpu``-marked tests (``--pytest-args`` overrides, ``--no-pytest``)
  2. ``bench_gpu_step.py --worker MODE 4`` for each mode (K = 4, 512 + 512 = 1024 tokens per sequence,
     gradient checkpointing on; the setups are in bench_gpu_step.py's docstring):
       lora    7B-shaped Llama (random weights), bf16 LoRA, adapter-disabled reference every step
       qlora   the same 7B, 4-bit nf4 (bitsandbytes) QLoRA at 1 prompt x K 4 x 1024 tokens: ONE 7B build
       full1b  full fine-tuning of a 1.1B shape (TinyLlama's), fp32 master weights + bf16 autocast
       fsdp2   the same 1.1B under FSDP2 ``fully_shard`` on a one-process group
  3. issue 18's speed options on GPU, only if the budget leaves time (else skipped, not an error):
       lora_shared   ``lora`` with ``--prompt-sharing`` (policy and reference share each prompt)
       full1b_fused  ``full1b`` with ``--fused-head`` (the LM head and the NCA loss fused)
     each reported as a speed-up over its plain mode (``speedups`` in gpu_check.json); only the step-0
     target is judged on them (their FLOPs are counted as the plain mode's).
  with a per-mode timeout and an overall deadline (``--budget-s``, default 480 s): a mode that would
  start with less than 20 s left is not run. Then it prints a table (mode, s/step, tokens/s, MFU, peak
  GiB, step-0 loss, targets met), writes ``benchmarks/results/gpu_<mode>.json`` (one per mode of the run,
  a skipped or failed one saying why) and
  ``benchmarks/results/gpu_check.json`` (the summary), and rewrites section 5 of benchmarks/README.md.

Targets (reported met or not; a missed target is a result, not an error): 7B LoRA bf16 at K = 4
``mfu>=0.40`` on an H100/H200 (published DPO anchors 19-27%); ``qlora_peak<=16GB`` (GiB) at 1 x 4 x 1024;
``step0_loss==2ln2`` (|loss - 2 ln 2| <= 1e-6) for every mode: policy == reference at step 0.

Exit status: 0 when pytest passed and every mode ran; 1 when pytest failed or timed out, a mode
errored or timed out, or the deadline left a mode unrun; 2 when ncakit, transformers, peft, datasets or
pytest cannot be imported (checked first, nothing is run). qlora without bitsandbytes is skipped with
a one-line message (not an error). Without CUDA it prints one line, measures nothing and exits 0.

``--cpu-smoke``: the same flow on tiny shapes on the CPU (qlora skipped: bitsandbytes 4-bit needs
CUDA; fsdp2 over gloo), a nominal 1 TFLOP/s peak so the MFU arithmetic runs; it writes NOTHING unless
``--out DIR`` is given (then the JSONs and README_gpu.md go to DIR, never to benchmarks/results).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"
sys.path.insert(0, str(HERE))
import bench_gpu_step as bench  # noqa: E402
from _common import RESULTS, machine_info, write_result  # noqa: E402

K = 4
MODES = ["lora", "qlora", "full1b", "fsdp2", "lora_shared", "full1b_fused"]
# Issue 18's GPU versions, after the acceptance modes and only if the budget leaves time (else skipped,
# not an error): a mode of bench_gpu_step with one speed option on, compared with its plain mode.
EXTRA = {"lora_shared": ("lora", "prompt_sharing"), "full1b_fused": ("full1b", "fused_head")}
# Per-mode settings, sized for the 8-minute budget on one H100/H200 (7B random init on the GPU ~10-30 s;
# qlora also saves and re-loads the 7B in 4-bit, the slowest set-up). Step 0 is the first warm-up step.
PLAN = {
    "lora": dict(prompts=4, steps=4, warmup=2, timeout_s=150),
    "qlora": dict(prompts=1, steps=3, warmup=1, timeout_s=240),
    "full1b": dict(prompts=4, steps=5, warmup=2, timeout_s=100),
    "fsdp2": dict(prompts=4, steps=5, warmup=2, timeout_s=100),
    "lora_shared": dict(prompts=4, steps=4, warmup=2, timeout_s=150),
    "full1b_fused": dict(prompts=4, steps=5, warmup=2, timeout_s=100),
}
DEFAULT_PYTEST_ARGS = "-m gpu tests -q -p no:cacheprovider"
PREREQUISITES = ("ncakit", "transformers", "peft", "datasets", "pytest")  # what every worker imports
MIN_START_S = 20.0  # a step (pytest or a mode) is not started with less time than this left
SMOKE_PEAK_TFLOPS = 1.0  # nominal, so the MFU arithmetic runs on the CPU; not a CPU's real peak
TABLE_COLUMNS = ["mode", "K", "s/step", "tokens/s", "MFU", "peak GiB", "step-0 loss", "targets met"]
NOT_MEASURED = "_Not measured: no GPU was lent in this session._"


def run_bounded(cmd: list[str], timeout_s: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (pytest's children too)."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    return {
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "seconds": time.perf_counter() - t,
        "stdout": out or "",
        "stderr": err or "",
    }


def _tail(text: str, n: int = 5) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()][-n:]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_pytest(args, remaining: float, env: dict) -> dict:
    cmd = [sys.executable, "-m", "pytest", *shlex.split(args.pytest_args)]
    res = {"command": " ".join(["python", "-m", "pytest", *shlex.split(args.pytest_args)])}
    if remaining < MIN_START_S:
        return res | {"status": "not run (overall budget exhausted)", "ok": False}
    limit = min(args.pytest_timeout_s, remaining)
    r = run_bounded(cmd, limit, env)
    summary = _tail(r["stdout"], 1)
    res |= {"returncode": r["returncode"], "seconds": r["seconds"], "summary": summary[0] if summary else ""}
    if r["timed_out"]:
        return res | {"status": f"timed out after {limit:.0f} s", "ok": False, "tail": _tail(r["stdout"], 10)}
    if r["returncode"] != 0:
        return res | {"status": "failed", "ok": False, "tail": _tail(r["stdout"], 15) + _tail(r["stderr"], 5)}
    return res | {"status": "passed", "ok": True}


def mode_args(args, mode: str) -> argparse.Namespace:
    """bench_gpu_step's arguments for one worker of ``mode``."""
    plan = PLAN[mode]
    a = bench.build_parser().parse_args([])
    a.prompts, a.steps, a.warmup = plan["prompts"], plan["steps"], plan["warmup"]
    a.peak_tflops = args.peak_tflops
    a.tmpdir = args.tmpdir
    a.cpu_smoke = args.cpu_smoke
    if args.cpu_smoke:
        bench.smoke_limits(a)
    return a


def run_mode(args, mode: str, remaining: float, env: dict) -> dict:
    base = {"mode": mode, "k": K}
    if args.cpu_smoke and mode == "qlora":
        return base | {"skipped": "bitsandbytes 4-bit needs CUDA; qlora is not part of the CPU smoke"}
    if mode == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return base | {
            "skipped": "bitsandbytes is not installed (pip install -e '.[quant]' on this GPU machine)"
        }
    if remaining < MIN_START_S:
        if mode in EXTRA:
            return base | {"skipped": f"not run: {remaining:.0f} s left of the overall budget"}
        return base | {"error": f"not run: {remaining:.0f} s left of the overall budget"}
    a = mode_args(args, mode)
    bench_mode, option = EXTRA.get(mode, (mode, None))
    if option:
        setattr(a, option, True)
    cmd = bench.worker_command(a, bench_mode, K)
    limit = min(PLAN[mode]["timeout_s"] * (1 if not args.cpu_smoke else 2), remaining)
    r = run_bounded(cmd, limit, env)
    base["wall_s"] = r["seconds"]
    if r["timed_out"]:
        return base | {"error": f"timed out after {limit:.0f} s", "tail": _tail(r["stderr"], 8)}
    if r["returncode"] != 0:
        return base | {"error": f"exit status {r['returncode']}", "tail": _tail(r["stderr"], 8)}
    try:
        row = bench.parse_worker_output(r["stdout"])
    except ValueError as e:
        return base | {"error": str(e), "tail": _tail(r["stdout"], 5) + _tail(r["stderr"], 5)}
    if option:  # judged on step 0 only: the MFU target belongs to the plain mode (unshared FLOPs)
        row["targets"] = {n: (v if n == "step0_loss==2ln2" else None) for n, v in row["targets"].items()}
    return row | {"mode": mode, "bench_mode": bench_mode, "wall_s": r["seconds"]}


def speedups(rows: list[dict]) -> dict:
    """s/step of each plain mode over its EXTRA mode's (> 1: the option is faster), where both ran."""
    by = {r["mode"]: r for r in rows if "step_s" in r}
    return {
        name: by[plain]["step_s"]["median"] / by[name]["step_s"]["median"]
        for name, (plain, _) in EXTRA.items()
        if name in by and plain in by
    }


def table_cells(row: dict) -> dict:
    """One table row as strings, keyed by TABLE_COLUMNS."""
    cells = dict.fromkeys(TABLE_COLUMNS, "")
    cells["mode"], cells["K"] = row["mode"], str(row.get("k", K))
    if "skipped" in row:
        cells["targets met"] = f"skipped: {row['skipped']}"
        return cells
    if "error" in row:
        cells["targets met"] = f"ERROR: {row['error']}"
        return cells
    mfu = row.get("mfu")
    cells["s/step"] = f"{row['step_s']['median']:.3f}"
    cells["tokens/s"] = f"{row['tokens_per_s_per_gpu']:.0f}"
    cells["MFU"] = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    cells["peak GiB"] = f"{row['peak_memory_gib']:.2f}"
    cells["step-0 loss"] = f"{row['step0_loss']:.7f}" if row.get("step0_loss") is not None else "n/a"
    judged = []
    for name, met in row["targets"].items():
        if met is None:
            continue
        value = row["target_values"][name]
        shown = f"{value:.3f}" if name != "step0_loss==2ln2" else f"{value - bench.TWO_LN2:+.1e}"
        judged.append(f"{name} {'met' if met else 'MISSED'} ({shown})")
    cells["targets met"] = "; ".join(judged) or "none apply"
    return cells


def format_table(rows: list[dict], *, markdown: bool = False) -> str:
    cells = [table_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(c[col] for col in TABLE_COLUMNS) + " |" for c in cells]
        return "\n".join(lines)
    widths = {col: max([len(col)] + [len(c[col]) for c in cells]) for col in TABLE_COLUMNS}
    lines = ["  ".join(col.ljust(widths[col]) for col in TABLE_COLUMNS).rstrip()]
    lines += ["  ".join(c[col].ljust(widths[col]) for col in TABLE_COLUMNS).rstrip() for c in cells]
    return "\n".join(lines)


def overall_targets(rows: list[dict]) -> dict:
    """Each target from the row that judges it: {"met": bool or None, "value": ..., "mode": ...}."""
    out = {}
    for name in ("mfu>=0.40", "qlora_peak<=16GB", "step0_loss==2ln2"):
        judged = [r for r in rows if r.get("targets", {}).get(name) is not None]
        if not judged:
            out[name] = {"met": None, "value": None, "modes": []}
        else:
            out[name] = {
                "met": all(r["targets"][name] for r in judged),
                "value": {r["mode"]: r["target_values"][name] for r in judged},
                "modes": [r["mode"] for r in judged],
            }
    return out


def readme_section(summary: dict | None) -> list[str]:
    """Section 5 of benchmarks/README.md, from a gpu_check.json summary (None: not measured)."""
    out = [
        "## 5. GPU acceptance run (`make gpu-check`): 7B LoRA / QLoRA, 1.1B full and FSDP2 steps",
        "",
        "`make gpu-check` runs `benchmarks/gpu_check.py` on one H100/H200 in at most 8 minutes with no "
        "downloads: the `gpu`-marked tests (`pytest -m gpu tests`), then `bench_gpu_step.py` in one fresh "
        "process per mode at K = 4 and 1024-token sequences (512 prompt + 512 response), gradient "
        "checkpointing on: `lora` (Mistral-7B's shape from `LlamaConfig`, random weights, bf16, LoRA r 16 on "
        "all linear layers, reference = the adapter-disabled model every step), `qlora` (the same 7B in 4-bit "
        "nf4 via bitsandbytes, 1 prompt x K 4), `full1b` (TinyLlama-1.1B's shape, full fine-tuning, fp32 "
        "master weights + bf16 autocast) and `fsdp2` (the 1.1B under FSDP2 `fully_shard` on a one-process "
        "group, bf16 `MixedPrecisionPolicy`); then, if the budget leaves time (else skipped), issue 18's "
        "options on GPU: `lora_shared` (`lora` with prompt sharing, policy and reference) and `full1b_fused` "
        "(`full1b` with the fused head + loss), each reported as a speed-up over its plain mode (MFU "
        "counted on the unshared FLOPs). Each mode writes `results/gpu_<mode>.json`; the summary is "
        "`results/gpu_check.json`. MFU counts model FLOPs (6N + 6LdT per token for full, 4N + 6LdT for LoRA, "
        "plus the reference forward inside LoRA steps; recomputation not counted), formula in "
        "`bench_gpu_step.py`. `python benchmarks/bench_gpu_step.py` alone runs the older K = 2 / 4 sweep "
        "(`results/gpu_step.json`).",
        "",
        "Targets, reported met or not: 7B LoRA bf16 at K = 4 at >= 40% MFU on H100/H200 (published DPO "
        "anchors 19-27%); QLoRA 7B peak memory <= 16 GB (GiB) at 1 x K 4 x 1024 tokens; step-0 NCA loss "
        "exactly 2 ln 2 (|loss - 2 ln 2| <= 1e-6; policy == reference at step 0).",
        "",
    ]
    if not summary:
        return out + [NOT_MEASURED, ""]
    m = summary.get("machine", {})
    v = summary.get("versions", {})
    out += [
        f"_{m.get('date', '?')}, {m.get('cuda') or 'no GPU'}, torch {v.get('torch', '?')} (CUDA "
        f"{v.get('cuda', '?')}), transformers {v.get('transformers', '?')}, peft {v.get('peft', '?')}, "
        f"bitsandbytes {v.get('bitsandbytes') or 'not installed'}; wall {summary.get('wall_s', 0):.0f} s of "
        f"a {summary.get('budget_s', 0):.0f} s budget._",
        "",
        f"`pytest -m gpu tests`: {summary.get('pytest', {}).get('status', 'n/a')} "
        f"({summary.get('pytest', {}).get('summary', '')}).",
        "",
        format_table(summary["rows"], markdown=True),
        "",
    ]
    if summary.get("files"):
        listed = ", ".join(f"`results/{name}.json` ({date})" for name, date in summary["files"].items())
        out += [f"Result files of this run: {listed}.", ""]
    for name, t in summary.get("targets", {}).items():
        verdict = "not judged" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        out.append(f"- `{name}`: {verdict}" + (f" ({t['value']})" if t["value"] is not None else ""))
    for name, ratio in summary.get("speedups", {}).items():
        plain, option = EXTRA[name]
        out.append(f"- `{name}` (`{plain}` with `{option}`): {ratio:.2f}x faster per step than `{plain}`")
    return out + [""]


def update_readme(path: Path = README) -> None:
    """Rewrite the benchmarks README from the result files (``run_all.render_readme``: its section 5 is
    :func:`readme_section` of ``results/gpu_check.json``), so the README has one author."""
    import run_all

    path.write_text(run_all.render_readme())


def write_json(name: str, payload: dict, out: Path | None) -> Path:
    if out is None:
        return write_result(name, payload)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **payload}, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480.0, help="overall deadline in seconds (8 min)")
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--no-pytest", action="store_true", help="skip the `pytest -m gpu` step")
    p.add_argument("--pytest-args", default=DEFAULT_PYTEST_ARGS)
    p.add_argument("--pytest-timeout-s", type=float, default=150.0)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--tmpdir", default=None, help="where qlora writes its temporary 14.5 GB bf16 checkpoint")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU; writes only into --out")
    p.add_argument("--out", type=Path, default=None, help="write the result files here, not in results/")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; nothing was measured and no file written (--cpu-smoke: the code path)."
        )
        return 0
    missing = [m for m in PREREQUISITES if importlib.util.find_spec(m) is None]
    if missing:  # fail fast, before any device time is spent on builds that cannot import
        print(
            f"gpu_check: cannot import {', '.join(missing)} with {sys.executable}; nothing measured "
            "(install ncakit[scale], or carry the wheels and set PYTHONPATH: DEVELOPERS.md)."
        )
        return 2
    if args.cpu_smoke and args.peak_tflops is None:
        args.peak_tflops = SMOKE_PEAK_TFLOPS
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.cpu_smoke:  # tiny tensors: one thread each (two thrash a shared 2-core machine)
        env.setdefault("OMP_NUM_THREADS", "1")
    if not args.cpu_smoke and "qlora" in args.modes and importlib.util.find_spec("bitsandbytes") is None:
        print("gpu_check: bitsandbytes is not installed, so qlora is skipped (pip install -e '.[quant]').")
    print(
        f"gpu_check: {'CPU smoke, tiny shapes' if args.cpu_smoke else torch.cuda.get_device_name(0)}; "
        f"budget {args.budget_s:.0f} s; modes {' '.join(args.modes)}",
        flush=True,
    )

    if args.no_pytest:
        pytest_res = {"status": "not run (--no-pytest)", "ok": True}
    else:
        pytest_res = run_pytest(args, deadline - time.monotonic(), env)
        print(f"pytest: {pytest_res['status']} {pytest_res.get('summary', '')}", flush=True)
        for line in pytest_res.get("tail", []) if not pytest_res["ok"] else []:
            print(f"  {line}", file=sys.stderr)

    rows = []
    for mode in args.modes:
        row = run_mode(args, mode, deadline - time.monotonic(), env)
        rows.append(row)
        status = "skipped" if "skipped" in row else ("ERROR" if "error" in row else "done")
        print(f"{mode}: {status} ({row.get('wall_s', 0):.0f} s)", flush=True)
        for line in row.get("tail", []):
            print(f"  {line}", file=sys.stderr)

    wall = time.monotonic() - t_start
    print()
    print(format_table(rows))
    errors = [f"{r['mode']}: {r['error']}" for r in rows if "error" in r]
    if not pytest_res["ok"]:
        errors.insert(0, f"pytest: {pytest_res['status']}")
    measured = [r for r in rows if "error" not in r and "skipped" not in r]
    summary = {
        "budget_s": args.budget_s,
        "wall_s": wall,
        "cpu_smoke": args.cpu_smoke,
        "versions": measured[0]["versions"] if measured else bench.versions(),
        "plan": {m: PLAN[m] | {"k": K} for m in args.modes},
        "pytest": pytest_res,
        "rows": rows,
        "targets": overall_targets(rows),
        "speedups": speedups(rows),
        "errors": errors,
        "ok": not errors,
    }
    print(f"\ngpu_check: {wall:.0f} s; " + ("no errors" if not errors else "errors: " + "; ".join(errors)))
    for name, t in summary["targets"].items():
        verdict = "not judged" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  target {name}: {verdict} {t['value'] if t['value'] is not None else ''}")
    for name, ratio in summary["speedups"].items():
        print(f"  {name}: {ratio:.2f}x the s/step of {EXTRA[name][0]}")

    if args.cpu_smoke and args.out is None:
        print("gpu_check: CPU smoke, no result file written (--out DIR to keep them).")
    else:
        out = args.out
        files = {}
        for row in rows:  # every mode of this run gets its file, a skipped or failed one too (it says why)
            name = f"gpu_{row['mode']}"
            payload = {"mode": row["mode"], "targets": row.get("targets")}
            payload |= {"target_values": row.get("target_values"), "row": row}
            path = write_json(name, payload, out)
            files[name] = json.loads(path.read_text())["machine"]["date"]
        summary["files"] = files
        path = write_json("gpu_check", summary, out)
        stored = json.loads(path.read_text())
        if out is None:
            update_readme()
        else:
            (out / "README_gpu.md").write_text("\n".join(readme_section(stored)).rstrip() + "\n")
        where = RESULTS if out is None else out
        print(f"gpu_check: wrote gpu_*.json and gpu_check.json under {where}")
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
