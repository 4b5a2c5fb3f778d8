"""The policy's log-probs: one forward over a collated batch -> ``[B, K]`` sequence log-probs.

- :func:`batch_logps` -- one forward over a collated batch (:class:`ncakit.scale.data.KResponseCollator`)
  -> ``[B, K]`` sequence log-probs (sum over response tokens, 0 at masked responses), via the
  chunked paths of :mod:`ncakit.logprobs` (never a full ``[N, T, V]`` fp32 log-softmax). The
  reference (:mod:`ncakit.scale.reference`) goes through the same function, so policy and
  reference agree exactly on the same weights.
- :class:`LogprobHead` / :func:`install_logprob_head` -- the model's own LM head swapped for a
  module that, while armed with the labels, returns per-token log-probs of the response positions
  instead of logits. It runs INSIDE the model's forward, so DDP / FSDP2 / ZeRO-3 wrappers see an
  ordinary forward (their hooks gather the head's weight as usual) and the ``[N, T, V]`` logits
  never exist. :func:`batch_logps` takes this path whenever a head is installed.
- :func:`unwrap_model`, :func:`find_peft_model`, :func:`causal_lm`, :func:`model_device` -- reach
  the plain ``*ForCausalLM`` (or the peft model) through DDP / DeepSpeed / ``torch.compile``
  wrappers.

Example::

    install_logprob_head(model)                      # before accelerator.prepare
    policy = batch_logps(model, batch)               # [B, K], with grad
    policy, stats = batch_logps(model, batch, stats=True)   # + TokenStats [B, K] (no grad)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ncakit.logprobs import (
    IGNORE_INDEX,
    TokenStats,
    linear_token_logps,
    response_lengths,
    sequence_logps,
    sequence_logps_from_hidden,
)

__all__ = [
    "LogprobHead",
    "install_logprob_head",
    "remove_logprob_head",
    "find_logprob_head",
    "batch_logps",
    "rows_logps",
    "rows_hidden",
    "resolve_path",
    "fused_batch_loss",
    "per_prompt",
    "check_batch",
    "unwrap_model",
    "find_peft_model",
    "causal_lm",
    "model_device",
]

logger = logging.getLogger(__name__)

# Causal LMs whose forward is exactly lm_head(decoder(...)) with a bias-free linear head, so the
# hidden-state path (no [N, T, V] logits) gives the same numbers as the logits.
HIDDEN_PATH_MODEL_TYPES = {
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
# The model through its wrappers
# ----------------------------------------------------------------------------------------------


def unwrap_model(model):
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


def find_peft_model(model):
    """The peft model inside ``model`` (through wrappers), or None when there is no adapter."""
    m = unwrap_model(model)
    return m if hasattr(m, "disable_adapter") and hasattr(m, "get_base_model") else None


def causal_lm(model):
    """The underlying ``*ForCausalLM`` (through peft and wrappers)."""
    m = unwrap_model(model)
    peft_model = find_peft_model(m)
    return peft_model.get_base_model() if peft_model is not None else m


def _is_wrapped(model) -> bool:
    if model is not unwrap_model(model):
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
    if cfg is None or getattr(cfg, "model_type", None) not in HIDDEN_PATH_MODEL_TYPES:
        return False
    softcap = getattr(cfg, "final_logit_softcapping", None)
    if softcap or getattr(cfg, "logit_scale", None) not in (None, 1):
        return False  # the head's output is transformed after the matmul
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return isinstance(head, torch.nn.Linear) and head.bias is None


def _hidden_path_ok(model) -> bool:
    if _is_wrapped(model):
        return False  # DDP/FSDP need their own forward (gradient sync, unsharding)
    lm = causal_lm(model)
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
        self._want_stats = False
        self.stats: TokenStats | None = None

    @contextlib.contextmanager
    def scoring(self, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, *, stats: bool = False):
        """Arm the head for one forward: inside the block, the model's output ``.logits`` holds
        per-token log-probs ``[N, T-1]`` for ``labels`` ``[N, T]`` instead of logits. ``stats=True``:
        the forward also leaves the :class:`ncakit.logprobs.TokenStats` ``[N]`` of the scored
        tokens in ``head.stats`` (no grad; a side channel, so the model's output is unchanged)."""
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels: expected an int64 tensor of shape [N, T], got {got}")
        if self._labels is not None:
            raise RuntimeError("LogprobHead.scoring: already armed (nested scoring blocks are not supported)")
        self._labels, self._ignore_index, self._want_stats, self.stats = labels, ignore_index, stats, None
        try:
            yield self
        finally:
            self._labels, self._want_stats = None, False

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
            tok = linear_token_logps(
                h, weight, targets[seq_idx, pos_idx], self.chunk_size, stats=self._want_stats
            )
        if self._want_stats:
            tok, per_token = tok
            self.stats = per_token.index_sum(seq_idx, mask.shape[0])
        out = torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device)
        # index_put (out of place) keeps the result connected to the graph even with no response token
        return out.index_put((seq_idx, pos_idx), tok)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", returns per-token log-probs while armed"


