"""Prompt sharing by K/V reuse: each prompt runs once, its keys/values serve its K responses.

:func:`shared_prompt_logps` computes the same ``[B, K]`` sequence log-probs (and token statistics)
as :func:`ncakit.scale.forward.batch_logps` over a :class:`ncakit.scale.data.KResponseCollator`
batch (tested to fp32 round-off, values and parameter gradients), but runs the model over

    B prompts, all but their last token (once)  +  B*K rows [last prompt token, response]

instead of B*K full ``prompt + response`` rows. ``batch_logps(..., share_prompt=True)`` and the
training script's ``prompt_sharing`` option (``scale/train.py``) call it.

How a collated batch is split (rows are right-padded, prompt-major, row ``b*K + k``):

- a row's prompt is the positions before its first label that is not ``-100`` (at least 1 token);
  its response span runs from there to its last scored label (``-100`` labels inside the span are
  fed but not scored, as in the unshared path). The K rows of a prompt must carry the same prompt
  tokens and attention (checked); a padding (masked) response has no label and scores exactly 0.
- prompt pass: prompt b's first ``Lp_b - 1`` tokens, right-padded to ``Tq``, position ids
  ``0..Tq-1`` (each token at its unshared position), ``use_cache=True`` into a fresh full
  (non-sliding) ``DynamicCache``; its outputs are not needed (an armed
  :class:`ncakit.scale.forward.LogprobHead` with no label, ``logits_to_keep=1`` or the decoder only).
  Right padding means no query row is fully masked (a prompt of one token gets a dummy attended
  query here, hidden from the responses).
- the cache is expanded K times along the batch with ``repeat_interleave`` (differentiable: the
  gradients of the K responses sum back into the prompt's keys/values and through them into the
  prompt pass).
- response pass: row n = ``[last prompt token, response span]`` right-padded to ``Tr``, labels
  ``-100`` on the first token and on padding, attention mask ``[prompt attention | prompt padding
  (0) | row attention]`` over ``Tq + Tr`` keys, position ids ``Lp_b - 1 + j`` (exactly the unshared
  row's positions; the cache index ``Tq + j`` only orders causality). Position 0 (the last prompt
  token) predicts the first response token, as in the unshared row; so the response pass is an
  ordinary labelled forward, and every path of :func:`ncakit.scale.forward.rows_logps` applies to
  it unchanged: the installed log-prob head (through DDP / FSDP2 / ZeRO-3 wrappers), the hidden
  path, the logits path; token statistics; ``average``.
- gradient checkpointing (non-reentrant, the training script's and QLoRA's): HF's checkpointed
  layers drop ``past_key_values`` unless their flag ``_can_checkpoint_with_cache`` says the cache is
  safe to replay, which is set for the two passes: the prompt pass's cache layers store on the first
  ``update`` only (the recomputation in the backward gets its own keys/values back), the response
  pass's are read only (the prompt's keys/values followed by the new ones, nothing stored), so every
  recomputed layer sees what its forward saw.

Limits (refused with one line each; ``prompt_sharing: auto`` in the training script resolves to off
in these cases, saying why): reentrant gradient checkpointing (``use_reentrant: true`` hides the
cache from the recomputed layers); a sliding window shorter than ``Tq + Tr`` (the window would count
right-padded cache indices, not positions; where the window never binds, Mistral is exact).

Example::

    policy = shared_prompt_logps(model, batch)            # [B, K], with grad
    with torch.no_grad():
        ref = shared_prompt_logps(ref_model, batch)        # the reference
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from ncakit.logprobs import IGNORE_INDEX
from ncakit.scale.forward import (
    HIDDEN_PATH_MODEL_TYPES,
    causal_lm,
    check_batch,
    find_logprob_head,
    model_device,
    per_prompt,
    resolve_path,
    rows_hidden,
    rows_logps,
)

__all__ = [
    "shared_prompt_logps",
    "shared_prompt_hidden",
    "split_prompt_responses",
    "PromptSplit",
    "check_sharable",
    "resolve_prompt_sharing",
]


class PromptSplit:
    """A collated batch split into B prompt heads and B*K response rows (all tensors on one device).

    Attributes:
        k: responses per prompt.
        prompt_lengths: ``[B]`` real prompt tokens (>= 1).
        prompt_ids / prompt_attention: ``[B, Tq]`` the prompts without their last token,
            right-padded (``Tq = max Lp - 1``, possibly 0); the attention of the prompt pass
            (a dummy 1 at column 0 of a 1-token prompt).
        cache_attention: ``[B, Tq]`` the same columns as the responses see them (no dummy).
        response_ids / response_attention / response_labels / response_positions: ``[B*K, Tr]``
            rows ``[last prompt token, response span]``, right-padded; labels ``-100`` on the first
            token, on padding, and wherever the batch had ``-100`` inside the span.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return (
            f"PromptSplit(B={self.prompt_ids.shape[0]}, K={self.k}, Tq={self.prompt_ids.shape[1]}, "
            f"Tr={self.response_ids.shape[1]})"
        )


