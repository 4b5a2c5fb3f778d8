"""K scaling: the cost per prompt of K = 2, 4, 8 responses through ncakit's forward + backward.

Setup: the e2e benchmark's model shape (a Llama from ``LlamaConfig``: hidden 256, 4 layers, 4 heads /
2 KV heads, MLP 1024, vocabulary 8192, untied head; random weights, fp32, CPU), with ncakit's
``LogprobHead`` installed as ``ncakit.scale.train`` does. Each batch holds ``--prompts`` prompts of exactly
``--prompt-len`` tokens, each with K responses of exactly ``--response-len`` tokens (random ids, so the
lengths are fixed and equal for every K), collated by ``ncakit.scale.data.KResponseCollator`` into B*K
sequences. One timed unit is what one micro-batch of training costs before the optimizer step::

    policy = batch_logps(model, batch)                                      # [B, K], one forward over B*K rows
    out = nca(policy, ref_logps, rewards, beta=0.1)                         # the K-way loss
    out.loss.mean().backward()

(reference log-probs precomputed, so no reference forward is timed).

Measured per K, one FRESH process per K (so its peak RSS is its own): seconds per forward + backward
(min / median / max over ``--repeats`` after one warm-up), seconds and tokens per prompt, and the cost
per prompt relative to K = 2. Every sequence repeats its prompt: there is NO prompt sharing in ncakit
(the K rows of a prompt each run the prompt's tokens through the model; ``KResponseCollator`` returns
``prompt_lengths`` from which sharing could be built, but nothing uses it yet). The result file also
states the token count a shared-prompt implementation would process, P + K R per prompt instead of
K (P + R) -- an upper bound on what sharing could save, not a measurement.

Usage: python benchmarks/bench_k_scaling.py [--ks 2 4 8] [--prompts 2] [--prompt-len 64]
           [--response-len 64] [--repeats 3] [--threads 1]
Writes benchmarks/results/k_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, random_llama, rss_mib, summarize, write_result  # noqa: E402

# The settings a worker process gets from its parent (also recorded in the result's config).
WORKER_FLAGS = ("prompts", "prompt_len", "response_len", "repeats", "threads", "vocab", "hidden", "layers")


def build_model(vocab: int, hidden: int, layers: int, seed: int = 0):
    """The e2e benchmark's Llama shape (``_common.random_llama``), no K/V cache."""
    model = random_llama(vocab, hidden, layers, seed)
    model.config.use_cache = False
    return model


def make_batch(k: int, prompts: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0):
    """``prompts`` rows with K responses each, fixed lengths, collated to B*K sequences + [B, K] tensors."""
    import torch

    from ncakit.scale.data import KResponseCollator

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(prompts):
        rows.append(
            {
                "prompt_ids": torch.randint(3, vocab, (prompt_len,), generator=g).tolist(),
                "response_ids": [
                    torch.randint(3, vocab, (response_len,), generator=g).tolist() for _ in range(k)
                ],
                "rewards": torch.rand(k, generator=g).tolist(),
                "ref_logps": (-torch.rand(k, generator=g) * response_len * 9).tolist(),
            }
        )
    return KResponseCollator(pad_token_id=0, k=k)(rows)


def worker(a, k: int) -> dict:
    import torch

    from ncakit.losses import nca
    from ncakit.scale.forward import batch_logps, install_logprob_head

    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()[0]
    model = build_model(a.vocab, a.hidden, a.layers)
    if install_logprob_head(model) is None:
        raise RuntimeError("model: expected a LogprobHead to install on a Llama")
    model.train()
    batch = make_batch(k, a.prompts, a.prompt_len, a.response_len, a.vocab)
    n_tokens = int(batch["attention_mask"].sum())

    def step():
        model.zero_grad(set_to_none=True)
        policy = batch_logps(model, batch)  # [B, K]
        out = nca(policy, batch["ref_logps"], batch["rewards"], beta=0.1, mask=batch["mask"])
        out.loss.mean().backward()
        return policy.detach()

    step()  # warm-up: lazy initialisation and first-touch allocations are not the steady cost
    base = rss_mib()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "k": k,
        "prompts": a.prompts,
        "sequences": a.prompts * k,
        "tokens": n_tokens,
        "tokens_per_prompt": n_tokens / a.prompts,
        "time_s": summarize(times),
        "s_per_prompt_median": statistics.median(times) / a.prompts,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_warmup_mib": base,
        "threads": a.threads,
        "load_avg_before_after": [load0, os.getloadavg()[0]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--prompts", type=int, default=2, help="prompts per batch (B)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        print(json.dumps(worker(a, a.worker)))
        return 0
    for k in a.ks:
        if k < 2:
            raise ValueError(f"ks: expected K >= 2 responses per prompt, got {k}")

    rows = []
    for k in a.ks:
        cmd = [sys.executable, __file__, "--worker", str(k)]
        for flag in WORKER_FLAGS:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append({"k": k, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"K={k}: {row['time_s']['median']:.3f} s per fwd+bwd ({row['sequences']} sequences, "
            f"{row['tokens']} tokens), {row['s_per_prompt_median']:.3f} s per prompt, "
            f"peak {row['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    base = next((r for r in rows if r.get("k") == min(a.ks) and "error" not in r), None)
    P, R = a.prompt_len, a.response_len
    for row in rows:
        if "error" in row:
            continue
        k = row["k"]
        if base is not None:
            row["cost_per_prompt_vs_kmin"] = row["s_per_prompt_median"] / base["s_per_prompt_median"]
            row["cost_per_response_vs_kmin"] = row["cost_per_prompt_vs_kmin"] * base["k"] / k
        row["shared_prompt_tokens_per_prompt"] = P + k * R
        row["shared_prompt_token_saving"] = 1 - (P + k * R) / (k * (P + R))
    loads = [x for r in rows for x in r.get("load_avg_before_after", [])]
    write_result(
        "k_scaling",
        {
            "what": "ncakit forward+backward (forward.batch_logps with LogprobHead + losses.nca) per micro-batch",
            "prompt_sharing": "not implemented: every one of the K sequences of a prompt recomputes the prompt",
            "config": {k: getattr(a, k) for k in ("ks", *WORKER_FLAGS)},
            "load_avg": {"min": min(loads), "max": max(loads)} if loads else None,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