def find_logprob_head(model) -> LogprobHead | None:
    """The installed :class:`LogprobHead` of ``model`` (through peft / DDP / DeepSpeed wrappers), or None."""
    lm = causal_lm(model)
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
    lm = causal_lm(model)
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
    lm = causal_lm(model)
    plain = torch.nn.Linear(head.in_features, head.out_features, bias=False, device="meta")
    plain.weight = head.weight
    lm.set_output_embeddings(plain)


def model_device(model) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (else its first parameter)."""
    lm = causal_lm(model)
    emb = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.device
    return next(model.parameters()).device


def resolve_path(model, path: str = "auto") -> str:
    """The path :func:`batch_logps` takes for ``model``: ``"head"`` when a :class:`LogprobHead` is
    installed, else ``"hidden"`` for an unwrapped model with a plain linear head, else ``"logits"``
    (an explicit ``path`` is checked and returned)."""
    if path not in ("auto", "head", "hidden", "logits"):
        raise ValueError(f"path: expected 'auto', 'head', 'hidden' or 'logits', got {path!r}")
    head = find_logprob_head(model) if path in ("auto", "head") else None
    if path == "head" and head is None:
        raise ValueError(
            "path: 'head' needs a LogprobHead installed (ncakit.scale.forward.install_logprob_head)"
        )
    if head is not None:
        return "head"
    if path == "hidden" or (path == "auto" and _hidden_path_ok(model)):
        return "hidden"
    return "logits"


def rows_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
    stats: bool = False,
    model_kwargs: Mapping | None = None,
) -> tuple[torch.Tensor, TokenStats | None]:
    """Per-row sequence log-probs ``[N]`` fp32 of labelled rows ``[N, T]`` (on the model's device)
    and, with ``stats=True``, their :class:`ncakit.logprobs.TokenStats` ``[N]`` (else None): the
    forward of :func:`batch_logps` (its ``path`` rule), without the ``[B, K]`` bookkeeping.
    ``model_kwargs`` go to the forward (``position_ids``, ``past_key_values`` of a cached prompt:
    :mod:`ncakit.scale.prefix`); ``use_cache`` defaults to False."""
    kw = {"use_cache": False, **(model_kwargs or {})}
    path = resolve_path(model, path)
    token_stats = None
    if path == "head":
        head = find_logprob_head(model)
        with head.scoring(labels, stats=stats):
            out = model(input_ids=input_ids, attention_mask=attention_mask, **kw)
        token_stats, head.stats = head.stats, None
        if stats and token_stats is None:
            raise RuntimeError(
                "LogprobHead: armed with stats=True, but the model's forward never called the head"
            )
        tok = out.logits if hasattr(out, "logits") else out[0]  # [N, T-1] per-token log-probs
        # FSDP2 with a bf16 output_dtype casts module outputs to bf16: sum in fp32, never in bf16
        # (a bf16 sequence log-prob near -300 would have a resolution of 2 nats)
        seq = tok.float().sum(dim=-1)
        if average:
            seq = seq / response_lengths(labels).clamp(min=1).to(seq.dtype)
        return seq, token_stats
    if path == "hidden":
        lm = causal_lm(model)
        hidden, weight = _decoder_hidden(lm, input_ids, attention_mask, kw)
        seq = sequence_logps_from_hidden(
            hidden.to(weight.dtype), weight, labels, average=average, chunk_size=chunk_size, stats=stats
        )
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        seq = sequence_logps(logits, labels, average=average, chunk_size=chunk_size, stats=stats)
    if stats:
        seq, token_stats = seq
    return seq.float(), token_stats


def _decoder_hidden(lm, input_ids, attention_mask, kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's last hidden states ``[N, T, H]`` (no LM head) and the LM head's weight."""
    out = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **kw)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden, lm.get_output_embeddings().weight