def split_prompt_responses(batch: Mapping[str, torch.Tensor], device=None) -> PromptSplit:
    """Split a :class:`ncakit.scale.data.KResponseCollator` batch into prompt heads and response rows
    (see the module docstring). Raises ValueError when the K rows of a prompt disagree on it."""
    B, K = check_batch(batch)
    input_ids = batch["input_ids"].to(device)
    attention = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    N, T = input_ids.shape
    if labels.shape != (N, T) or attention.shape != (N, T):  # check_batch checked N = B*K
        raise ValueError(
            f"input_ids: expected [B*K, T] = [{B * K}, T] rows (with labels/attention_mask alike) for "
            f"mask of shape {list(batch['mask'].shape)}, got {list(input_ids.shape)}"
        )
    dev = input_ids.device
    has = labels != IGNORE_INDEX
    has_any = has.any(dim=1)
    ar = torch.arange(T, device=dev)
    first = torch.where(has, ar, T).min(dim=1).values  # first scored index (T when none)
    last = torch.where(has, ar, -1).max(dim=1).values  # last scored index (-1 when none)
    # A label at position 0 is never scored (nothing predicts it): the prompt has >= 1 token.
    row_lp = first.clamp(min=1, max=T)
    row_lp_bk, has_any_bk = row_lp.view(B, K), has_any.view(B, K)
    # The prompt of b: from its first row with a response (else a 1-token dummy from row b*K).
    any_b = has_any_bk.any(dim=1)
    src_k = torch.where(any_b, has_any_bk.float().argmax(dim=1), 0)
    src = torch.arange(B, device=dev) * K + src_k
    lp = torch.where(any_b, row_lp_bk.gather(1, src_k[:, None]).squeeze(1), 1)
    bad = has_any_bk & (row_lp_bk != lp[:, None])
    if bool(bad.any()):
        b, k = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"labels: the rows of prompt {b} disagree on its length ({int(row_lp_bk[b, k])} vs "
            f"{int(lp[b])}); prompt sharing needs the K rows of a prompt to share its tokens"
        )
    Tp = int(lp.max())
    in_prompt = ar[None, :Tp] < lp[:, None]  # [B, Tp]
    full_ids = torch.where(in_prompt, input_ids[src, :Tp], input_ids[src, :1].expand(-1, Tp))
    full_att = attention[src, :Tp] * in_prompt
    # every real row's prompt tokens / attention must equal its prompt's
    rows_p = in_prompt.repeat_interleave(K, dim=0) & has_any[:, None]
    same = (input_ids[:, :Tp] == full_ids.repeat_interleave(K, dim=0)) & (
        attention[:, :Tp] == full_att.repeat_interleave(K, dim=0)
    )
    if bool((rows_p & ~same).any()):
        n = int((rows_p & ~same).any(dim=1).nonzero()[0])
        raise ValueError(
            f"input_ids: row {n} does not repeat the tokens/attention of prompt {n // K}; prompt sharing "
            "needs the K rows of a prompt to share its tokens"
        )
    # prompt pass: all but the last prompt token
    Tq = Tp - 1
    cache_att = full_att[:, :Tq] * (ar[None, :Tq] < (lp - 1)[:, None])
    prompt_att = cache_att
    if Tq > 0:
        empty = lp == 1  # nothing of this prompt is cached: one dummy attended query, never seen
        if bool(empty.any()):
            prompt_att = cache_att.clone()
            prompt_att[empty, 0] = 1
    # response rows: [last prompt token, response span], from the row itself (or, for a masked
    # slot, its prompt's source row: the last prompt token only)
    start = (lp - 1).repeat_interleave(K)  # [N]
    end = torch.where(has_any, last + 1, start + 1)
    length = end - start  # >= 1
    Tr = int(length.max())
    rowsrc = torch.where(has_any, torch.arange(N, device=dev), src.repeat_interleave(K))
    jr = torch.arange(Tr, device=dev)
    inside = jr[None, :] < length[:, None]  # [N, Tr]
    idx = (start[:, None] + jr[None, :]).clamp(max=T - 1)
    resp_ids = torch.where(inside, input_ids[rowsrc].gather(1, idx), input_ids[rowsrc, :1])
    resp_att = torch.where(inside, attention[rowsrc].gather(1, idx), 0)
    resp_att[:, 0] = torch.where(has_any, resp_att[:, 0], 1)  # a masked slot's query: attended
    resp_labels = torch.where(inside & has_any[:, None], labels.gather(1, idx), IGNORE_INDEX)
    resp_labels[:, 0] = IGNORE_INDEX  # the last prompt token: predicted from the cache, never scored
    return PromptSplit(
        k=K,
        prompt_lengths=lp,
        prompt_ids=full_ids[:, :Tq],
        prompt_attention=prompt_att.to(attention.dtype),
        cache_attention=cache_att.to(attention.dtype),
        response_ids=resp_ids,
        response_attention=resp_att.to(attention.dtype),
        response_labels=resp_labels,
        response_positions=start[:, None] + jr[None, :],
    )


