"""Reference log-probs log μ(y_k | x) for the losses' ``ref_logps`` argument: precomputed once and
cached on disk, or computed on the fly from the same model with its LoRA adapter disabled.

Both paths (and the policy's own log-probs) go through :func:`batch_logps`, so they agree
exactly on the same weights (a test checks it):

- :func:`batch_logps` -- one forward over a collated batch (:class:`ncakit.data.KResponseCollator`)
  -> ``[B, K]`` sequence log-probs (sum over response tokens, 0 at masked responses), via the
  chunked paths of :mod:`ncakit.logprobs` (never a full ``[N, T, V]`` fp32 log-softmax).
- :class:`LogprobHead` / :func:`install_logprob_head` -- the model's own LM head swapped for a
  module that, while armed with the labels, returns per-token log-probs of the response positions
  instead of logits. It runs INSIDE the model's forward, so DDP / FSDP2 / ZeRO-3 wrappers see an
  ordinary forward (their hooks gather the head's weight as usual) and the ``[N, T, V]`` logits
  never exist. :func:`batch_logps` takes this path whenever a head is installed.
- :func:`reference_logps_from_adapter` -- the same under ``peft_model.disable_adapter()``,
  ``torch.no_grad()`` and eval mode: the reference of a LoRA run without a second model in
  memory (MATH.md, Facts about the authors' released setup: the reference is the same base with
  the LoRA adapter disabled).
- :func:`precompute_reference_logps` -- one pass over a tokenised dataset that adds a
  ``ref_logps`` column (K floats per row), cached under ``cache_dir`` by a key hashing the token
  ids, the model weights (or a given ``model_id`` such as ``"name@revision"``), the tokenizer
  and the lengths; a second call with the same inputs loads the file and runs no forward pass.
  The collator then returns ``batch["ref_logps"]`` ``[B, K]``.

Example::

    ds, stats = prepare_k_dataset(path, tokenizer, max_length=1024, max_prompt_length=512)
    collate = KResponseCollator(tokenizer.pad_token_id, k=4)
    ds, info = precompute_reference_logps(model, ds, collate, batch_size=16, cache_dir="cache/ref",
                                          model_id="HuggingFaceH4/mistral-7B-SFT-beta@main",
                                          key_extra={"max_length": 1024, "max_prompt_length": 512})
    for batch in make_dataloader(ds, collate, 8):
        policy = batch_logps(model, batch)                               # [B, K], with grad
        out = get_loss("nca")(policy, batch["ref_logps"].to(policy.device), batch["rewards"], mask=batch["mask"])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ncakit.logprobs import (
    IGNORE_INDEX,
    linear_token_logps,
    response_lengths,
    sequence_logps,
    sequence_logps_from_hidden,
)

__all__ = [
    "CACHE_FORMAT",
    "LogprobHead",
    "install_logprob_head",
    "remove_logprob_head",
    "find_logprob_head",
    "batch_logps",
    "reference_logps_from_adapter",
    "precompute_reference_logps",
    "ReferenceLogps",
    "data_fingerprint",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "reference_cache_key",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stored numbers would change for the same inputs

# Causal LMs whose forward is exactly lm_head(decoder(...)) with a bias-free linear head, so the
# hidden-state path (no [N, T, V] logits) gives the same numbers as the logits.
_HIDDEN_PATH_MODEL_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi3",
    "olmo",
    "olmo2",
    "gemma",
}


# ----------------------------------------------------------------------------------------------
# Forward pass -> [B, K] sequence log-probs
# ----------------------------------------------------------------------------------------------


def _unwrap(model):
    """Strip DDP / accelerate / torch.compile wrappers (``.module`` / ``._orig_mod``)."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
            type(model).__name__ in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine")
            and hasattr(model, "module")
        ):
            model = model.module
        else:
            break
    return model


def _find_peft(model):
    m = _unwrap(model)
    return m if hasattr(m, "disable_adapter") and hasattr(m, "get_base_model") else None


