"""End-to-end benchmark: ncakit's scale loop (``ncakit.scale.train``) vs TRL 1.16's ``DPOTrainer`` on the same
model, data and optimisation, fp32 on CPU.

What is the same on both sides
  model      a Llama from ``LlamaConfig`` (hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 1024, untied
             head; ~8 M parameters) over a byte-level BPE tokenizer with an 8192-token vocabulary, trained
             here on the synthetic corpus (``ncakit.scale.tinylm``); built once, saved, and loaded by both sides
             with ``from_pretrained``, so both start from the same weights;
  data       synthetic pairwise rows from ``ncakit.scale.tinylm.synthetic_k_dataset(k=2)`` (string tasks with
             spaces, prompts and responses of ~35-70 tokens): ncakit reads them in the canonical K = 2
             form (chosen first), TRL as ``prompt`` / ``chosen`` / ``rejected`` message lists. Both render
             them with the same chat template; the benchmark CHECKS that both tokenise every row to the
             same ids (``data_parity``), and that nothing is truncated;
  training   batch size, gradient accumulation, learning rate (constant schedule, no warm-up), AdamW
             (``torch.optim.AdamW``, the for-loop implementation, on both: TRL is set to
             ``optim="adamw_torch"``; its default would be the fused kernel), no weight decay,
             gradient clipping 1.0, beta, max lengths, no gradient checkpointing (TRL's default is on),
             fp32 (TRL's default would be bf16), the same number of torch threads, logging every
             ``--logging-steps`` steps;
  reference  precomputed on both sides: one forward pass over the training set before the loop
             (ncakit ``reference: precompute``, TRL ``precompute_ref_log_probs=True``), excluded from
             the steps/s and reported as part of the set-up time. ``--reference model`` instead keeps a
             frozen copy of the model and runs the reference forward every step on both sides (ncakit
             ``reference: model``, TRL without precompute, which loads a second copy from the path).

What differs (each side's own design, measured as it is)
  ncakit     ``LogprobHead``: the LM head returns per-token log-probs of the response positions only,
             chunked; with a trainable head the backward pass recomputes each chunk's logits once.
             Metrics: TRL's names (rewards/*, logps/*), from the [B, K] tensors.
  TRL        its fused LM head (``trl.trainer.utils.add_fused_lm_head``): tiles of response positions
             too, and it also computes per-token entropy, mean logits and top-1 hits for its
             ``entropy``, ``logits/*`` and ``mean_token_accuracy`` metrics; the HF ``Trainer`` loop.

Measured, one FRESH process per run (so peak RSS is that run's own), runs interleaved
(ncakit, TRL, TRL, ncakit, ... for every loss) because this shared machine drifts by +-15%:
  steps/s    optimizer steps 2..N over the wall time between the end of step 1 and the end of step N
             (step 1 pays lazy initialisation); min / median / max over the repeats;
  tokens/s   steps/s x the mean number of real (non-padding) tokens per optimizer step, counted from
             the tokenised data (every row is seen once per epoch on both sides);
  peak RSS   ``ru_maxrss`` of the worker process at the end (imports, model, data, precompute, training);
  set-up     seconds from process start to the end of step 1 (imports, loading, tokenising, precompute);
  load       the 1-minute load average before and after each run (other engineers share the machine).

Parity (end to end): a separate pair of short runs per loss on exactly one optimizer step's worth of
prompts (B x GA), for two epochs = two optimizer steps, logging every step. Within a step the order of
the prompts does not matter (the step's loss and gradient are means over the same set), so the two
trainers' step-1 and step-2 numbers must agree although their samplers differ:
  step 1   loss (= ln 2 for sigmoid, 2 ln 2 for nca_pair: policy = reference), logps/chosen,
           logps/rejected, grad_norm (the gradient of step 1), rewards/* (= 0);
  step 2   loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/* (these
           depend on the whole first update: gradient, clipping, AdamW).
Tolerance: |a - b| <= 1e-4 + 1e-4 |b| (fp32, different reduction orders and chunking).

Usage:
  python benchmarks/bench_e2e_trl.py [--repeats 3] [--steps 10] [--losses sigmoid nca_pair]
      [--batch-size 2] [--grad-accum 2] [--threads 1] [--reference precompute|model] [--profile]
      [--no-parity] [--name e2e_trl]
Writes benchmarks/results/<name>.json (default e2e_trl.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, rss_mib, summarize, write_result  # noqa: E402

_T_START = time.perf_counter()

TRAINERS = ("ncakit", "trl")
PARITY_KEYS_STEP1 = (
    "loss",
    "grad_norm",
    "logps/chosen",
    "logps/rejected",
    "rewards/chosen",
    "rewards/margins",
)
PARITY_KEYS_STEP2 = (
    "loss",
    "grad_norm",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
RTOL = ATOL = 1e-4
# The settings a worker process gets from its parent (also recorded in the result's config).
WORKER_FLAGS = (
    "workdir",
    "batch_size",
    "grad_accum",
    "steps",
    "lr",
    "beta",
    "max_length",
    "max_prompt_length",
    "threads",
    "reference",
    "logging_steps",
)
ALPHABET = "abcdefgh "  # spaces make words, so the BPE vocabulary fills up and prompts are tens of tokens


# ----------------------------------------------------------------------------------------------
# The shared workspace: tokenizer + model + data, built once in the parent
# ----------------------------------------------------------------------------------------------


def build_workspace(root: Path, a) -> dict:
    """Tokenizer, model and the two data files (benchmark + parity) in both formats, under ``root``."""
    from ncakit.scale.data import save_k_dataset, tokenize_k_dataset
    from ncakit.scale.tinylm import (
        corpus_texts,
        synthetic_corpus,
        synthetic_k_dataset,
        tiny_llama,
        train_tokenizer,
    )

    t0 = time.perf_counter()
    lengths = dict(min_len=a.min_chars, max_len=a.max_chars, alphabet=ALPHABET)
    corpus = synthetic_corpus(a.tokenizer_corpus, seed=a.seed + 7, **lengths)
    tokenizer = train_tokenizer(corpus_texts(corpus), vocab_size=a.vocab, model_max_length=a.max_length)
    model = tiny_llama(tokenizer, hidden=a.hidden, layers=a.layers, seed=a.seed)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    n_bench = a.batch_size * a.grad_accum * a.steps
    n_parity = a.batch_size * a.grad_accum
    info = {
        "model_dir": str(model_dir),
        "vocab": len(tokenizer),
        "params": int(sum(p.numel() for p in model.parameters())),
    }
    for name, n, seed in (("bench", n_bench, a.seed), ("parity", n_parity, a.seed + 1)):
        rows = synthetic_k_dataset(n, k=2, seed=seed, chat=True, **lengths)
        save_k_dataset(rows, root / f"{name}.jsonl")
        with open(root / f"{name}_trl.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                trl_row = {"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]}
                f.write(json.dumps(trl_row) + "\n")
        tok = tokenize_k_dataset(
            rows, tokenizer, max_length=a.max_length, max_prompt_length=a.max_prompt_length, warn=False
        )
        stats = tok.stats
        if stats.rows_kept != n or stats.prompts_truncated or stats.responses_truncated:
            raise RuntimeError(
                f"{name} data: expected {n} rows kept and nothing truncated, got {stats.summary()}; "
                "raise --max-length or shorten --max-chars"
            )
        ids = [
            [list(r["prompt_ids"]) + list(resp) for resp in r["response_ids"]]
            for r in tok.dataset.select_columns(["prompt_ids", "response_ids"])
        ]
        (root / f"{name}_ids.json").write_text(json.dumps(ids))
        seq_tokens = [len(s) for pair in ids for s in pair]
        info[name] = {
            "prompts": n,
            "tokens": int(sum(seq_tokens)),  # real tokens of the B*K sequences, once per epoch
            "mean_prompt_tokens": statistics.mean(len(r) for r in tok.dataset["prompt_ids"]),
            "mean_response_tokens": statistics.mean(len(x) for r in tok.dataset["response_ids"] for x in r),
            "max_sequence_tokens": max(seq_tokens),
        }
    info["build_s"] = time.perf_counter() - t0
    return info


# ----------------------------------------------------------------------------------------------
# Workers (one fresh process per run)
# ----------------------------------------------------------------------------------------------


class _StepClock:
    """End time of every optimizer step (perf_counter), the RSS at the end of step 1, and (when given)
    a torch profiler that records steps 2..``last`` only, the same window as steps/s."""

    def __init__(self, profiler=None, last: int | None = None):
        self.ends: list[float] = []
        self.rss_after_step1 = None
        self.profiler = profiler
        self.last = last

    def tick(self):
        self.ends.append(time.perf_counter())
        n = len(self.ends)
        if n == 1:
            self.rss_after_step1 = rss_mib()
            if self.profiler is not None:
                self.profiler.start()
        elif self.profiler is not None and n == self.last:
            self.profiler.stop()


def _ncakit_run(a, root: Path, data: str, out_dir: Path, clock: _StepClock, epochs: int, logging_steps: int):
    from ncakit.scale.config import TrainConfig
    from ncakit.scale.train import train

    cfg = TrainConfig(
        model_name_or_path=str(root / "model"),
        dataset_name=str(root / f"{data}.jsonl"),
        dataset_schema="canonical",
        eval_split=None,
        max_length=a.max_length,
        max_prompt_length=a.max_prompt_length,
        loss=a.loss,
        beta=a.beta,
        reference=a.reference,
        ref_cache_dir=str(out_dir / "ref_cache"),
        ref_batch_size=a.batch_size,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=epochs,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        seed=42,
        cpu_threads=a.threads,
        logging_steps=logging_steps,
        output_dir=str(out_dir),
        save_steps=0,
        save_final=False,
        progress=False,
    ).validate()
    res = train(cfg, callbacks=[lambda state: clock.tick()])
    history = [{k: v for k, v in h.items() if not k.startswith("eval_")} for h in res.history if "loss" in h]
    return history, {"ids_checked": None}


def _trl_run(a, root: Path, data: str, out_dir: Path, clock: _StepClock, epochs: int, logging_steps: int):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    torch.set_num_threads(a.threads)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    ds = datasets.load_dataset("json", data_files=str(root / f"{data}_trl.jsonl"), split="train")
    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        num_train_epochs=epochs,
        loss_type=[a.loss],
        beta=a.beta,
        max_length=a.max_length,
        precompute_ref_log_probs=a.reference == "precompute",
        precompute_ref_batch_size=a.batch_size,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=logging_steps,
        disable_tqdm=True,
        seed=42,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[Clock()]
    )
    # Data parity: TRL's own tokenisation must give the same prompt + response ids as ncakit's.
    ours = json.loads((root / f"{data}_ids.json").read_text())
    tds = trainer.train_dataset
    mismatches = 0
    for i, row in enumerate(tds.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])):
        theirs = [row["prompt_ids"] + row["chosen_ids"], row["prompt_ids"] + row["rejected_ids"]]
        mismatches += theirs != ours[i]
    trainer.train()
    keep = ("loss", "grad_norm", "learning_rate", "epoch", "num_tokens")
    history = []
    for h in trainer.state.log_history:
        if "loss" in h and "train_runtime" not in h:
            history.append({"step": h["step"], **{k: v for k, v in h.items() if k in keep or "/" in k}})
    return history, {"ids_checked": len(tds), "ids_mismatched": mismatches}


def worker(a) -> dict:
    import torch

    root = Path(a.workdir)
    load0 = os.getloadavg()[0]
    parity = a.data == "parity"
    epochs = 2 if parity else 1
    logging_steps = 1 if parity else a.logging_steps
    prof = None
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
    clock = _StepClock(prof, last=a.steps * epochs)
    # Import the trainer's modules first, so the RSS they cost is recorded apart from the run's.
    if a.trainer == "ncakit":
        import ncakit.scale.train  # noqa: F401
    else:
        import trl  # noqa: F401
        from trl import DPOTrainer  # noqa: F401
    rss_imports = rss_mib()
    with tempfile.TemporaryDirectory(prefix=f"e2e-{a.trainer}-", dir=root) as tmp:
        run = _ncakit_run if a.trainer == "ncakit" else _trl_run
        history, extra = run(a, root, a.data, Path(tmp), clock, epochs, logging_steps)
    t_end = time.perf_counter()
    ends = clock.ends
    n = len(ends)
    res = {
        "trainer": a.trainer,
        "loss_type": a.loss,
        "data": a.data,
        "reference": a.reference,
        "threads": torch.get_num_threads(),
        "steps": n,
        "steps_per_s": (n - 1) / (ends[-1] - ends[0]) if n > 1 else None,
        "setup_s": ends[0] - _T_START if ends else None,
        "wall_s": t_end - _T_START,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_imports_mib": rss_imports,
        "rss_after_step1_mib": clock.rss_after_step1,
        "load_avg_before_after": [load0, os.getloadavg()[0]],
        "history": history,
        **extra,
    }
    if prof is not None:
        res["profile"] = _top_ops(prof, n - 1)
    return res


def _top_ops(prof, steps: int, top: int = 15) -> dict:
    """Operators by self CPU time over the profiled steps (2..N), per optimizer step."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    # Inclusive time of the log-prob heads (forward and backward autograd nodes): ncakit's _LinearLogps,
    # TRL's ChunkedLogProbFunction. Their matmuls are children, so this is the head's whole cost.
    heads = {
        e.key: round(e.cpu_time_total / 1e3 / steps, 2)
        for e in prof.key_averages()
        if "LinearLogps" in e.key or "ChunkedLogProb" in e.key
    }
    return {
        "steps": steps,
        "self_cpu_ms_per_step": total / 1e3 / steps,
        "head_ms_per_step": heads,
        "top_ops": [
            {
                "op": e.key,
                "calls_per_step": round(e.count / steps, 1),
                "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2),
                "share": round(e.self_cpu_time_total / total, 4),
            }
            for e in events[:top]
        ],
    }