def _reentrant(module) -> bool:
    """Whether ``module``'s checkpoint function (HF's ``functools.partial(checkpoint, ...)``) is reentrant."""
    fn = getattr(module, "_gradient_checkpointing_func", None)
    kw = getattr(fn, "keywords", None) or {}
    return bool(kw.get("use_reentrant", fn is not None and not kw))


class _PromptLayer:
    """Mixin of the prompt pass's cache layers: the first ``update`` stores the prompt's keys/values
    (as DynamicLayer does); a later one is the recomputation of a checkpointed layer in the backward,
    which gets its own keys/values back and stores nothing (the stored ones were already used)."""

    def update(self, key_states, value_states, *args, **kwargs):
        if getattr(self, "_stored", False):
            return key_states, value_states
        self._stored = True
        return super().update(key_states, value_states, *args, **kwargs)


class _PrefixLayer:
    """Mixin of the response pass's cache layers: read only. ``update`` returns the prompt's
    keys/values followed by the new ones and stores nothing, so the recomputation of a checkpointed
    layer in the backward sees exactly what its forward saw."""

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _layer_classes():
    from transformers.cache_utils import DynamicLayer

    prompt = type("PromptCacheLayer", (_PromptLayer, DynamicLayer), {})
    prefix = type("PrefixCacheLayer", (_PrefixLayer, DynamicLayer), {})
    return prompt, prefix


class _CacheThroughCheckpoints:
    """Let HF's checkpointed decoder layers keep ``past_key_values`` (their class flag
    ``_can_checkpoint_with_cache``, meant for layers that only read the cache; here the prompt
    layers' writes are idempotent and the response layers' read only) for the two passes."""

    def __init__(self, lm):
        self.layers = [m for m in lm.modules() if getattr(m, "gradient_checkpointing", False) is True]

    def __enter__(self):
        self.saved = [m.__dict__.get("_can_checkpoint_with_cache") for m in self.layers]
        for m in self.layers:
            m._can_checkpoint_with_cache = True
        return self

    def __exit__(self, *exc):
        for m, v in zip(self.layers, self.saved):
            if v is None:
                m.__dict__.pop("_can_checkpoint_with_cache", None)
            else:
                m._can_checkpoint_with_cache = v
        return False


