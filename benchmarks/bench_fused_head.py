"""Fused LM head + loss benchmark: naive head + loss vs ncakit's chunked head + loss vs the fused
head (ncakit.fused.fused_head_loss), forward + backward of ``loss.mean()``, trainable head.

Setup: B prompts x K = 2 responses, each sequence 1 prompt token + ``--response-len`` response
tokens (so ``--tokens`` scored tokens in all), vocab 32000 and 128256, fp32 on CPU, loss ``nca`` (any per-prompt loss costs the same: the [B, K] loss is negligible next to the
head). Every (variant, vocab) runs in a FRESH process, so its peak RSS is its own: we report
``peak_extra_mib`` = high-water RSS minus the RSS once the inputs and the gradient buffers exist
(the memory the head + loss itself needs), as ``bench_logprob_head.py`` does, and the time of
forward + backward.

Size: the defaults (2048 tokens, hidden 256) finish in about 2 minutes on 2 CPU cores. The issue's
targets (<= 1.0x naive time at <= 0.12x naive memory, V = 32000 and 128256) were set at its
prototype's size, ``--tokens 8192 --hidden 1024`` (``run_all.py --only fused_issue``, ~7 minutes
here, ~12 GiB for the naive head at V = 128256), and the result records them for the ``fused``
variant. The memory ratio depends on the size: the default chunk is a fixed 128 MiB logits block
(``ncakit.fused.fused_chunk_tokens``) while the naive head's [tokens, V] blocks grow with the tokens,
so at 2048 tokens the same chunk is 4x the share of naive memory it is at 8192. Time ratios at
H = 256 give elementwise passes more weight against the matmuls than H = 1024 does.

Variants:
  naive         logits = h @ W.T [N, T, V]; sequence_logps(naive=True) (full log_softmax); the loss
  ncakit_head   ncakit.logprobs.sequence_logps_from_hidden (what LogprobHead runs today); the loss
  fused         ncakit.fused.fused_head_loss, its default chunk_tokens (ncakit.fused.fused_chunk_tokens)
  fused_small   the same with chunk_tokens = ncakit.logprobs.auto_chunk_size(V): the block of ncakit_head
  fused@N       chunk_tokens = N

Matmul count: naive 3 [tokens x V x H] matmuls (logits; dh, dW), ncakit_head 4 (its backward
recomputes the logits), fused 3 (the gradients are formed while the chunk's logits exist) -- 4 for a
prompt whose response tokens exceed chunk_tokens (split, recomputed).

The warm-up step uses the real head (a tiny batch), so no second [V, H] buffer enters the high-water
mark; the 1-minute load average is recorded around every variant.

Usage: python benchmarks/bench_fused_head.py [--vocab 32000 128256] [--tokens 2048] [--hidden 256] [--response-len 64]
           [--repeats 1] [--rounds 1] [--threads 1] [--variants ...] [--name fused_head]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, rss_mib, summarize, target_state, worker_rounds, write_result  # noqa: E402

VARIANTS = ["naive", "ncakit_head", "fused", "fused_small"]
K = 2
#: the issue's targets for the fused head (default chunk): at most this time and memory of the naive head
TARGET = (1.0, 0.12)


def _split(variant: str) -> tuple[str, int | None]:
    """``"fused@256"`` -> ``("fused", 256)``; no suffix -> the variant's own chunk (None)."""
    base, _, chunk = variant.partition("@")
    if base not in VARIANTS or (chunk and base != "fused"):
        raise ValueError(f"variant: unknown {variant!r}; expected one of {VARIANTS} (fused may take @CHUNK)")
    return base, (int(chunk) if chunk else None)


def chunk_for(variant: str, vocab: int) -> int | None:
    from ncakit.fused import fused_chunk_tokens
    from ncakit.logprobs import auto_chunk_size

    base, chunk = _split(variant)
    if base == "fused":
        return chunk or fused_chunk_tokens(vocab)
    if base in ("fused_small", "ncakit_head"):
        return auto_chunk_size(vocab)
    return None


