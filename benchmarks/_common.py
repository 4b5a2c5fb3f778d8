"""Helpers shared by the benchmark scripts: machine/version info and result files.

Benchmarks measure; tests assert. Every script writes benchmarks/results/<name>.json with the
machine, the versions, the date and the raw numbers, and `benchmarks/run_all.py` turns those files
into the table in benchmarks/README.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # 1/5/15-minute load averages when the file was written: other jobs on a shared machine
        # inflate wall times (not memory), so every result says how loaded the machine was.
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for mod in ("transformers", "trl", "accelerate", "peft", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed in this environment: leave it out
            pass
    return info


def target_state(met: bool | None, not_met: str = "NOT met") -> str:
    """A target's verdict as the benchmarks print it: ``not measured`` / ``met`` / ``not_met``
    (``"**not met**"`` in the README)."""
    return "not measured" if met is None else ("met" if met else not_met)


def summarize(times: list[float]) -> dict:
    return {
        "min": min(times),
        "median": statistics.median(times),
        "max": max(times),
        "n": len(times),
        "all": times,
    }


def merge_rounds(parts: list[dict]) -> dict:
    """One row per (variant, V) from its rounds (one fresh process each): every timed repeat pooled,
    the largest peak, the loads; a variant whose every round failed keeps its last error row."""
    ok = [r for r in parts if "error" not in r]
    if not ok:
        return parts[-1]
    row = dict(ok[0])
    row["time_s"] = summarize([t for r in ok for t in r["time_s"]["all"]])
    row["peak_extra_mib"] = max(r["peak_extra_mib"] for r in ok)
    row["rounds"] = len(ok)
    row["failed_rounds"] = len(parts) - len(ok)
    row["load_avg_before_after"] = [x for r in ok for x in r["load_avg_before_after"]]
    return row


def worker_rounds(script: str, variants, vocabs, rounds: int, args: list[str], width: int = 14) -> list[dict]:
    """Run ``script --worker VARIANT V *args`` in a fresh process for every (variant, V), the whole
    list ``rounds`` times (a drift in the machine's load hits every variant alike), print each
    run's median time and peak, and merge each (variant, V)'s rounds (:func:`merge_rounds`). A
    failed run keeps its last stderr line as an error row."""
    import subprocess

    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(rounds):
        for vocab in vocabs:
            for variant in variants:
                cmd = [sys.executable, script, "--worker", variant, str(vocab), *args]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    runs.setdefault((variant, vocab), []).append(
                        {"variant": variant, "vocab": vocab, "error": proc.stderr.strip().splitlines()[-1:]}
                    )
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.setdefault((variant, vocab), []).append(row)
                print(
                    f"round {rnd + 1} V={vocab:>6} {variant:<{width}} time median {row['time_s']['median']:7.2f} s   "
                    f"peak extra {row['peak_extra_mib']:8.0f} MiB",
                    flush=True,
                )
    return [merge_rounds(parts) for parts in runs.values()]


def random_llama(vocab: int, hidden: int, layers: int, seed: int = 0, attn: str | None = None):
    """The benchmarks' small Llama (the e2e shape, see ``ncakit.scale.tinylm.tiny_llama``): random
    weights from ``seed``, fp32, 4 heads / 2 KV heads, untied head; ``attn`` picks the attention kernel."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if attn is not None:
        config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """High-water resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(
        f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}", file=sys.stderr
    )
    return path