# ----------------------------------------------------------------------------------------------
# The parent: workspace, interleaved runs, parity, summary
# ----------------------------------------------------------------------------------------------


def _spawn(a, trainer: str, loss: str, data: str, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", trainer, "--loss-one", loss, "--data", data]
    for flag in WORKER_FLAGS:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    if profile:
        cmd.append("--profile")
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": str(a.threads),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        return {"trainer": trainer, "loss_type": loss, "data": data, "error": tail[-3:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _close(x, y) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= ATOL + RTOL * abs(y)


def _parity(ours: dict, theirs: dict, loss: str) -> dict:
    """Compare the step-1 and step-2 records of the two parity runs of one loss."""
    out = {"loss_type": loss, "tolerance": f"|a - b| <= {ATOL} + {RTOL} |b|", "steps": {}, "ok": True}
    if "error" in ours or "error" in theirs:
        out.update(ok=False, error=ours.get("error") or theirs.get("error"))
        return out
    by_step = {name: {h["step"]: h for h in r["history"]} for name, r in (("ncakit", ours), ("trl", theirs))}
    for step, keys in ((1, PARITY_KEYS_STEP1), (2, PARITY_KEYS_STEP2)):
        a, b = by_step["ncakit"].get(step), by_step["trl"].get(step)
        if a is None or b is None:
            out["ok"] = False
            out["steps"][step] = "missing"
            continue
        rows = {}
        for k in keys:
            va, vb = a.get(k), b.get(k)
            ok = _close(va, vb)
            rows[k] = {
                "ncakit": va,
                "trl": vb,
                "abs_diff": None if None in (va, vb) else abs(va - vb),
                "ok": ok,
            }
            out["ok"] &= ok
        out["steps"][step] = rows
    expected = math.log(2) if loss == "sigmoid" else 2 * math.log(2)
    out["step1_loss_closed_form"] = expected
    out["data_ids_mismatched"] = theirs.get("ids_mismatched")
    out["ok"] &= theirs.get("ids_mismatched") == 0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per trainer and loss")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed run (one epoch)")
    p.add_argument("--losses", nargs="+", default=["sigmoid", "nca_pair"], choices=["sigmoid", "nca_pair"])
    p.add_argument("--batch-size", type=int, default=2, help="prompts per micro-batch (2 sequences each)")
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same for both trainers (1: ncakit's CPU default; on this shared 2-core "
        "machine 2 threads thrash when another process runs)",
    )
    p.add_argument("--reference", choices=["precompute", "model"], default="precompute")
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--min-chars", type=int, default=60)
    p.add_argument("--max-chars", type=int, default=180)
    p.add_argument(
        "--tokenizer-corpus", type=int, default=20000, help="corpus rows the tokenizer is trained on"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile", action="store_true", help="also one torch.profiler run per trainer (first loss)"
    )
    p.add_argument("--no-parity", action="store_true")
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    p.add_argument("--loss-one", dest="loss", help=argparse.SUPPRESS)
    p.add_argument("--data", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--name", default="e2e_trl", help="result file benchmarks/results/<name>.json")
    a = p.parse_args(argv)
    if a.worker:
        a.trainer = a.worker
        print(json.dumps(worker(a)))
        return 0

    if a.steps < 2:
        raise ValueError(f"steps: expected >= 2 (steps/s is timed from the end of step 1), got {a.steps}")
    if a.repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {a.repeats}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ncakit-bench-e2e-") as tmp:
        a.workdir = tmp
        ws = build_workspace(Path(tmp), a)
        print(
            f"workspace: vocab {ws['vocab']}, {ws['params'] / 1e6:.2f} M params, "
            f"{ws['bench']['prompts']} prompts, {ws['bench']['tokens']} tokens/epoch ({ws['build_s']:.1f} s)",
            file=sys.stderr,
        )
        parity = {}
        if not a.no_parity:
            for loss in a.losses:
                ours, theirs = (_spawn(a, t, loss, "parity") for t in TRAINERS)
                parity[loss] = _parity(ours, theirs, loss)
                print(f"parity {loss}: {'OK' if parity[loss]['ok'] else 'MISMATCH'}", file=sys.stderr)
        runs = []
        for rep in range(a.repeats):
            for i, loss in enumerate(a.losses):
                order = TRAINERS if (rep + i) % 2 == 0 else TRAINERS[::-1]
                for trainer in order:
                    r = _spawn(a, trainer, loss, "bench")
                    r["repeat"] = rep
                    runs.append(r)
                    if "error" not in r:
                        print(
                            f"rep {rep} {loss:<8} {trainer:<6} {r['steps_per_s']:.3f} steps/s  "
                            f"peak {r['peak_rss_mib']:.0f} MiB  set-up {r['setup_s']:.1f} s  "
                            f"load {r['load_avg_before_after'][0]:.1f}",
                            file=sys.stderr,
                            flush=True,
                        )
        profiles = {}
        if a.profile:
            for trainer in TRAINERS:
                r = _spawn(a, trainer, a.losses[0], "bench", profile=True)
                profiles[trainer] = r.get("profile", r.get("error"))

    tokens_per_step = ws["bench"]["tokens"] / a.steps
    summary = {}
    for loss in a.losses:
        row = {}
        for trainer in TRAINERS:
            ok = [r for r in runs if r["trainer"] == trainer and r["loss_type"] == loss and "error" not in r]
            if not ok:
                row[trainer] = {"error": "every run failed"}
                continue
            sps = [r["steps_per_s"] for r in ok]
            row[trainer] = {
                "steps_per_s": summarize(sps),
                "tokens_per_s": summarize([s * tokens_per_step for s in sps]),
                "peak_rss_mib": summarize([r["peak_rss_mib"] for r in ok]),
                "setup_s": summarize([r["setup_s"] for r in ok]),
            }
        if all("error" not in row[t] for t in TRAINERS):
            n, t = row["ncakit"], row["trl"]
            row["speedup_median"] = n["steps_per_s"]["median"] / t["steps_per_s"]["median"]
            row["memory_ratio_median"] = n["peak_rss_mib"]["median"] / t["peak_rss_mib"]["median"]
            row["goal_met"] = row["speedup_median"] >= 1.5 and row["memory_ratio_median"] <= 1.0
        summary[loss] = row
    config = {
        k: getattr(a, k)
        for k in ("repeats", *(f for f in WORKER_FLAGS if f != "workdir"), "vocab", "hidden", "layers")
        + ("min_chars", "max_chars")
    }
    loads = [x for r in runs if "load_avg_before_after" in r for x in r["load_avg_before_after"]]
    write_result(
        a.name,
        {
            "goal": ">= 1.5x TRL's throughput (steps/s, median) at <= its peak RSS",
            "config": config,
            "workspace": {k: v for k, v in ws.items() if k != "model_dir"},
            "tokens_per_step": tokens_per_step,
            "summary": summary,
            "parity": parity,
            "runs": runs,
            "profiles": profiles,
            "load_avg": {"min": min(loads), "max": max(loads)} if loads else None,
            "wall_s": time.perf_counter() - t0,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