def check_sharable(model, total_len: int | None = None, *, training: bool | None = None) -> str | None:
    """Why ``model`` cannot share prompts (one line), or None when it can. ``total_len``: cache
    indices of the response pass (``Tq + Tr``); ``training``: the mode the forward runs in (default:
    the model's own)."""
    lm = causal_lm(model)
    training = lm.training if training is None else training
    if training and any(
        _reentrant(m) for m in lm.modules() if getattr(m, "gradient_checkpointing", False) is True
    ):
        return (
            "prompt sharing is not supported with reentrant gradient checkpointing (use_reentrant: true "
            "hides the prompt's keys and values from the recomputed layers); use the default use_reentrant: false"
        )
    cfg = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "model_type", None) in ("qwen2", "qwen2_moe") and not getattr(
        cfg, "use_sliding_window", False
    ):
        window = None
    if window is not None and total_len is not None and total_len >= int(window):
        return (
            f"sliding window {window} <= prompt + response length {total_len}: prompt sharing "
            "would window over padded cache indices"
        )
    return None


#: attention implementations prompt sharing is tested with (``auto`` turns it on for these only)
TESTED_ATTENTION = ("eager", "sdpa")


def resolve_prompt_sharing(setting, model, *, k: int, max_cache_len: int) -> dict:
    """What ``prompt_sharing: auto | true | false`` means for this run: ``{"setting", "policy",
    "reference", "reason"}`` -- whether the policy's training forward and the no-grad forwards
    (reference, evaluation; eval mode) share prompts, and why not where they do not.

    ``auto`` is on for K >= 2, a model type of the hidden path's list (Llama, Mistral, Qwen2 ...)
    with eager or sdpa attention and a sliding window longer than ``max_cache_len`` (the response
    pass's cache indices can reach ``max_prompt_length + max_length``); the policy's forward is off
    under reentrant gradient checkpointing (``use_reentrant: true``), the no-grad forwards stay on.
    ``True`` raises the reason (one line) where ``auto`` would turn it off."""
    if setting not in ("auto", True, False):
        raise ValueError(f"prompt_sharing: expected auto, true or false, got {setting!r}")
    out = {"setting": setting, "policy": False, "reference": False, "reason": None}
    if setting is False:
        out["reason"] = "prompt_sharing: false"
        return out
    lm = causal_lm(model)
    cfg = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    attn = getattr(lm.config, "_attn_implementation", None)
    reason = check_sharable(model, max_cache_len, training=False)
    if reason is None and setting == "auto":
        if k < 2:
            reason = f"K = {k}: no prompt has several responses to share it"
        elif getattr(cfg, "model_type", None) not in HIDDEN_PATH_MODEL_TYPES:
            reason = (
                f"model type {getattr(cfg, 'model_type', None)!r} is not one prompt sharing is tested with"
            )
        elif attn not in TESTED_ATTENTION:
            reason = (
                f"attention {attn!r} is not one prompt sharing is tested with ({', '.join(TESTED_ATTENTION)})"
            )
    if reason is not None:
        if setting is True:
            raise ValueError(f"prompt_sharing: true, but {reason}; use prompt_sharing: auto or false")
        out["reason"] = reason
        return out
    out["reference"] = True
    policy_reason = check_sharable(model, max_cache_len, training=True)
    if policy_reason is not None:
        if setting is True:
            raise ValueError(f"prompt_sharing: true, but {policy_reason}; use prompt_sharing: auto or false")
        out["reason"] = f"policy forward unshared: {policy_reason}"
        return out
    out["policy"] = True
    return out