def _causal_lm(model):
    """The underlying ``*ForCausalLM`` (through peft and wrappers)."""
    m = _unwrap(model)
    peft_model = _find_peft(m)
    return peft_model.get_base_model() if peft_model is not None else m


def _is_wrapped(model) -> bool:
    if model is not _unwrap(model):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule  # torch >= 2.6 (FSDP2)

        if isinstance(model, FSDPModule):
            return True
    except ImportError:  # pragma: no cover
        pass
    return type(model).__name__ in ("FullyShardedDataParallel",)


def _plain_linear_head(lm) -> bool:
    """True when ``lm``'s logits are exactly ``lm_head(hidden)`` with a bias-free linear head (no
    softcapping or scaling after the matmul), for a model type whose forward we know."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _HIDDEN_PATH_MODEL_TYPES:
        return False
    softcap = getattr(cfg, "final_logit_softcapping", None)
    if softcap or getattr(cfg, "logit_scale", None) not in (None, 1):
        return False  # the head's output is transformed after the matmul
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return isinstance(head, torch.nn.Linear) and head.bias is None


def _hidden_path_ok(model) -> bool:
    if _is_wrapped(model):
        return False  # DDP/FSDP need their own forward (gradient sync, unsharding)
    lm = _causal_lm(model)
    if not _plain_linear_head(lm) or type(lm.get_output_embeddings()) is not torch.nn.Linear:
        return False
    get_dec = getattr(lm, "get_decoder", None)
    if get_dec is None:
        return False
    dec = get_dec()
    return dec is not None and dec is not lm


# ----------------------------------------------------------------------------------------------
# The log-prob head: per-token log-probs from inside the model's own forward
# ----------------------------------------------------------------------------------------------


class LogprobHead(torch.nn.Linear):
    """The LM head (``lm_head``), able to return per-token log-probs instead of logits.

    It adopts the original head's ``weight`` Parameter (same object, same name ``lm_head.weight``,
    so checkpoints, weight tying and optimizers are unchanged) and is an ``nn.Linear``, so code that
    inspects the head still works. Unarmed, ``forward`` is the plain linear map (generation,
    ``model(...).logits``). Armed with ``labels`` ``[N, T]`` through :meth:`scoring`, its forward
    receives the last hidden states ``[N, T, H]`` from the model's own forward and returns
    per-token log-probs ``[N, T-1]`` fp32 (position t scores ``labels[:, t+1]``; 0 where that label
    is ``-100``), projecting only the response positions, a chunk at a time, through
    :func:`ncakit.logprobs.linear_token_logps` -- the ``[N, T, V]`` logits never exist.

    Why a module swap rather than calling the decoder and the head weight directly (the
    ``"hidden"`` path of :func:`batch_logps`): under DDP the forward must be the wrapper's (gradient
    hooks), under FSDP2 / ZeRO-3 the head's weight is sharded and only gathered by the hooks that
    run when a module's forward is CALLED. Here the model's own forward calls ``self.lm_head(h)``,
    so every wrapper does its usual work and the head sees the full weight.

    The projection runs outside autocast in the weight's dtype (fp32 master weights under mixed
    precision: the small head costs ~2% of a 7B forward), accumulating the logsumexp in fp32.
    """

    def __init__(self, head: torch.nn.Linear, chunk_size: int | None = None):
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"head: expected the model's nn.Linear LM head, got {type(head).__name__}")
        if head.bias is not None:
            raise ValueError("head: a biased LM head is not supported (linear_token_logps has no bias)")
        torch.nn.Module.__init__(self)  # adopt the existing Parameter instead of allocating a new one
        self.in_features = head.in_features
        self.out_features = head.out_features
        self.weight = head.weight
        self.register_parameter("bias", None)
        self.chunk_size = chunk_size
        self._labels: torch.Tensor | None = None
        self._ignore_index = IGNORE_INDEX

    @contextlib.contextmanager
    def scoring(self, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX):
        """Arm the head for one forward: inside the block, the model's output ``.logits`` holds
        per-token log-probs ``[N, T-1]`` for ``labels`` ``[N, T]`` instead of logits."""
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels: expected an int64 tensor of shape [N, T], got {got}")
        if self._labels is not None:
            raise RuntimeError("LogprobHead.scoring: already armed (nested scoring blocks are not supported)")
        self._labels, self._ignore_index = labels, ignore_index
        try:
            yield self
        finally:
            self._labels = None

    @property
    def armed(self) -> bool:
        return self._labels is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        labels = self._labels
        if labels is None:
            return F.linear(hidden, self.weight, self.bias)
        if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
            raise ValueError(
                f"hidden: the armed LogprobHead expected hidden states [N, T, H] with [N, T] = "
                f"{list(labels.shape)} (the labels' shape), got {list(hidden.shape)}; was the model "
                "called with logits_to_keep or on different inputs?"
            )
        labels = labels.to(hidden.device)
        targets = labels[:, 1:]
        mask = targets != self._ignore_index
        seq_idx, pos_idx = mask.nonzero(as_tuple=True)  # response positions only (one host sync)
        weight = self.weight
        h = hidden[:, :-1][seq_idx, pos_idx].to(weight.dtype)
        with torch.autocast(device_type=h.device.type, enabled=False):
            tok = linear_token_logps(h, weight, targets[seq_idx, pos_idx], self.chunk_size)
        out = torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device)
        # index_put (out of place) keeps the result connected to the graph even with no response token
        return out.index_put((seq_idx, pos_idx), tok)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", returns per-token log-probs while armed"


def find_logprob_head(model) -> LogprobHead | None:
    """The installed :class:`LogprobHead` of ``model`` (through peft / DDP / DeepSpeed wrappers), or None."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return head if isinstance(head, LogprobHead) else None


