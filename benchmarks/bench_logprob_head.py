"""Log-prob head benchmark: naive full-vocab log_softmax vs ncakit's chunked heads vs TRL 1.16's
chunked log-prob kernel (trl/kernels/chunked_logprob.py), forward + backward.

Setup: hidden size 1024, 8192 scored tokens, vocab 32k and 128k, fp32 on CPU.
Every (variant, vocab) runs in a FRESH process, so its peak RSS is its own: we report
``peak_extra_mib`` = high-water RSS minus the RSS after the inputs were allocated (the memory the head
itself needs: logits, log-softmax, gradients, chunk buffers), and the time of fwd+bwd.

Variants:
  naive            logits = h @ W.T; log_softmax; gather          (W trainable: full fine-tuning)
  ncakit_logits    logits = h @ W.T; ncakit.logprobs.token_logps (chunked gather - logsumexp)
  ncakit_hidden    ncakit.logprobs.linear_token_logps(h, W, y)   (logits never built)
  trl_chunked      trl.kernels.ChunkedLogProbFunction             (TRL's default tiles)
  naive_frozen / ncakit_hidden_frozen: the same with a frozen head (LoRA: no grad for W)
  ncakit_hidden@N / ncakit_hidden_frozen@N: with ``chunk_size=N`` tokens instead of the default
                   (``ncakit.logprobs.auto_chunk_size``: a 64 MiB fp32 [chunk, V] block), from ``--chunks``

Matmul count (why the trainable ncakit head is expected near 4/3 of naive's time): naive does
h @ W.T forward and two matmuls backward (dh, dW) = 3; ncakit_hidden with a trainable head keeps only
the logsumexp in the forward and recomputes each chunk's logits in the backward = 4. With a frozen
head it forms dh = g * (W[y] - softmax @ W) during the forward = 2 matmuls, as naive's 2.

The 1-minute load average is recorded around every variant: timings taken while other jobs run
are inflated (memory is not).

Usage: python benchmarks/bench_logprob_head.py [--vocab 32000 128256] [--tokens 8192] [--repeats 2]
           [--rounds 1] [--chunks 256 1024 2048] [--variants ...] [--name logprob_head]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, rss_mib, summarize, worker_rounds, write_result  # noqa: E402

VARIANTS = ["naive", "ncakit_logits", "ncakit_hidden", "trl_chunked", "naive_frozen", "ncakit_hidden_frozen"]


def _split(variant: str) -> tuple[str, int | None]:
    """``"ncakit_hidden@1024"`` -> ``("ncakit_hidden", 1024)``; no suffix -> the default chunk (None)."""
    base, _, chunk = variant.partition("@")
    if base not in VARIANTS or (chunk and not base.startswith("ncakit")):
        raise ValueError(
            f"variant: unknown {variant!r}; expected one of {VARIANTS} (ncakit_* may take @CHUNK)"
        )
    return base, (int(chunk) if chunk else None)


def _step(variant: str, hidden, weight, targets):
    import torch
    import torch.nn.functional as F

    from ncakit import logprobs as LP

    variant, chunk = _split(variant)
    if variant.startswith("naive"):
        logp = F.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    elif variant == "ncakit_logits":
        # logits [1, n + 1, V] from one extra (zero) hidden row, labels [-100, y...]: position t predicts
        # label t + 1, so the n scored positions are exactly the n tokens of the other variants.
        h_ext = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])
        labels = torch.cat([targets.new_full((1,), -100), targets])[None, :]
        logp = LP.token_logps((h_ext @ weight.t()).unsqueeze(0), labels, chunk_size=chunk)[0]
    elif variant.startswith("ncakit_hidden"):
        logp = LP.linear_token_logps(hidden, weight, targets, chunk)
    elif variant == "trl_chunked":
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        logp = ChunkedLogProbFunction.apply(
            hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ()
        )[0]
    else:
        raise ValueError(f"variant: unknown {variant!r}; expected one of {VARIANTS}")
    # A per-token upstream gradient like a sequence loss would send.
    (logp * 0.5).sum().backward()
    return logp.detach()


def worker(variant: str, vocab: int, tokens: int, hidden_size: int, repeats: int, threads: int) -> dict:
    import torch

    from ncakit.logprobs import auto_chunk_size

    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    frozen = _split(variant)[0].endswith("_frozen")
    hidden = torch.randn(tokens, hidden_size, generator=g).requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).requires_grad_(not frozen)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    # Warm up on a tiny problem first so lazy library initialisation (thread pools, kernels,
    # imports) is not counted as the head's memory.
    small_h = torch.randn(64, hidden_size).requires_grad_(True)
    small_w = torch.randn(vocab, hidden_size).requires_grad_(not frozen)
    _step(variant, small_h, small_w, torch.randint(0, vocab, (64,)))
    del small_h, small_w
    # Gradient buffers are part of every variant's baseline: allocate them before measuring.
    hidden.grad = torch.zeros_like(hidden)
    if not frozen:
        weight.grad = torch.zeros_like(weight)
    base = rss_mib()
    times, first = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _step(variant, hidden, weight, targets)
        times.append(time.perf_counter() - t0)
        first = out if first is None else first
    return {
        "variant": variant,
        "vocab": vocab,
        "tokens": tokens,
        "hidden": hidden_size,
        "trainable_head": not frozen,
        "time_s": summarize(times),
        "baseline_rss_mib": base,
        "peak_extra_mib": peak_rss_mib() - base,
        "checksum": float(first.double().sum()),
        "chunk_size": (_split(variant)[1] or auto_chunk_size(vocab))
        if variant.startswith("ncakit")
        else None,
        "threads": threads,
        "load_avg_before_after": [load0, os.getloadavg()[0]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per process")
    p.add_argument(
        "--rounds", type=int, default=1, help="run the whole variant list this many times, interleaved"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=VARIANTS, help=f"some of {VARIANTS}")
    p.add_argument(
        "--chunks",
        type=int,
        nargs="*",
        default=[],
        help="extra chunk sizes (tokens) to time for ncakit_hidden and ncakit_hidden_frozen",
    )
    p.add_argument("--name", default="logprob_head", help="result file benchmarks/results/<name>.json")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "VOCAB"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        res = worker(a.worker[0], int(a.worker[1]), a.tokens, a.hidden, a.repeats, a.threads)
        print(json.dumps(res))
        return 0
    variants = list(a.variants)
    for v in variants:
        _split(v)  # fail before any process starts
    for c in a.chunks:
        variants += [f"ncakit_hidden@{c}", f"ncakit_hidden_frozen@{c}"]
    # Rounds: the whole list of variants again, each (variant, V) in a fresh process (_common.worker_rounds)
    args = ["--tokens", str(a.tokens), "--hidden", str(a.hidden), "--repeats", str(a.repeats)]
    args += ["--threads", str(a.threads)]
    rows = worker_rounds(__file__, variants, a.vocab, a.rounds, args, width=26)
    # Ratios against the naive head with the same trainability, and a value check across variants.
    for row in rows:
        if "error" in row:
            continue
        ref_name = "naive_frozen" if _split(row["variant"])[0].endswith("_frozen") else "naive"
        ref = next(
            (
                r
                for r in rows
                if r.get("variant") == ref_name and r["vocab"] == row["vocab"] and "error" not in r
            ),
            None,
        )
        if ref:
            row["time_vs_naive"] = row["time_s"]["median"] / ref["time_s"]["median"]
            row["memory_vs_naive"] = row["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
            row["checksum_rel_diff"] = abs(row["checksum"] - ref["checksum"]) / abs(ref["checksum"])
    goals = {}
    for row in rows:
        if "time_vs_naive" in row and _split(row["variant"])[0].startswith("ncakit_hidden"):
            goals[f"{row['variant']} V={row['vocab']}"] = {
                "memory_met": row["memory_vs_naive"] <= 0.2,
                "time_met": row["time_vs_naive"] <= 1.2,
            }
    loads = [x for r in rows for x in r.get("load_avg_before_after", [])]
    write_result(
        a.name,
        {
            "goal": "peak <= 0.2x naive and time <= 1.2x naive",
            "config": {
                "tokens": a.tokens,
                "hidden": a.hidden,
                "dtype": "float32",
                "repeats": a.repeats,
                "rounds": a.rounds,
                "threads": a.threads,
                "vocab": a.vocab,
            },
            "goals": goals,
            "load_avg": {"min": min(loads), "max": max(loads)} if loads else None,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
