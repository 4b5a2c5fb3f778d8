"""Sample K responses per prompt, score them, write a canonical K-response dataset: the on-policy
half of the loop (generate with the current policy -> train on the scored K-tuples -> repeat).

    python scale/generate.py --model out/scale-demo/final --prompts tinylm --k 4 \\
        --reward ncakit.scale.tinylm:reward --out out/onpolicy/train.jsonl
    accelerate launch scale/generate.py --model HuggingFaceH4/mistral-7b-sft-beta \\
        --prompts HuggingFaceH4/ultrafeedback_binarized --split train_prefs --k 4 \\
        --reward OpenAssistant/reward-model-deberta-v3-large-v2 --out data/uf-onpolicy.jsonl

Pieces (each usable on its own):

- :func:`sample_k_responses` -- batched ``model.generate`` with LEFT padding (decoder-only models
  continue from the last real token), ``num_return_sequences=K``, the chat template when the
  tokenizer has one; returns K decoded strings per prompt (special tokens removed).
- :func:`load_reward` -- a reward from a spec: a Python callable ``fn(prompt, response) -> float``,
  a ``"module:function"`` string (``"ncakit.scale.tinylm:reward"``, the offline default), or the path /
  hub id of a reward model (``AutoModelForSequenceClassification`` with one output; scored as
  the chat-rendered prompt + response, right-padded, in batches) -> :class:`RewardFn`.
- :func:`generate_k_dataset` -- both, over a prompt list, then :func:`ncakit.scale.data.save_k_dataset`
  (JSONL / JSON / Parquet; the rows load back with ``ncakit.scale.data.load_k_dataset``) and a
  ``<out>.meta.json`` with the settings and counts (empty responses are kept in the file and
  counted in the meta; ``load_k_dataset`` drops and counts them, ``Reason.EMPTY_RESPONSE``).
  Rows are written as they are scored into a temporary file next to ``<out>``, moved into place
  at the end (``os.replace``): a crash leaves no half-written dataset.
- :func:`check_generate_args` -- every command-line argument checked before a model is loaded
  (output path and format, ``k >= 2``, ``max_prompts >= 1``, batch sizes, temperature, top_p,
  the prompt source, the tiny kit folder); the reward is called on one example before sampling.

Under ``accelerate launch`` with several processes the prompts are split between the processes
(``PartialState.split_between_processes``) and the rows gathered on the main process, which writes
the file. This module imports ``transformers``; ``import ncakit`` does not import it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "RewardFn",
    "load_reward",
    "render_prompt",
    "sample_k_responses",
    "generate_k_dataset",
    "load_prompts",
    "check_generate_args",
    "main",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------


@dataclass
class RewardFn:
    """A batched reward: ``scores = reward(prompts, responses)`` (aligned lists) -> ``list[float]``."""

    name: str
    fn: Callable[[Sequence, Sequence[str]], list[float]]

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(
                f"responses: expected {len(prompts)} entries (one per prompt), got {len(responses)}"
            )
        raw = list(self.fn(prompts, responses))
        try:
            scores = [float(s) for s in raw]
        except (TypeError, ValueError):
            bad = next(s for s in raw if not isinstance(s, int | float))
            raise ValueError(
                f"reward {self.name!r}: expected a number per response, got {type(bad).__name__} {bad!r}"
            ) from None
        if len(scores) != len(prompts):
            raise ValueError(
                f"reward {self.name!r}: returned {len(scores)} scores for {len(prompts)} responses"
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise ValueError(f"reward {self.name!r}: non-finite score {scores[bad[0]]} for response {bad[0]}")
        return scores


def _per_pair(fn: Callable) -> Callable:
    def per_pair(prompts, responses):
        return [fn(p, r) for p, r in zip(prompts, responses)]

    per_pair.__wrapped_reward__ = fn
    return per_pair


def _messages(prompt) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def reward_model_fn(
    path: str, *, batch_size: int = 8, device=None, dtype=None, max_length: int = 2048
) -> RewardFn:
    """A reward model (``AutoModelForSequenceClassification``, one output) as a :class:`RewardFn`.

    Each (prompt, response) is rendered with the REWARD model's chat template when it has one
    (prompt messages + an assistant turn), else as ``prompt + "\\n" + response``; batches are
    right-padded and the score is ``logits[:, 0]`` at the last real token (transformers picks it
    from ``pad_token_id``).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or "auto")
    if model.config.num_labels != 1:
        raise ValueError(
            f"reward: {path} has num_labels={model.config.num_labels}; a reward model has 1 output"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()

    def text(prompt, response) -> str:
        if getattr(tok, "chat_template", None):
            msgs = _messages(prompt) + [{"role": "assistant", "content": response}]
            return tok.apply_chat_template(msgs, tokenize=False)
        p = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return f"{p}\n{response}"

    @torch.no_grad()
    def score(prompts, responses):
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            texts = [
                text(p, r)
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            ]
            enc = tok(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=not getattr(tok, "chat_template", None),
            )
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            out += logits[:, 0].float().cpu().tolist()
        return out

    return RewardFn(f"reward_model:{path}", score)


def load_reward(spec: str | Callable | RewardFn = "ncakit.scale.tinylm:reward", **rm_kwargs) -> RewardFn:
    """A :class:`RewardFn` from a callable ``fn(prompt, response) -> float``, a ``"module:function"``
    string, or a reward-model path / hub id (see :func:`reward_model_fn`)."""
    if isinstance(spec, RewardFn):
        return spec
    if callable(spec):
        return RewardFn(getattr(spec, "__name__", "callable"), _per_pair(spec))
    if not isinstance(spec, str) or not spec:
        raise TypeError(
            f"reward: expected a callable, 'module:function' or a reward-model path, got {spec!r}"
        )
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"reward: cannot import module {module_name!r} of {spec!r} ({err})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"reward: {module_name!r} has no callable {attr!r}")
        return RewardFn(spec, _per_pair(fn))
    return reward_model_fn(spec, **rm_kwargs)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low} ({what}), got {value!r}")
    return value