def rows_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    model_kwargs: Mapping | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's last hidden states at the scored positions of labelled rows ``[N, T]``:
    ``(rows [M, H] in the head's dtype, targets [M], seq_index [M], head weight [V, H])``, rows in
    sequence order (position t predicts ``labels[:, t + 1]``), for :func:`ncakit.fused.fused_head_loss`.
    Unwrapped models with a plain linear head only (the hidden path)."""
    lm = causal_lm(model)
    dec = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if _is_wrapped(model) or not _plain_linear_head(lm) or dec is None or dec is lm:
        raise ValueError(
            "model: the fused head needs an unwrapped Llama / Mistral / Qwen-style model with a plain "
            f"linear LM head (no DDP / FSDP / DeepSpeed wrapper), got {type(model).__name__}"
        )
    kw = {"use_cache": False, **(model_kwargs or {})}
    hidden, weight = _decoder_hidden(lm, input_ids, attention_mask, kw)
    targets = labels.to(hidden.device)[:, 1:]
    seq, pos = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    return hidden[:, :-1][seq, pos].to(weight.dtype), targets[seq, pos], seq, weight


def check_batch(batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(B, K)`` of a :class:`ncakit.scale.data.KResponseCollator` batch, after checking that its
    keys are there and that it holds B*K rows; ValueError naming the key otherwise."""
    for key in ("input_ids", "attention_mask", "labels", "mask"):
        if key not in batch:
            raise ValueError(f"{key}: missing from batch (use ncakit.scale.data.KResponseCollator)")
    B, K = batch["mask"].shape
    if batch["input_ids"].shape[0] != B * K:
        raise ValueError(
            f"input_ids: expected {B * K} = B*K rows for mask of shape {list(batch['mask'].shape)}, "
            f"got {batch['input_ids'].shape[0]}"
        )
    return B, K


def batch_logps(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
    stats: bool = False,
    share_prompt: bool = False,
):
    """Sequence log-probs ``[B, K]`` of a collated batch under ``model`` (grad follows the caller):
    log π(y_k | x_b) = the SUM of response-token log-probs, prompt and padding masked (MATH.md,
    Notation).

    Args:
        model: a ``*ForCausalLM``, a peft model, or either wrapped by accelerate (DDP/FSDP).
        batch: :class:`ncakit.scale.data.KResponseCollator` output (``input_ids``, ``attention_mask``,
            ``labels`` ``[B*K, T]``, ``mask`` ``[B, K]``); moved to the model's device.
        average: mean instead of sum over response tokens (IPO-style losses).
        path: ``"head"`` runs ``model(...)`` with its installed :class:`LogprobHead` armed
            (works through DDP/FSDP/ZeRO-3 wrappers; no ``[N, T, V]`` logits); ``"hidden"`` runs the
            decoder and projects only response positions through the LM head, chunked
            (:func:`ncakit.logprobs.sequence_logps_from_hidden`; unwrapped models only);
            ``"logits"`` runs ``model(...)`` and uses the chunked
            :func:`ncakit.logprobs.sequence_logps`; ``"auto"`` (:func:`resolve_path`) takes
            ``"head"`` when a :class:`LogprobHead` is installed, else ``"hidden"`` for unwrapped
            Llama/Mistral/Qwen-style models with a plain linear head, else ``"logits"`` (always for
            DDP/FSDP-wrapped models without the head, whose forward must be the wrapper's).
        stats: also return the policy's :class:`ncakit.logprobs.TokenStats` ``[B, K]`` (no grad;
            entropy, mean-logit and argmax-hit sums and the count of each response's scored
            tokens, taken from each chunk's logits on every path; 0 at masked responses).
        share_prompt: run each prompt once and reuse its keys/values for its K responses
            (:func:`ncakit.scale.prefix.shared_prompt_logps`: the same numbers to fp32 round-off,
            fewer tokens; refused with one line under reentrant gradient checkpointing or a
            binding sliding window).

    Returns:
        ``[B, K]`` float32, 0 at masked (padding) responses; with ``stats=True``,
        ``(seq_logps, stats)``.
    """
    resolve_path(model, path)
    check_batch(batch)
    if share_prompt:
        from ncakit.scale.prefix import shared_prompt_logps  # prefix builds on this module

        return shared_prompt_logps(
            model, batch, average=average, path=path, chunk_size=chunk_size, stats=stats
        )
    device = model_device(model)
    seq, token_stats = rows_logps(
        model,
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["labels"].to(device),
        average=average,
        path=path,
        chunk_size=chunk_size,
        stats=stats,
    )
    return per_prompt(seq, token_stats, batch["mask"])


def per_prompt(seq: torch.Tensor, token_stats: TokenStats | None, mask: torch.Tensor):
    """Per-row results ``[B*K]`` of :func:`rows_logps` as ``[B, K]``, 0 at masked responses: the
    sequence log-probs, or ``(seq_logps, TokenStats [B, K])`` when ``token_stats`` is given."""
    B, K = mask.shape
    mask = mask.to(seq.device)
    seq = seq.view(B, K) * mask
    if token_stats is None:
        return seq
    return seq, token_stats.apply(lambda v: v.view(B, K)).masked(mask)


def fused_batch_loss(
    model,
    batch: Mapping[str, torch.Tensor],
    ref_logps: torch.Tensor,
    loss,
    *,
    beta: float,
    loss_kwargs: Mapping | None = None,
    average: bool = False,
    validate: bool = True,
    share_prompt: bool = False,
):
    """The registered ``loss`` of a collated batch with the LM head and the loss fused
    (:func:`ncakit.fused.fused_head_loss`, chunked over prompts): the decoder's scored rows
    (:func:`rows_hidden`, or :func:`ncakit.scale.prefix.shared_prompt_hidden` with
    ``share_prompt``), then the fused head. Returns ``(LossOutput, policy_logps [B, K] detached)``;
    no token statistics. Unwrapped models only (single process)."""
    from ncakit.fused import fused_head_loss

    check_batch(batch)
    if share_prompt:
        from ncakit.scale.prefix import shared_prompt_hidden  # prefix builds on this module

        rows, targets, seq_index, weight = shared_prompt_hidden(model, batch)
    else:
        device = model_device(model)
        rows, targets, seq_index, weight = rows_hidden(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["labels"].to(device),
        )
    device = rows.device
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    out, policy = fused_head_loss(
        rows,
        weight,
        targets,
        ref_logps.to(device, acc),
        batch["rewards"].to(device),
        loss,
        beta=beta,
        mask=batch["mask"].to(device),
        loss_kwargs=loss_kwargs,
        seq_index=seq_index,
        average=average,
        validate=validate,
        return_logps=True,
    )
    return out, policy.float()