def install_logprob_head(model, chunk_size: int | None = None) -> LogprobHead | None:
    """Swap ``model``'s LM head for a :class:`LogprobHead` (in place) and return it.

    Call it on the plain ``*ForCausalLM`` (or peft model) BEFORE ``accelerator.prepare``. Returns
    None, leaving the model untouched, for models whose logits are not a plain bias-free linear map
    of the last hidden state (softcapping, logit scaling, unknown model types): :func:`batch_logps`
    then uses the chunked logits path. Idempotent.
    """
    existing = find_logprob_head(model)
    if existing is not None:
        return existing
    lm = _causal_lm(model)
    if not _plain_linear_head(lm) or not hasattr(lm, "set_output_embeddings"):
        logger.info(
            "LogprobHead: %s has no plain linear head; using the chunked logits path", type(lm).__name__
        )
        return None
    head = LogprobHead(lm.get_output_embeddings(), chunk_size=chunk_size)
    lm.set_output_embeddings(head)
    return head


def remove_logprob_head(model) -> None:
    """Put a plain ``nn.Linear`` holding the same weight back in place of an installed :class:`LogprobHead`."""
    head = find_logprob_head(model)
    if head is None:
        return
    lm = _causal_lm(model)
    plain = torch.nn.Linear(head.in_features, head.out_features, bias=False, device="meta")
    plain.weight = head.weight
    lm.set_output_embeddings(plain)


def _model_device(model) -> torch.device:
    lm = _causal_lm(model)
    emb = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.device
    return next(model.parameters()).device