def _check_sampling(temperature, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"temperature: expected a finite value > 0 (sampling), got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite value > 0 (sampling), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p!r}")


def check_reward(reward_fn: RewardFn, prompt) -> None:
    """Call the reward on one (prompt, response) before any sampling: a wrong signature or a
    non-number fails now, naming the reward, not after the whole dataset was sampled."""
    try:
        reward_fn([prompt], ["a test response"])
    except (TypeError, ValueError) as err:
        hint = ""
        fn = reward_fn.fn
        target = getattr(fn, "__wrapped_reward__", None)
        if target is not None:
            try:
                hint = f" (its signature: {target.__name__}{inspect.signature(target)})"
            except (TypeError, ValueError):
                pass
        raise ValueError(
            f"reward: expected fn(prompt, response) -> a finite float, but {reward_fn.name!r} failed on "
            f"one example: {err}{hint}"
        ) from None


def render_prompt(prompt, tokenizer) -> str:
    """The prompt text the model continues: the chat template with the generation prompt when the
    tokenizer has one (a plain string becomes one user turn), else the text itself."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ValueError("prompt: a message list needs a tokenizer with a chat_template")
    return prompt


@torch.no_grad()
def sample_k_responses(
    model,
    tokenizer,
    prompts: Sequence,
    k: int = 4,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
    seed: int = 0,
    progress: bool = False,
    index_offset: int = 0,
) -> list[list[str]]:
    """K sampled continuations per prompt (``[len(prompts)][k]`` strings, special tokens removed).

    Prompts are rendered (:func:`render_prompt`), LEFT-padded in batches of ``batch_size`` and
    sampled with ``num_return_sequences=k``. ``max_prompt_length`` keeps the LAST prompt tokens
    (as the training data path does). Sampling is seeded per batch from ``seed`` and the batch's
    start index (plus ``index_offset``, the position of ``prompts[0]`` in a longer list sampled in
    pieces), so a prompt's samples do not depend on the batches before it.
    """
    _check_int("k", k, 1, "responses per prompt")
    _check_int("batch_size", batch_size, 1, "prompts per generate call")
    _check_int("max_new_tokens", max_new_tokens, 1, "tokens")
    if max_prompt_length is not None:
        _check_int("max_prompt_length", max_prompt_length, 1, "tokens")
    _check_sampling(temperature, top_p)
    chat = bool(getattr(tokenizer, "chat_template", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate")
    try:
        for start in starts:
            texts = [render_prompt(p, tokenizer) for p in prompts[start : start + batch_size]]
            ids = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
            if max_prompt_length:
                ids = [x[-max_prompt_length:] for x in ids]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(ids), width), dtype=torch.long)
            for i, x in enumerate(ids):  # left padding: the last real token sits at the end of every row
                input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                attention[i, width - len(x) :] = 1
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index_offset + start)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                seqs = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=k,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = seqs[:, width:].cpu()
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i in range(len(ids)):
                out.append([d.strip() for d in decoded[i * k : (i + 1) * k]])
    finally:
        model.train(was_training)
    return out


def generate_k_dataset(
    model,
    tokenizer,
    prompts: Sequence,
    reward: str | Callable | RewardFn,
    out_path: str | Path | None = None,
    *,
    k: int = 4,
    sort_best_first: bool = True,
    meta: dict | None = None,
    overwrite: bool = True,
    **sample_kwargs,
) -> tuple[list[dict], dict]:
    """Sample K responses per prompt, score them, return (and optionally write) canonical rows.

    Rows: ``{"prompt": <as given>, "responses": [...K], "rewards": [...K]}``; responses are
    assistant message lists when the prompt is a message list (the canonical chat form), else
    strings; ``sort_best_first`` orders each row by reward, highest first (stable), as the
    UltraFeedback data the authors used. Returns ``(rows, stats)``; ``stats`` counts prompts,
    responses, empty responses and distinct responses per prompt, with the reward range.

    Everything is checked before the first sample: ``k >= 2``, the sampling arguments, the output
    path (:func:`check_out_path`; ``overwrite=False`` refuses an existing file) and the reward on
    one example. Rows are scored and written batch by batch into a temporary file that replaces
    ``out_path`` only when every prompt is done (:class:`ncakit.scale.data.KDatasetWriter`).
    """
    from ncakit.scale.data import KDatasetWriter, sorted_best_first
    from ncakit.scale.data.load import write_text_atomic

    _check_int("k", k, 2, "responses per prompt: a comparison needs two")
    batch_size = sample_kwargs.get("batch_size", 8)
    _check_int("batch_size", batch_size, 1, "prompts per generate call")
    _check_sampling(sample_kwargs.get("temperature", 1.0), sample_kwargs.get("top_p", 1.0))
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got none")
    if out_path is not None:
        out_path = check_out_path(out_path, overwrite=overwrite)
    reward_fn = load_reward(reward)
    check_reward(reward_fn, prompts[0])

    writer = KDatasetWriter(out_path) if out_path is not None else None
    rows: list[dict] = []
    all_samples: list[list[str]] = []
    all_scores: list[float] = []
    t_gen = 0.0
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            t0 = time.perf_counter()
            samples = sample_k_responses(model, tokenizer, chunk, k, index_offset=start, **sample_kwargs)
            t_gen += time.perf_counter() - t0
            flat_p = [p for p, s in zip(chunk, samples) for _ in s]
            flat_r = [r for s in samples for r in s]
            scores = reward_fn(flat_p, flat_r)
            new_rows, i = [], 0
            for prompt, responses in zip(chunk, samples):
                rs = scores[i : i + len(responses)]
                i += len(responses)
                if isinstance(prompt, list):  # chat prompt: each response becomes one assistant message
                    responses = [[{"role": "assistant", "content": r}] for r in responses]
                if sort_best_first:
                    responses, rs = sorted_best_first(responses, rs)
                new_rows.append({"prompt": prompt, "responses": list(responses), "rewards": list(rs)})
            if writer is not None:
                writer.write(new_rows)
            rows += new_rows
            all_samples += samples
            all_scores += scores
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    flat_all = [r for s in all_samples for r in s]
    stats = {
        "prompts": len(rows),
        "k": k,
        "responses": len(flat_all),
        "empty_responses": sum(1 for r in flat_all if not r.strip()),
        "mean_distinct_per_prompt": (
            (sum(len(set(s)) for s in all_samples) / len(all_samples)) if all_samples else 0.0
        ),
        "reward": reward_fn.name,
        "reward_min": min(all_scores) if all_scores else None,
        "reward_mean": (sum(all_scores) / len(all_scores)) if all_scores else None,
        "reward_max": max(all_scores) if all_scores else None,
        "generate_seconds": t_gen,
        **(meta or {}),
    }
    if stats["empty_responses"]:
        logger.warning(
            "%d of %d sampled responses are empty (kept in the file; load_k_dataset drops and counts them)",
            stats["empty_responses"],
            len(flat_all),
        )
    if writer is not None:
        path = writer.commit()
        write_text_atomic(str(path) + ".meta.json", json.dumps(stats, indent=2, default=str) + "\n")
    return rows, stats


def check_out_path(out, *, overwrite: bool = False) -> Path:
    """The output path, checked before any work: a .jsonl/.json/.parquet file name, not a folder,
    not an existing file unless ``overwrite``, in a folder that exists or can be created."""
    from ncakit.scale.data.load import DATA_SUFFIXES

    if out is None or not str(out).strip():
        raise ValueError(f"out: expected a .jsonl, .json or .parquet file path, got {out!r}")
    path = Path(out).expanduser()
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        raise ValueError(f"out: expected a .jsonl, .json or .parquet file path, got the folder {str(out)!r}")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(
            f"out: expected a file name ending in .jsonl, .json or .parquet, got {path.name!r} "
            f"(suffix {path.suffix or 'none'!r})"
        )
    if path.exists() and not overwrite:
        raise ValueError(
            f"out: expected a new file, got the existing {str(out)!r} (pass --overwrite true to replace it)"
        )
    ancestor = next(a for a in [path.parent, *path.parent.parents] if a.exists())
    if not ancestor.is_dir():
        raise ValueError(
            f"out: expected a folder to write into, got {str(out)!r} whose parent {str(ancestor)!r} is a file"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"out: expected a writable folder, got {str(ancestor)!r} (permission denied)")
    return path


# ----------------------------------------------------------------------------------------------
# Prompts and the command line
# ----------------------------------------------------------------------------------------------


def load_prompts(
    source: str,
    *,
    split: str = "train",
    column: str = "prompt",
    max_prompts: int | None = None,
    seed: int = 0,
) -> list:
    """Prompts from ``"tinylm"`` (the synthetic tasks, as user messages), a local
    .jsonl/.json/.parquet file or a hub dataset (``column``: text or a message list; for the
    binarized/chosen-only layouts, the messages before the last assistant turn)."""
    if max_prompts is not None:
        _check_int("max_prompts", max_prompts, 1, "prompts to sample; None: all")
    if source == "tinylm":
        from ncakit.scale.tinylm import synthetic_corpus

        n = 64 if max_prompts is None else max_prompts
        return [[{"role": "user", "content": r["prompt"]}] for r in synthetic_corpus(n, seed=seed + 5)]

    from ncakit.scale.data import load_source

    ds = load_source(source, split)
    if len(ds) == 0:
        raise ValueError(f"prompts: expected at least one prompt in {source!r} (split {split!r}), got 0 rows")
    if max_prompts is not None:
        ds = ds.select(range(min(max_prompts, len(ds))))
    if column not in ds.column_names:
        raise ValueError(f"column: {column!r} is not a column of {source} (columns: {ds.column_names})")
    prompts = []
    for value in ds[column]:
        if isinstance(value, list) and value and value[-1].get("role") == "assistant":
            value = value[:-1]
        prompts.append(value)
    return prompts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scale/generate.py",
        description="Sample K responses per prompt, score them, write a canonical K-response dataset.",
    )
    p.add_argument("--model", default="tinylm", help="causal LM path / hub id, or 'tinylm' (the offline kit)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path / hub id (default: the model's)")
    p.add_argument("--tiny_kit_dir", default="out/tinylm-kit", help="where the tiny kit is built once")
    p.add_argument("--prompts", default="tinylm", help="'tinylm', a local file or a hub dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--prompt_column", default="prompt")
    p.add_argument("--max_prompts", type=int, default=None)
    p.add_argument("--k", type=int, default=4, help="responses per prompt")
    p.add_argument(
        "--reward",
        default="ncakit.scale.tinylm:reward",
        help="'module:function' or a reward-model path / hub id",
    )
    p.add_argument("--out", required=True, help="output .jsonl / .json / .parquet")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--max_prompt_length", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--rm_batch_size", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_sort", action="store_true", help="keep sampling order instead of best-first")
    p.add_argument(
        "--overwrite", type=_bool, default=False, nargs="?", const=True, help="replace an existing --out file"
    )
    p.add_argument(
        "--debug",
        type=_bool,
        default=False,
        nargs="?",
        const=True,
        help="show the full traceback of an error instead of one line (or set NCAKIT_DEBUG=1)",
    )
    return p


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("true", "yes", "1", "on"):
        return True
    if t in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _tiny_kit_settings(kit_dir: str) -> dict:
    """The settings of the tiny kit in ``kit_dir`` (reused as is, whatever its sizes), or {} for a
    folder with no kit yet (the defaults are built there). A broken kit is refused, never rebuilt."""
    from ncakit.scale.tinylm import recorded_kit_settings

    root = Path(kit_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"tiny_kit_dir: expected a folder, got the file {kit_dir!r}")
    try:
        recorded = recorded_kit_settings(root)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"tiny_kit_dir: expected a readable kit.json in {kit_dir!r}, got {err}") from None
    if recorded is None:
        if root.is_dir() and any(root.iterdir()):
            raise ValueError(
                f"tiny_kit_dir: expected an empty folder or a tiny kit (kit.json), got {kit_dir!r} holding "
                "other files; point --tiny_kit_dir at a new folder"
            )
        return {}
    missing = [d for d in ("tokenizer", "model") if not (root / d).exists()]
    if missing:
        raise ValueError(
            f"tiny_kit_dir: expected a complete tiny kit in {kit_dir!r}, got one without {missing}; "
            "it is not rebuilt here (rebuild it with scale/train.py or remove the folder)"
        )
    return {name: value for name, value in recorded.items() if value is not None}


def check_generate_args(args: argparse.Namespace) -> None:
    """Every command-line argument, before any model, reward or prompt is loaded (one line each)."""
    args.out = str(check_out_path(args.out, overwrite=args.overwrite))  # ~ expanded
    _check_int("k", args.k, 2, "responses per prompt: a comparison needs two")
    if args.max_prompts is not None:
        _check_int("max_prompts", args.max_prompts, 1, "prompts to sample; omit for all")
    _check_int("batch_size", args.batch_size, 1, "prompts per generate call")
    _check_int("rm_batch_size", args.rm_batch_size, 1, "responses per reward-model call")
    _check_int("max_new_tokens", args.max_new_tokens, 1, "tokens")
    _check_int("max_prompt_length", args.max_prompt_length, 1, "tokens")
    _check_sampling(args.temperature, args.top_p)
    for name in ("model", "tokenizer", "prompts"):
        value = getattr(args, name)
        if value is None or value == "tinylm":
            continue
        if not str(value).strip():
            raise ValueError(f"{name}: expected a hub id or a local path, got ''")
        from ncakit.scale.data import looks_like_local_path

        if looks_like_local_path(value) and not Path(value).expanduser().exists():
            raise ValueError(
                f"{name}: expected an existing local file or folder, got {value!r} "
                "(no such path; a local path is not looked up on the Hub)"
            )
    if args.model == "tinylm":
        _tiny_kit_settings(args.tiny_kit_dir)
    if not str(args.reward).strip():
        raise ValueError("reward: expected 'module:function' or a reward-model path / hub id, got ''")
    from ncakit.scale.data import looks_like_local_path

    reward = str(args.reward)
    if ":" not in reward and looks_like_local_path(reward) and not Path(reward).expanduser().exists():
        raise ValueError(
            f"reward: expected 'module:function' or an existing reward-model folder / hub id, got {reward!r} "
            "(no such path; a local path is not looked up on the Hub)"
        )


def main(argv: list[str] | None = None) -> tuple[list[dict], dict] | None:
    """``scale/generate.py``: see ``--help``. Splits the prompts across processes under accelerate.

    Order: every argument is checked (:func:`check_generate_args`), the prompts are loaded and the
    reward is called on one of them, and only then is the model loaded and sampled."""
    args = _parser().parse_args(argv)
    check_generate_args(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from accelerate import PartialState
    from accelerate.utils import gather_object

    prompts = load_prompts(
        args.prompts,
        split=args.split,
        column=args.prompt_column,
        max_prompts=args.max_prompts,
        seed=args.seed,
    )
    if not prompts:
        raise ValueError(f"prompts: expected at least one prompt from {args.prompts!r}, got none")
    state = PartialState()
    if state.device.type == "cpu":
        torch.set_num_threads(1)
    # the reward-model settings reach only a reward model; a "module:function" ignores them
    reward = load_reward(args.reward, batch_size=args.rm_batch_size, device=state.device)
    check_reward(reward, prompts[0])
    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    if args.model == "tinylm":
        from ncakit.scale.tinylm import ensure_tiny_kit

        with state.main_process_first():  # an existing kit is reused as it is, never rebuilt
            settings = _tiny_kit_settings(args.tiny_kit_dir) or {"sft_steps": 300}
            kit = ensure_tiny_kit(args.tiny_kit_dir, **settings)
        model, tokenizer = kit.model, kit.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(state.device)
    sample_kwargs = dict(
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        progress=state.is_main_process,
    )
    meta = {
        "model": args.model,
        "prompts_source": args.prompts,
        "split": args.split,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }
    if state.num_processes == 1:
        rows, stats = generate_k_dataset(
            model,
            tokenizer,
            prompts,
            reward,
            args.out,
            seed=args.seed,
            sort_best_first=not args.no_sort,
            meta=meta,
            overwrite=args.overwrite,
            **sample_kwargs,
        )
        print(json.dumps(stats, indent=2, default=str))
        return rows, stats
    with state.split_between_processes(list(range(len(prompts)))) as mine:
        rows, _ = generate_k_dataset(
            model,
            tokenizer,
            [prompts[i] for i in mine],
            reward,
            None,
            seed=args.seed + 7919 * state.process_index,
            sort_best_first=not args.no_sort,
            **sample_kwargs,
        )
    all_rows = gather_object(rows)
    if state.is_main_process:
        from ncakit.scale.data import save_k_dataset
        from ncakit.scale.data.load import write_text_atomic

        save_k_dataset(all_rows, args.out)
        write_text_atomic(
            str(args.out) + ".meta.json",
            json.dumps({**meta, "prompts": len(all_rows), "processes": state.num_processes}, indent=2) + "\n",
        )
        print(f"wrote {len(all_rows)} prompts x {args.k} responses to {args.out}")
    return None


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug [true]`` on the command line or ``NCAKIT_DEBUG=1``: show tracebacks."""
    from ncakit.scale.cli import debug_requested as requested

    return requested(argv)


def cli(argv: list[str] | None = None) -> int:
    """The entry point of ``scale/generate.py``: one line ``scale/generate.py: error: ...`` and exit
    status 2 for a bad argument or input (the full traceback with ``--debug true`` / ``NCAKIT_DEBUG=1``)."""
    import sys

    try:
        main(argv)
    except (ValueError, TypeError, OSError) as err:
        if debug_requested(argv):
            raise
        print(f"scale/generate.py: error: {err}", file=sys.stderr)
        return 2
    return 0