def make_batch(prompts: int, response_len: int, hidden_size: int, vocab: int, seed: int = 0):
    """hidden [N, T, H], labels [N, T] (position 0 the prompt), ref_logps and rewards [B, K], N = B K."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, t = prompts * K, response_len + 1
    hidden = torch.randn(n, t, hidden_size, generator=g)
    labels = torch.randint(0, vocab, (n, t), generator=g)
    labels[:, 0] = -100
    ref = -torch.rand(prompts, K, generator=g) * 5 - response_len * 10.0
    rewards = torch.rand(prompts, K, generator=g)
    return hidden, labels, ref, rewards


def _step(variant: str, hidden, weight, labels, ref, rewards, loss="nca", beta=0.1):
    """Forward + backward of ``loss.mean()``; returns the [B] loss (detached)."""
    from ncakit import get_loss
    from ncakit import logprobs as LP
    from ncakit.fused import fused_head_loss

    base, _ = _split(variant)
    B = ref.shape[0]
    if base == "naive":
        pol = LP.sequence_logps(hidden @ weight.t(), labels, naive=True).view(B, -1)
        out = get_loss(loss)(pol, ref, rewards, beta=beta)
    elif base == "ncakit_head":
        pol = LP.sequence_logps_from_hidden(hidden, weight, labels).view(B, -1)
        out = get_loss(loss)(pol, ref, rewards, beta=beta)
    else:
        out = fused_head_loss(
            hidden,
            weight,
            labels,
            ref,
            rewards,
            loss,
            beta=beta,
            chunk_tokens=chunk_for(variant, weight.shape[0]),
        )
    out.loss.mean().backward()
    return out.loss.detach()


def worker(
    variant: str, vocab: int, tokens: int, response_len: int, hidden_size: int, repeats: int, threads: int
) -> dict:
    import torch

    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    prompts = max(1, tokens // (K * response_len))
    hidden, labels, ref, rewards = make_batch(prompts, response_len, hidden_size, vocab)
    hidden.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).requires_grad_(True)
    # Warm-up on one prompt with the real head (lazy initialisation is not the head's memory).
    sh, sl, sr, sw = make_batch(1, min(response_len, 8), hidden_size, vocab, seed=2)
    _step(variant, sh.requires_grad_(True), weight, sl, sr, sw)
    del sh
    hidden.grad = torch.zeros_like(hidden)
    weight.grad = torch.zeros_like(weight)
    base = rss_mib()
    times, first = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _step(variant, hidden, weight, labels, ref, rewards)
        times.append(time.perf_counter() - t0)
        first = out if first is None else first
    return {
        "variant": variant,
        "vocab": vocab,
        "tokens": int((labels[:, 1:] != -100).sum()),
        "prompts": prompts,
        "K": K,
        "hidden": hidden_size,
        "chunk_tokens": chunk_for(variant, vocab),
        "time_s": summarize(times),
        "baseline_rss_mib": base,
        "peak_extra_mib": peak_rss_mib() - base,
        "checksum": float(first.double().sum()),
        "grad_checksum": [float(hidden.grad.double().abs().sum()), float(weight.grad.double().abs().sum())],
        "threads": threads,
        "load_avg_before_after": [load0, os.getloadavg()[0]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--tokens", type=int, default=2048, help="scored (response) tokens in all")
    p.add_argument("--response-len", type=int, default=64, help="response tokens per sequence")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1, help="timed steps per process")
    p.add_argument(
        "--rounds", type=int, default=1, help="the whole variant list this many times, interleaved"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=VARIANTS, help=f"some of {VARIANTS} (fused@N too)")
    p.add_argument("--name", default="fused_head", help="result file benchmarks/results/<name>.json")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "VOCAB"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        res = worker(a.worker[0], int(a.worker[1]), a.tokens, a.response_len, a.hidden, a.repeats, a.threads)
        print(json.dumps(res))
        return 0
    for v in a.variants:
        _split(v)  # fail before any process starts
    t_start = time.perf_counter()
    args = ["--tokens", str(a.tokens), "--response-len", str(a.response_len), "--hidden", str(a.hidden)]
    args += ["--repeats", str(a.repeats), "--threads", str(a.threads)]
    rows = worker_rounds(__file__, a.variants, a.vocab, a.rounds, args)

    def find(name, vocab):
        return next(
            (r for r in rows if r.get("variant") == name and r["vocab"] == vocab and "error" not in r), None
        )

    for row in rows:
        if "error" in row:
            continue
        for ref_name, tag in (("naive", "naive"), ("ncakit_head", "ncakit_head")):
            ref = find(ref_name, row["vocab"])
            if ref:
                row[f"time_vs_{tag}"] = row["time_s"]["median"] / ref["time_s"]["median"]
                row[f"memory_vs_{tag}"] = row["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
                row[f"loss_rel_diff_vs_{tag}"] = abs(row["checksum"] - ref["checksum"]) / max(
                    abs(ref["checksum"]), 1e-30
                )
    print(
        f"\n{'V':>7} {'variant':<14} {'time s':>8} {'peak MiB':>9} {'t/naive':>8} {'m/naive':>8} {'t/head':>7} {'m/head':>7}"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['vocab']:>7} {row['variant']:<14} error: {row['error']}")
            continue
        print(
            f"{row['vocab']:>7} {row['variant']:<14} {row['time_s']['median']:8.2f} {row['peak_extra_mib']:9.0f} "
            f"{row.get('time_vs_naive', float('nan')):7.2f}x {row.get('memory_vs_naive', float('nan')):7.3f}x "
            f"{row.get('time_vs_ncakit_head', float('nan')):6.2f}x {row.get('memory_vs_ncakit_head', float('nan')):6.3f}x"
        )
    targets = []
    for vocab in a.vocab:
        row = find("fused", vocab) or {}
        time_ratio, memory_ratio = row.get("time_vs_naive"), row.get("memory_vs_naive")
        met = (
            None
            if None in (time_ratio, memory_ratio)
            else time_ratio <= TARGET[0] and memory_ratio <= TARGET[1]
        )
        targets.append(
            {"vocab": vocab, "time_vs_naive_max": TARGET[0], "memory_vs_naive_max": TARGET[1],
             "time_vs_naive": time_ratio, "memory_vs_naive": memory_ratio, "met": met}
        )  # fmt: skip
        print(
            f"target V={vocab}: fused <= {TARGET[0]}x naive time at <= {TARGET[1]}x naive memory: {target_state(met)}"
        )
    loads = [x for r in rows for x in r.get("load_avg_before_after", [])]
    write_result(
        a.name,
        {
            "config": {
                "tokens": a.tokens,
                "response_len": a.response_len,
                "K": K,
                "hidden": a.hidden,
                "dtype": "float32",
                "loss": "nca",
                "repeats": a.repeats,
                "rounds": a.rounds,
                "threads": a.threads,
                "vocab": a.vocab,
            },
            "wall_s": time.perf_counter() - t_start,
            "load_avg": {"min": min(loads), "max": max(loads)} if loads else None,
            "rows": rows,
            "targets": targets,
            "targets_note": "the issue's targets were set at 8192 tokens, hidden 1024; these are at the size in config",
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