def batch_logps(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sequence log-probs ``[B, K]`` of a collated batch under ``model`` (grad follows the caller):
    log π(y_k | x_b) = the SUM of response-token log-probs, prompt and padding masked (MATH.md,
    Notation).

    Args:
        model: a ``*ForCausalLM``, a peft model, or either wrapped by accelerate (DDP/FSDP).
        batch: :class:`ncakit.data.KResponseCollator` output (``input_ids``, ``attention_mask``,
            ``labels`` ``[B*K, T]``, ``mask`` ``[B, K]``); moved to the model's device.
        average: mean instead of sum over response tokens (IPO-style losses).
        path: ``"head"`` runs ``model(...)`` with its installed :class:`LogprobHead` armed
            (works through DDP/FSDP/ZeRO-3 wrappers; no ``[N, T, V]`` logits); ``"hidden"`` runs the
            decoder and projects only response positions through the LM head, chunked
            (:func:`ncakit.logprobs.sequence_logps_from_hidden`; unwrapped models only);
            ``"logits"`` runs ``model(...)`` and uses the chunked
            :func:`ncakit.logprobs.sequence_logps`; ``"auto"`` takes ``"head"`` when a
            :class:`LogprobHead` is installed, else ``"hidden"`` for unwrapped Llama/Mistral/Qwen-style
            models with a plain linear head, else ``"logits"`` (always for DDP/FSDP-wrapped models
            without the head, whose forward must be the wrapper's).

    Returns:
        ``[B, K]`` float32, 0 at masked (padding) responses.
    """
    if path not in ("auto", "head", "hidden", "logits"):
        raise ValueError(f"path: expected 'auto', 'head', 'hidden' or 'logits', got {path!r}")
    for key in ("input_ids", "attention_mask", "labels", "mask"):
        if key not in batch:
            raise ValueError(f"{key}: missing from batch (use ncakit.data.KResponseCollator)")
    mask = batch["mask"]
    B, K = mask.shape
    if batch["input_ids"].shape[0] != B * K:
        raise ValueError(
            f"input_ids: expected {B * K} = B*K rows for mask of shape {list(mask.shape)}, got {batch['input_ids'].shape[0]}"
        )
    device = _model_device(model)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    head = find_logprob_head(model) if path in ("auto", "head") else None
    if path == "head" and head is None:
        raise ValueError("path: 'head' needs a LogprobHead installed (ncakit.refcache.install_logprob_head)")
    if head is not None:
        with head.scoring(labels):
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        tok = out.logits if hasattr(out, "logits") else out[0]  # [N, T-1] per-token log-probs
        # FSDP2 with a bf16 output_dtype casts module outputs to bf16: sum in fp32, never in bf16
        # (a bf16 sequence log-prob near -300 would have a resolution of 2 nats)
        seq = tok.float().sum(dim=-1)
        if average:
            seq = seq / response_lengths(labels).clamp(min=1).to(seq.dtype)
    elif path == "hidden" or (path == "auto" and _hidden_path_ok(model)):
        lm = _causal_lm(model)
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        weight = lm.get_output_embeddings().weight
        seq = sequence_logps_from_hidden(
            hidden.to(weight.dtype), weight, labels, average=average, chunk_size=chunk_size
        )
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out[0]
        seq = sequence_logps(logits, labels, average=average, chunk_size=chunk_size)
    seq = seq.float().view(B, K)
    return seq * mask.to(seq.device)


@contextlib.contextmanager
def _reference_mode(model, *, disable_adapter: bool, eval_mode: bool):
    peft_model = _find_peft(model) if disable_adapter else None
    was_training = model.training
    ctx = peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            if eval_mode:
                model.eval()
            yield
    finally:
        model.train(was_training)


def reference_logps_from_adapter(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    eval_mode: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Reference log-probs ``[B, K]`` from the SAME peft model with its LoRA adapter disabled.

    Runs :func:`batch_logps` under ``torch.no_grad()`` and ``peft_model.disable_adapter()``
    (the base weights alone = the reference μ), in eval mode unless ``eval_mode=False`` (the
    model's train/eval state is restored afterwards). ``model`` may be wrapped by accelerate.
    """
    if _find_peft(model) is None:
        raise TypeError(
            f"model: expected a peft model with disable_adapter() (e.g. get_peft_model(base, LoraConfig(...))), "
            f"got {type(_unwrap(model)).__name__}; without an adapter, precompute the reference instead"
        )
    with _reference_mode(model, disable_adapter=True, eval_mode=eval_mode):
        return batch_logps(model, batch, average=average, path=path, chunk_size=chunk_size).detach()


# ----------------------------------------------------------------------------------------------
# Fingerprints and cache key
# ----------------------------------------------------------------------------------------------


def _hash_int_lists(h, arr: pa.Array) -> None:
    """Feed a (nested) list<int> Arrow array to the hash: lengths at each level, then values, int64."""
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
        h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
        arr = pc.list_flatten(arr)
    h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())


def data_fingerprint(dataset) -> str:
    """SHA-256 of the token ids (``prompt_ids`` and ``response_ids``) of a tokenised dataset or row
    list, so it covers the source data, the tokenizer and the truncation. Same value for a
    ``datasets.Dataset`` and the equal list of dicts."""
    import datasets  # scale extra

    if isinstance(dataset, datasets.Dataset):
        # as an Arrow table, through any select/shuffle indices: hash the rows as they are seen
        table = dataset.select_columns(["prompt_ids", "response_ids"]).with_format("arrow")[:]
        cols = {c: table.column(c).combine_chunks() for c in ("prompt_ids", "response_ids")}
    else:
        rows = list(dataset)
        cols = {
            "prompt_ids": pa.array([list(r["prompt_ids"]) for r in rows], type=pa.list_(pa.int64())),
            "response_ids": pa.array(
                [[list(x) for x in r["response_ids"]] for r in rows], type=pa.list_(pa.list_(pa.int64()))
            ),
        }
    h = hashlib.sha256()
    for name in ("prompt_ids", "response_ids"):
        h.update(name.encode())
        _hash_int_lists(h, cols[name])
    return h.hexdigest()


def _canonical_param_name(name: str) -> str:
    # peft wraps "model.layers.0.q_proj.weight" as "base_model.model.model.layers.0.q_proj.base_layer.weight"
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


def model_fingerprint(model, *, exclude_adapter: bool = True) -> str:
    """SHA-256 over parameter names, shapes, dtypes and bytes (LoRA weights excluded by default,
    and peft's name prefixes removed, so a base model and the same base inside a peft model with
    the adapter disabled get the same value). Reads every weight once: seconds per GB; pass
    ``model_id`` to :func:`precompute_reference_logps` to skip it for hub models."""
    h = hashlib.sha256()
    m = _unwrap(model)
    items = []
    for name, p in m.named_parameters():
        if exclude_adapter and ("lora_" in name or ".modules_to_save." in name):
            continue
        items.append((_canonical_param_name(name), p))
    for name, p in sorted(items, key=lambda kv: kv[0]):
        t = p.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.contiguous().reshape(-1)
        step = max(1, (64 << 20) // max(1, flat.element_size()))  # 64 MiB at a time
        for start in range(0, flat.numel(), step):
            chunk = flat[start : start + step].cpu().view(torch.uint8)
            h.update(chunk.numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary/merges (fast tokenizers), chat template and special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    specials = {k: str(v) for k, v in (getattr(tokenizer, "special_tokens_map", {}) or {}).items()}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def reference_cache_key(components: Mapping[str, Any]) -> str:
    """SHA-256 of the JSON of the key components (sorted keys)."""
    return hashlib.sha256(json.dumps(components, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Precompute pass with a disk cache
# ----------------------------------------------------------------------------------------------


class ReferenceLogps(NamedTuple):
    """``(dataset, info)`` from :func:`precompute_reference_logps`.

    ``info``: ``cache_hit`` (bool), ``cache_path`` (str or None), ``key`` (hex), ``components``
    (what the key hashes), ``rows``, ``sequences``, ``tokens``, ``seconds``, ``sequences_per_s``,
    ``tokens_per_s`` (of the forward pass that made the numbers; on a cache hit, the stored
    values of the run that wrote the cache).
    """

    dataset: Any
    info: dict


def _model_dtype(model) -> str:
    try:
        return str(next(_causal_lm(model).parameters()).dtype)
    except StopIteration:  # pragma: no cover
        return "unknown"


def _rows_of(dataset):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return dataset.select_columns(["prompt_ids", "response_ids", "rewards"])
    return [{k: r[k] for k in ("prompt_ids", "response_ids", "rewards")} for r in dataset]


def _num_responses(dataset) -> np.ndarray:
    import datasets

    if isinstance(dataset, datasets.Dataset):
        col = dataset.select_columns(["response_ids"]).with_format("arrow")[:].column("response_ids")
        return pc.list_value_length(col.combine_chunks()).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray([len(r["response_ids"]) for r in dataset], dtype=np.int64)


def _attach(dataset, values: list[list[float]]):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        if "ref_logps" in dataset.column_names:
            dataset = dataset.remove_columns("ref_logps")
        feature = datasets.List(datasets.Value("float32"))
        return dataset.add_column("ref_logps", values, feature=feature)
    return [{**dict(r), "ref_logps": v} for r, v in zip(dataset, values)]


def _load_cache(path: Path, n_resp: np.ndarray) -> list[list[float]] | None:
    arr_file, meta_file = path / "ref_logps.npy", path / "meta.json"
    if not (arr_file.is_file() and meta_file.is_file()):
        return None
    arr = np.load(arr_file)
    if arr.shape[0] != len(n_resp) or (len(n_resp) and arr.shape[1] < n_resp.max()):
        logger.warning("reference cache %s does not match the dataset's shape; recomputing", path)
        return None
    return [arr[i, : n_resp[i]].tolist() for i in range(len(n_resp))]


def _save_cache(path: Path, values: list[list[float]], meta: dict) -> None:
    kmax = max((len(v) for v in values), default=0)
    arr = np.full((len(values), kmax), np.nan, dtype=np.float32)
    for i, v in enumerate(values):
        arr[i, : len(v)] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        np.save(tmp / "ref_logps.npy", arr)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        try:
            os.replace(tmp, path)  # atomic; another process may have won the race
        except OSError:
            if not (path / "ref_logps.npy").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def precompute_reference_logps(
    model,
    dataset,
    collate_fn: Callable,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    *,
    model_id: str | None = None,
    tokenizer=None,
    key_extra: Mapping[str, Any] | None = None,
    average: bool = False,
    path: str = "auto",
    disable_adapter: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    on_miss: str = "compute",
    model_dtype: str | None = None,
) -> ReferenceLogps:
    """Add a ``ref_logps`` column (K floats per row) of reference sequence log-probs, cached on disk.

    Args:
        model: the reference model (a peft model is run with its adapter disabled unless
            ``disable_adapter=False``). Run this BEFORE wrapping the model for distributed
            training (every process computes the same numbers, or load the cache on all).
        dataset: tokenised rows (``ncakit.data.tokenize_k_dataset`` output, or a list of dicts
            with ``prompt_ids``, ``response_ids``, ``rewards``).
        collate_fn: the collator (``KResponseCollator``); rows are read in order, unshuffled.
        batch_size: prompts per forward pass (B·K sequences).
        cache_dir: folder for the cache (``<cache_dir>/ref_logps-<key[:20]>/``: ``ref_logps.npy``
            ``[rows, K]`` float32 NaN-padded and ``meta.json``); ``None`` disables caching.
        model_id: the model's identity for the key (e.g. ``"org/name@revision"``); by default
            the weights are hashed (:func:`model_fingerprint`).
        tokenizer / key_extra: also hashed into the key (e.g. ``{"max_length": 1024,
            "max_prompt_length": 512}``); the token ids already are, via
            :func:`data_fingerprint`.
        average / path: as in :func:`batch_logps` (``average`` is part of the key).
        overwrite: recompute even when the cache exists.
        model_dtype: the dtype recorded in the key (default: the model's first parameter's).
            Pass the LOADING dtype when the same weights may sit in another dtype in a later run
            (e.g. a ZeRO-3 run reading a cache filled by a plain run: DeepSpeed recasts the weights).
        on_miss: ``"compute"`` (default) runs the forward pass when the cache has no entry;
            ``"raise"`` raises ``FileNotFoundError`` instead (for models that cannot run a forward
            outside their distributed engine, e.g. ZeRO-3-partitioned weights).

    Returns:
        ``ReferenceLogps(dataset_with_ref_logps, info)``.
    """
    if on_miss not in ("compute", "raise"):
        raise ValueError(f"on_miss: expected 'compute' or 'raise', got {on_miss!r}")
    # With the adapter disabled (or none), the reference is the base weights alone; otherwise the
    # LoRA weights are part of the reference and of its identity.
    uses_adapter = _find_peft(model) is not None and not disable_adapter
    if model_id is not None:
        model_key = f"{model_id}+adapter" if uses_adapter else str(model_id)
    else:
        model_key = model_fingerprint(model, exclude_adapter=not uses_adapter)
    components = {
        "format": CACHE_FORMAT,
        "data": data_fingerprint(dataset),
        "model": model_key,
        "dtype": str(model_dtype) if model_dtype is not None else _model_dtype(model),
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "extra": dict(key_extra) if key_extra else None,
        "average": bool(average),
    }
    key = reference_cache_key(components)
    cache_path = Path(cache_dir) / f"ref_logps-{key[:20]}" if cache_dir is not None else None
    n_resp = _num_responses(dataset)
    if cache_path is not None and not overwrite:
        values = _load_cache(cache_path, n_resp)
        if values is not None:
            meta = json.loads((cache_path / "meta.json").read_text())
            info = {**meta.get("run", {}), "cache_hit": True, "cache_path": str(cache_path), "key": key}
            info["components"] = components
            logger.info("reference log-probs: cache hit %s (%d rows)", cache_path, len(values))
            return ReferenceLogps(_attach(dataset, values), info)

    if on_miss == "raise":
        raise FileNotFoundError(
            f"cache_dir: no reference log-probs cached for this data/model/dtype (expected {cache_path}); "
            "fill the cache first (scale/train.py --precompute_reference_only true, on a single-GPU or DDP config)"
        )
    loader = DataLoader(_rows_of(dataset), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    values: list[list[float]] = []
    n_seq = n_tok = 0
    device = _model_device(model)
    iterator = loader
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc="reference log-probs")
        except ImportError:  # pragma: no cover
            pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with _reference_mode(model, disable_adapter=disable_adapter, eval_mode=True):
        for batch in iterator:
            logps = batch_logps(model, batch, average=average, path=path).cpu()
            mask = batch["mask"]
            seq_tokens = batch["attention_mask"].sum(-1).view(mask.shape)
            n_seq += int(mask.sum())
            n_tok += int((seq_tokens * mask).sum())
            for b in range(mask.shape[0]):
                k_b = int(mask[b].sum())
                if not bool(mask[b, :k_b].all()):
                    raise ValueError(
                        "collate_fn: expected each row's responses in the first K_b columns of mask"
                    )
                values.append(logps[b, :k_b].tolist())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if len(values) != len(n_resp) or any(len(v) != n for v, n in zip(values, n_resp)):
        raise ValueError("collate_fn: its output does not line up with the dataset's rows / responses")
    run = {
        "rows": len(values),
        "sequences": n_seq,
        "tokens": n_tok,
        "seconds": seconds,
        "sequences_per_s": n_seq / seconds if seconds > 0 else float("inf"),
        "tokens_per_s": n_tok / seconds if seconds > 0 else float("inf"),
        "device": str(device),
        "batch_size": batch_size,
    }
    logger.info(
        "reference log-probs: %d sequences, %d tokens in %.2fs (%.1f seq/s, %.0f tok/s)",
        n_seq,
        n_tok,
        seconds,
        run["sequences_per_s"],
        run["tokens_per_s"],
    )
    if cache_path is not None:
        _save_cache(cache_path, values, {"key": key, "components": components, "run": run})
    info = {**run, "cache_hit": False, "cache_path": str(cache_path) if cache_path else None, "key": key}
    info["components"] = components
    return ReferenceLogps(_attach(dataset, values), info)
