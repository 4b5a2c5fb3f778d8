"""Sample K responses per prompt, score them, write a canonical K-response dataset: the on-policy
half of the loop (generate with the current policy -> train on the scored K-tuples -> repeat).

    python scale/generate.py --model out/scale-demo/final --prompts tinylm --k 4 \\
        --reward ncakit.scale.tinylm:reward --out out/onpolicy/train.jsonl
    accelerate launch scale/generate.py --model HuggingFaceH4/mistral-7b-sft-beta \\
        --prompts HuggingFaceH4/ultrafeedback_binarized --split train_prefs --k 4 \\
        --reward OpenAssistant/reward-model-deberta-v3-large-v2 --out data/uf-onpolicy.jsonl
    python scale/generate.py --backend vllm --tensor_parallel_size 4 --model <sft model> ...

Pieces (each usable on its own):

- :func:`sample_k_responses` -- the ``hf`` backend (the default): batched ``model.generate`` with
  LEFT padding (decoder-only models continue from the last real token), ``num_return_sequences=K``,
  the chat template when the tokenizer has one; K decoded strings per prompt (special tokens removed).
- :func:`sample_k_responses_vllm` -- the ``vllm`` backend (optional extra ``ncakit[vllm]``, imported
  only when asked for): the same rendered prompts (:func:`render_prompt`, tokenized and truncated as
  the ``hf`` path does), ``SamplingParams(n=K, ...)`` seeded per prompt; the same K strings per
  prompt, so the file has the same schema (the meta records the backend). vLLM runs in ONE process
  and spreads a model over GPUs itself (``--tensor_parallel_size``): a multi-process launch is refused.
- rewards and judges (:mod:`ncakit.scale.rewards`): ``--reward`` is a ``"module:function"`` per pair,
  a list-taking :class:`~ncakit.scale.rewards.Judge` (or a TRL judge) called once per batch of
  prompts with all their K responses, or a reward-model path (scored in length-sorted batches of
  ``--reward_batch_size`` on the accelerator).
- :func:`generate_k_dataset` -- sampling and scoring over a prompt list, then
  :func:`ncakit.scale.data.save_k_dataset` (JSONL / JSON / Parquet; the rows load back with
  ``ncakit.scale.data.load_k_dataset``) and a ``<out>.meta.json`` with the settings and counts (empty
  responses are kept in the file and counted in the meta; ``load_k_dataset`` drops and counts them,
  ``Reason.EMPTY_RESPONSE``). Rows are written as they are scored into a temporary file next to
  ``<out>``, moved into place at the end (``os.replace``): a crash leaves no half-written dataset.
- :func:`check_generate_args` -- every command-line argument checked before a model is loaded
  (output path and format, ``k >= 2``, ``max_prompts >= 1``, batch sizes, temperature, top_p,
  the prompt source, the tiny kit folder, the backend and whether vllm is installed); the reward
  is called on one example before sampling.

Under ``accelerate launch`` with several processes (``hf`` backend) the prompts are split between the
processes (``PartialState.split_between_processes``) and the rows gathered on the main process,
which writes the file. This module imports ``transformers``; ``import ncakit`` does not import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ncakit.scale.rewards import Judge, RewardFn, chat_messages, check_reward, load_reward

__all__ = [
    "BACKENDS",
    "render_prompt",
    "prompt_token_ids",
    "sample_k_responses",
    "import_vllm",
    "load_vllm",
    "sample_k_responses_vllm",
    "generate_k_dataset",
    "load_prompts",
    "check_generate_args",
    "main",
]

BACKENDS = ("hf", "vllm")
VLLM_INSTALL = "pip install 'ncakit[vllm]'"

logger = logging.getLogger(__name__)


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


def render_prompt(prompt, tokenizer) -> str:
    """The prompt text the model continues: the chat template with the generation prompt when the
    tokenizer has one (a plain string becomes one user turn), else the text itself."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            chat_messages(prompt), tokenize=False, add_generation_prompt=True
        )
    if not isinstance(prompt, str):
        raise ValueError("prompt: a message list needs a tokenizer with a chat_template")
    return prompt


