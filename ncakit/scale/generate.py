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
  ``<out>.meta.json`` with the settings and counts (empty responses are kept, counted, and
  dropped later by the tokeniser, which counts them again).

Under ``accelerate launch`` with several processes the prompts are split between the processes
(``PartialState.split_between_processes``) and the rows gathered on the main process, which writes
the file. This module imports ``transformers``; ``import ncakit`` does not import it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
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
        scores = [float(s) for s in self.fn(prompts, responses)]
        if len(scores) != len(prompts):
            raise ValueError(
                f"reward {self.name!r}: returned {len(scores)} scores for {len(prompts)} responses"
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise ValueError(f"reward {self.name!r}: non-finite score {scores[bad[0]]} for response {bad[0]}")
        return scores


def _per_pair(fn: Callable) -> Callable:
    return lambda prompts, responses: [fn(p, r) for p, r in zip(prompts, responses)]


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
) -> list[list[str]]:
    """K sampled continuations per prompt (``[len(prompts)][k]`` strings, special tokens removed).

    Prompts are rendered (:func:`render_prompt`), LEFT-padded in batches of ``batch_size`` and
    sampled with ``num_return_sequences=k``. ``max_prompt_length`` keeps the LAST prompt tokens
    (as the training data path does). Sampling is seeded per batch from ``seed`` and the batch's
    start index, so a prompt's samples do not depend on the batches before it.
    """
    if k < 1:
        raise ValueError(f"k: expected >= 1 responses per prompt, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0 (sampling), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p}")
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
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + start)
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
    **sample_kwargs,
) -> tuple[list[dict], dict]:
    """Sample K responses per prompt, score them, return (and optionally write) canonical rows.

    Rows: ``{"prompt": <as given>, "responses": [...K], "rewards": [...K]}``; responses are
    assistant message lists when the prompt is a message list (the canonical chat form), else
    strings; ``sort_best_first`` orders each row by reward, highest first (stable), as the
    UltraFeedback data the authors used. Returns ``(rows, stats)``; ``stats`` counts prompts,
    responses, empty responses and distinct responses per prompt, with the reward range.
    """
    from ncakit.scale.data import save_k_dataset, sorted_best_first

    reward_fn = load_reward(reward)
    prompts = list(prompts)
    t0 = time.perf_counter()
    samples = sample_k_responses(model, tokenizer, prompts, k, **sample_kwargs)
    t_gen = time.perf_counter() - t0
    flat_p = [p for p, s in zip(prompts, samples) for _ in s]
    flat_r = [r for s in samples for r in s]
    scores = reward_fn(flat_p, flat_r)
    rows, i = [], 0
    for prompt, responses in zip(prompts, samples):
        rs = scores[i : i + len(responses)]
        i += len(responses)
        if isinstance(prompt, list):  # chat prompt: each response becomes one assistant message
            responses = [[{"role": "assistant", "content": r}] for r in responses]
        if sort_best_first:
            responses, rs = sorted_best_first(responses, rs)
        rows.append({"prompt": prompt, "responses": list(responses), "rewards": list(rs)})
    stats = {
        "prompts": len(rows),
        "k": k,
        "responses": len(flat_r),
        "empty_responses": sum(1 for r in flat_r if not r.strip()),
        "mean_distinct_per_prompt": (sum(len(set(s)) for s in samples) / len(samples)) if samples else 0.0,
        "reward": reward_fn.name,
        "reward_min": min(scores) if scores else None,
        "reward_mean": (sum(scores) / len(scores)) if scores else None,
        "reward_max": max(scores) if scores else None,
        "generate_seconds": t_gen,
        **(meta or {}),
    }
    if stats["empty_responses"]:
        logger.warning(
            "%d of %d sampled responses are empty (kept; the tokeniser drops and counts them)",
            stats["empty_responses"],
            len(flat_r),
        )
    if out_path is not None:
        path = save_k_dataset(rows, out_path)
        Path(str(path) + ".meta.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    return rows, stats


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
    if source == "tinylm":
        from ncakit.scale.tinylm import synthetic_corpus

        n = max_prompts or 64
        return [[{"role": "user", "content": r["prompt"]}] for r in synthetic_corpus(n, seed=seed + 5)]

    from ncakit.scale.data import load_source

    ds = load_source(source, split)
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
    return p


def main(argv: list[str] | None = None) -> tuple[list[dict], dict] | None:
    """``scale/generate.py``: see ``--help``. Splits the prompts across processes under accelerate."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    state = PartialState()
    if state.device.type == "cpu":
        torch.set_num_threads(1)
    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    if args.model == "tinylm":
        from ncakit.scale.tinylm import ensure_tiny_kit

        with state.main_process_first():
            kit = ensure_tiny_kit(args.tiny_kit_dir, sft_steps=300)
        model, tokenizer = kit.model, kit.tokenizer
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(state.device)
    prompts = load_prompts(
        args.prompts,
        split=args.split,
        column=args.prompt_column,
        max_prompts=args.max_prompts,
        seed=args.seed,
    )
    # the reward-model settings reach only a reward model; a "module:function" ignores them
    reward = load_reward(args.reward, batch_size=args.rm_batch_size, device=state.device)
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

        save_k_dataset(all_rows, args.out)
        Path(str(args.out) + ".meta.json").write_text(
            json.dumps({**meta, "prompts": len(all_rows), "processes": state.num_processes}, indent=2) + "\n"
        )
        print(f"wrote {len(all_rows)} prompts x {args.k} responses to {args.out}")
    return None