def _response_pass(model, batch, path: str):
    """Run the prompt pass; return the split and the response pass's keyword arguments (with the
    expanded cache), and the resolved path."""
    path = resolve_path(model, path)  # a bad path fails before the split
    device = model_device(model)
    sp = split_prompt_responses(batch, device)
    K = sp.k
    B, Tq = sp.prompt_ids.shape
    Tr = sp.response_ids.shape[1]
    reason = check_sharable(model, Tq + Tr)
    if reason is not None:
        raise ValueError(f"model: {reason}; use batch_logps without share_prompt")
    kwargs = dict(position_ids=sp.response_positions, use_cache=True)
    if Tq == 0:  # every prompt is one token: nothing to cache
        return sp, dict(kwargs, attention_mask=sp.response_attention), path, None, contextlib.nullcontext()

    from transformers import DynamicCache

    prompt_layer, prefix_layer = _layer_classes()
    cache = DynamicCache()  # full layers: no sliding-window cropping of the prompt
    cache.layer_class_to_replicate = prompt_layer
    through = _CacheThroughCheckpoints(causal_lm(model))
    prompt = dict(
        input_ids=sp.prompt_ids,
        attention_mask=sp.prompt_attention,
        position_ids=torch.arange(Tq, device=device).expand(B, Tq),
        past_key_values=cache,
        use_cache=True,
    )
    with through:
        if path == "head":  # the model's own forward (wrappers' hooks), the head armed with no label
            head = find_logprob_head(model)
            with head.scoring(torch.full_like(sp.prompt_ids, IGNORE_INDEX)):
                out = model(**prompt)
        elif path == "hidden":
            out = causal_lm(model).get_decoder()(**prompt)
        else:
            out = model(**prompt, logits_to_keep=1)
    if getattr(out, "past_key_values", None) is not None:
        cache = out.past_key_values
    if cache.get_seq_length() != Tq or not all(isinstance(layer, prompt_layer) for layer in cache.layers):
        raise RuntimeError(
            f"model: the prompt pass cached {cache.get_seq_length()} positions, expected {Tq} "
            "(a model or wrapper that drops or replaces past_key_values?)"
        )
    prefix = DynamicCache()  # the response pass's: the prompt's keys/values repeated K times, read only
    for layer in cache.layers:
        ro = prefix_layer()
        ro.lazy_initialization(layer.keys, layer.values)
        ro.keys = layer.keys.repeat_interleave(K, dim=0) if K > 1 else layer.keys
        ro.values = layer.values.repeat_interleave(K, dim=0) if K > 1 else layer.values
        prefix.layers.append(ro)
    prefix.layer_class_to_replicate = None
    cache = prefix
    att = torch.cat([sp.cache_attention.repeat_interleave(K, dim=0), sp.response_attention], dim=1)
    # The prompt pass's output (zeros from the armed head, one logit row, or the last hidden state),
    # added to the result times 0: its backward then enters the prompt pass through the model's
    # output, as FSDP2 and ZeRO-3 need (their pre-backward hooks, which gather each layer's weights
    # again, sit on module outputs; the keys and values alone would reach the last layer ungathered).
    anchor = out.logits if hasattr(out, "logits") else out[0]
    return sp, dict(kwargs, attention_mask=att, past_key_values=cache), path, anchor, through


def shared_prompt_logps(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
    stats: bool = False,
):
    """Sequence log-probs ``[B, K]`` of a collated batch, each prompt run once and its keys/values
    reused by its K responses. Same numbers as :func:`ncakit.scale.forward.batch_logps` (sum of
    response-token log-probs; with ``average=True`` the mean; 0 at masked responses); gradients
    follow the caller (``torch.no_grad`` for a reference).

    Args:
        model: a Llama / Mistral / Qwen-style ``*ForCausalLM``, a peft model around one, either
            wrapped by accelerate (DDP / FSDP2 / DeepSpeed: take the installed log-prob head).
        batch: :class:`ncakit.scale.data.KResponseCollator` output (moved to the model's device).
        path / chunk_size / stats: as in :func:`ncakit.scale.forward.batch_logps`.

    Returns:
        ``[B, K]`` float32; with ``stats=True``, ``(seq_logps, TokenStats [B, K])``.
    """
    sp, kwargs, path, anchor, through = _response_pass(model, batch, path)
    with through:
        seq, token_stats = rows_logps(
            model,
            sp.response_ids,
            kwargs.pop("attention_mask"),
            sp.response_labels,
            average=average,
            path=path,
            chunk_size=chunk_size,
            stats=stats,
            model_kwargs=kwargs,
        )
    if anchor is not None and torch.is_grad_enabled():
        seq = seq + 0.0 * anchor.float().sum()
    return per_prompt(seq, token_stats, batch["mask"])


def shared_prompt_hidden(model, batch: Mapping[str, torch.Tensor]):
    """The scored rows of the response pass for the fused head: ``(rows [M, H], targets [M],
    seq_index [M], head weight [V, H])`` -- :func:`ncakit.scale.forward.rows_hidden` of the shared
    forward (unwrapped models only, as the hidden path)."""
    sp, kwargs, _, _, through = _response_pass(model, batch, "hidden")  # unwrapped: no anchor needed
    with through:
        return rows_hidden(
            model, sp.response_ids, kwargs.pop("attention_mask"), sp.response_labels, model_kwargs=kwargs
        )