def prompt_token_ids(prompts: Sequence, tokenizer, max_prompt_length: int | None = None):
    """``(texts, ids)``: each prompt rendered (:func:`render_prompt`) and tokenized as both backends
    feed it to the model -- no special tokens added to a chat-rendered text (its template has them),
    the LAST ``max_prompt_length`` tokens kept (as the training data path does)."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = [render_prompt(p, tokenizer) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    if max_prompt_length:
        ids = [x[-max_prompt_length:] for x in ids]
    return texts, ids


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
            _, ids = prompt_token_ids(prompts[start : start + batch_size], tokenizer, max_prompt_length)
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


# ----------------------------------------------------------------------------------------------
# The vLLM backend (optional extra; one process, tensor parallel inside vLLM)
# ----------------------------------------------------------------------------------------------


def import_vllm():
    """The ``vllm`` module, or one line naming ``--backend`` and what to install (no model loads)."""
    try:
        import vllm
    except ImportError as err:
        raise ValueError(
            f"backend: got 'vllm' but the vllm package is not installed ({err}); install it with "
            f"{VLLM_INSTALL} on a CUDA machine, or use --backend hf"
        ) from None
    return vllm


def load_vllm(model: str, *, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
              tensor_parallel_size: int = 1, **llm_kwargs):  # fmt: skip
    """``vllm.LLM(model=..., dtype=..., seed=..., tensor_parallel_size=...)``; extra keywords
    (``gpu_memory_utilization``, ``max_model_len``, ...) go to ``vllm.LLM`` as they are."""
    vllm = import_vllm()
    return vllm.LLM(
        model=str(model),
        tokenizer=str(tokenizer or model),
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=tensor_parallel_size,
        **llm_kwargs,
    )


def sample_k_responses_vllm(
    llm,
    tokenizer,
    prompts: Sequence,
    k: int = 4,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_prompt_length: int | None = None,
    seed: int = 0,
    index_offset: int = 0,
    progress: bool = False,
    batch_size: int | None = None,
) -> list[list[str]]:
    """K sampled continuations per prompt from a ``vllm.LLM`` (``[len(prompts)][k]`` strings).

    The prompts are the ``hf`` path's: rendered with ``tokenizer``'s chat template
    (:func:`render_prompt`), tokenized and truncated by :func:`prompt_token_ids`, and passed as
    token ids (``{"prompt_token_ids": ...}``) so vLLM adds no second BOS to a rendered text. One
    ``SamplingParams(n=k, temperature, top_p, max_tokens=max_new_tokens, seed)`` per prompt, the
    seed from ``seed`` and the prompt's index (plus ``index_offset``), so a prompt's samples do not
    depend on the batch it is in; one ``llm.generate`` call for the whole list (vLLM batches
    itself; ``batch_size`` is unused). Special tokens removed, whitespace stripped, as ``hf``.
    Different numerics from ``hf``: the same seed gives other samples, never another schema.
    """
    vllm = import_vllm()
    _check_int("k", k, 1, "responses per prompt")
    _check_int("max_new_tokens", max_new_tokens, 1, "tokens")
    _check_sampling(temperature, top_p)
    _, ids = prompt_token_ids(prompts, tokenizer, max_prompt_length)
    params = [
        vllm.SamplingParams(
            n=k,
            temperature=float(temperature),
            top_p=float(top_p),
            max_tokens=max_new_tokens,
            seed=seed * 1_000_003 + index_offset + i,
            skip_special_tokens=True,
        )
        for i in range(len(ids))
    ]
    outputs = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=progress)
    if len(outputs) != len(ids):
        raise RuntimeError(f"vllm: returned {len(outputs)} outputs for {len(ids)} prompts")
    out = []
    for i, request in enumerate(outputs):
        texts = [c.text.strip() for c in request.outputs]
        if len(texts) != k:
            raise RuntimeError(f"vllm: returned {len(texts)} responses for prompt {i}, expected {k}")
        out.append(texts)
    return out


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def generate_k_dataset(
    model,
    tokenizer,
    prompts: Sequence,
    reward: str | Callable | RewardFn | Judge,
    out_path: str | Path | None = None,
    *,
    k: int = 4,
    sort_best_first: bool = True,
    meta: dict | None = None,
    overwrite: bool = True,
    backend: str = "hf",
    **sample_kwargs,
) -> tuple[list[dict], dict]:
    """Sample K responses per prompt, score them, return (and optionally write) canonical rows.

    Rows: ``{"prompt": <as given>, "responses": [...K], "rewards": [...K]}``; responses are
    assistant message lists when the prompt is a message list (the canonical chat form), else
    strings; ``sort_best_first`` orders each row by reward, highest first (stable), as the
    UltraFeedback data the authors used. Returns ``(rows, stats)``; ``stats`` counts prompts,
    responses, empty responses and distinct responses per prompt, with the reward range.

    ``backend``: ``"hf"`` (``model`` is a transformers causal LM, :func:`sample_k_responses`) or
    ``"vllm"`` (``model`` is a ``vllm.LLM``, :func:`sample_k_responses_vllm`); the rows, the file
    and the meta have the same schema either way (``stats["backend"]`` says which). The reward is
    called once per batch of ``batch_size`` prompts with all their K responses
    (``score_groups``): one batched call of a :class:`~ncakit.scale.rewards.RewardFn`, one
    ``judge(prompts, completions)`` of a :class:`~ncakit.scale.rewards.Judge`.

    Everything is checked before the first sample: ``k >= 2``, the sampling arguments, the output
    path (:func:`check_out_path`; ``overwrite=False`` refuses an existing file) and the reward on
    one example. Rows are scored and written batch by batch into a temporary file that replaces
    ``out_path`` only when every prompt is done (:class:`ncakit.scale.data.KDatasetWriter`).
    """
    from ncakit.scale.data import KDatasetWriter, sorted_best_first
    from ncakit.scale.data.load import write_text_atomic

    _check_int("k", k, 2, "responses per prompt: a comparison needs two")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    sample = sample_k_responses if backend == "hf" else sample_k_responses_vllm
    batch_size = sample_kwargs.get("batch_size", 8)
    _check_int("batch_size", batch_size, 1, "prompts per generate call")
    _check_sampling(sample_kwargs.get("temperature", 1.0), sample_kwargs.get("top_p", 1.0))
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got none")
    if out_path is not None:
        out_path = check_out_path(out_path, overwrite=overwrite)
    reward_fn = load_reward(reward)
    check_reward(reward_fn, prompts[0], k)

    writer = KDatasetWriter(out_path) if out_path is not None else None
    rows: list[dict] = []
    all_samples: list[list[str]] = []
    all_scores: list[float] = []
    t_gen = 0.0
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            t0 = time.perf_counter()
            samples = sample(model, tokenizer, chunk, k, index_offset=start, **sample_kwargs)
            t_gen += time.perf_counter() - t0
            grouped = reward_fn.score_groups(chunk, samples)  # ONE call per batch of prompts
            new_rows = []
            for prompt, responses, rs in zip(chunk, samples, grouped):
                if isinstance(prompt, list):  # chat prompt: each response becomes one assistant message
                    responses = [[{"role": "assistant", "content": r}] for r in responses]
                if sort_best_first:
                    responses, rs = sorted_best_first(responses, rs)
                new_rows.append({"prompt": prompt, "responses": list(responses), "rewards": list(rs)})
            if writer is not None:
                writer.write(new_rows)
            rows += new_rows
            all_samples += samples
            all_scores += [x for g in grouped for x in g]
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
        "backend": backend,
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
        description="Sample K responses per prompt, score them, write a canonical K-response dataset. "
        "--backend hf (default) runs under accelerate launch with any number of processes (the prompts "
        "are split); --backend vllm runs in ONE process (python scale/generate.py) and spreads the model "
        "over GPUs with --tensor_parallel_size.",
    )
    p.add_argument(
        "--backend",
        default="hf",
        help="hf: transformers generate (default); vllm: vLLM (install with "
        + VLLM_INSTALL
        + "; one process)",
    )
    p.add_argument(
        "--tensor_parallel_size",
        type=int,
        default=1,
        help="GPUs vLLM shards the model over (--backend vllm only; one process drives them all)",
    )
    p.add_argument(
        "--gpu_memory_utilization",
        type=float,
        default=None,
        help="share of GPU memory vLLM may take (--backend vllm; default vLLM's); leave room for a reward model",
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
        help="'module:function' (a per-pair fn(prompt, response) -> float, or a list-taking judge: a "
        "ncakit.scale.rewards.Judge, a function marked @list_judge, a TRL rank/pairwise judge; called once "
        "per batch of prompts) or a reward-model path / hub id (AutoModelForSequenceClassification, 1 label)",
    )
    p.add_argument(
        "--reward_workers",
        type=int,
        default=1,
        help="threads calling a per-pair 'module:function' reward concurrently (API judges); 1: in turn",
    )
    p.add_argument("--out", required=True, help="output .jsonl / .json / .parquet")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--max_prompt_length", type=int, default=512)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=8, help="prompts per generate call")
    p.add_argument(
        "--reward_batch_size",
        "--rm_batch_size",
        dest="reward_batch_size",
        type=int,
        default=8,
        help="responses per reward-model forward (length-sorted, on the accelerator, bf16 on CUDA)",
    )
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


def check_backend_args(args: argparse.Namespace) -> None:
    """``--backend`` and its flags; for ``vllm``, that vllm imports and that this is one process."""
    if args.backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {args.backend!r}")
    _check_int("tensor_parallel_size", args.tensor_parallel_size, 1, "GPUs vLLM shards the model over")
    gmu = args.gpu_memory_utilization
    if gmu is not None and not (math.isfinite(gmu) and 0 < gmu <= 1):
        raise ValueError(f"gpu_memory_utilization: expected a value in (0, 1], got {gmu!r}")
    if args.backend == "hf":
        for name, value, default in (("tensor_parallel_size", args.tensor_parallel_size, 1),
                                     ("gpu_memory_utilization", gmu, None)):  # fmt: skip
            if value != default:
                raise ValueError(f"{name}: only --backend vllm uses it, got {value!r} with --backend hf")
        return
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise ValueError(
            f"backend: vllm runs in one process (it spreads the model over GPUs with --tensor_parallel_size), "
            f"got a launch with {world} processes; run python scale/generate.py --backend vllm, not accelerate launch"
        )
    import_vllm()


def check_generate_args(args: argparse.Namespace) -> None:
    """Every command-line argument, before any model, reward or prompt is loaded (one line each)."""
    args.out = str(check_out_path(args.out, overwrite=args.overwrite))  # ~ expanded
    _check_int("k", args.k, 2, "responses per prompt: a comparison needs two")
    if args.max_prompts is not None:
        _check_int("max_prompts", args.max_prompts, 1, "prompts to sample; omit for all")
    _check_int("batch_size", args.batch_size, 1, "prompts per generate call")
    _check_int("reward_batch_size", args.reward_batch_size, 1, "responses per reward-model call")
    _check_int("reward_workers", args.reward_workers, 1, "threads calling the reward")
    check_backend_args(args)
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
    reward = load_reward(
        args.reward, workers=args.reward_workers, batch_size=args.reward_batch_size, device=state.device
    )
    check_reward(reward, prompts[0], args.k)
    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    model_path, tokenizer_path = args.model, args.tokenizer or args.model
    if args.model == "tinylm":
        from ncakit.scale.tinylm import ensure_tiny_kit

        with state.main_process_first():  # an existing kit is reused as it is, never rebuilt
            settings = _tiny_kit_settings(args.tiny_kit_dir) or {"sft_steps": 300}
            kit = ensure_tiny_kit(args.tiny_kit_dir, **settings)
        model, tokenizer = kit.model, kit.tokenizer
        model_path, tokenizer_path = str(kit.model_path), str(kit.tokenizer_path)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        model = None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.backend == "vllm":  # the same tokenizer renders the prompts (render_prompt), as for hf
        extra = (
            {}
            if args.gpu_memory_utilization is None
            else {"gpu_memory_utilization": args.gpu_memory_utilization}
        )
        model = load_vllm(model_path, tokenizer=tokenizer_path, dtype=args.dtype, seed=args.seed,
                          tensor_parallel_size=args.tensor_parallel_size, **extra)  # fmt: skip
    else:
        if model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
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
        "backend": args.backend,
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
            backend=args.backend,
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
