"""Prompt sharing by K/V reuse: each prompt runs once, its keys/values serve its K responses.

:func:`shared_prompt_logps` computes the same ``[B, K]`` sequence log-probs as
:func:`ncakit.scale.forward.batch_logps` over a :class:`ncakit.scale.data.KResponseCollator` batch
(tested to fp32 round-off, values and parameter gradients), but runs the decoder over

    B prompts  (once)  +  B*K responses (against the cached prompt)

instead of B*K full ``prompt + response`` sequences.

How a collated batch is split (rows are right-padded, prompt-major, row ``b*K + k``):

- a row's prompt is the positions before its first label that is not ``-100`` (at least 1 token);
  its response span runs from there to its last scored label (``-100`` labels inside the span are
  fed but not scored, as in the unshared path). The K rows of a prompt must carry the same prompt
  tokens and attention (checked); a padding (masked) response has no label and scores exactly 0.
- prompt pass: the B prompts right-padded to ``Tp`` with their own attention mask and position ids
  ``0..Tp-1`` (a prompt token sits at the same position as in the unshared row), ``use_cache=True``
  into a fresh full (non-sliding) ``DynamicCache``. Right padding means no query row is fully
  masked (no NaN from an all-masked softmax).
- the cache is expanded K times along the batch with ``repeat_interleave`` (differentiable: the
  gradients of the K responses sum back into the prompt's keys/values and through them into the
  prompt pass).
- response pass: the B*K response spans right-padded to ``Tr``, ``past_key_values`` = the expanded
  cache, attention mask ``[prompt attention | prompt padding (0) | response attention]`` over
  ``Tp + Tr`` keys, position ids ``Lp_b + j`` (continuing after each prompt's REAL length, exactly
  the unshared row's positions; the cache index ``Tp + j`` is only used for causality).
- the first response token is predicted by the LAST real prompt position, whose final hidden state
  (or logits) comes from the prompt pass, repeated K times; response token ``j + 1`` is predicted by
  response position ``j``. All scored positions go through one chunked projection.

Paths: ``"hidden"`` runs the decoder (``get_decoder()``) and projects only the scored positions
through the LM head weight (:func:`ncakit.logprobs.linear_token_logps`; unwrapped Llama / Mistral /
Qwen-style models with a plain bias-free linear head, LoRA included); ``"logits"`` runs the full
``model(...)`` (its logits, chunked log-softmax of the scored rows only); ``"auto"`` picks
``"hidden"`` when it applies.

Limits (refused with one line each): gradient checkpointing in training mode (HF drops
``past_key_values`` inside checkpointed layers); a sliding window shorter than ``Tp + Tr`` (the
window would count right-padded cache indices, not positions; at the tiny test lengths the window
never binds, so Mistral is exact there).

Example::

    policy = shared_prompt_logps(model, batch)            # [B, K], with grad
    with torch.no_grad():
        ref = shared_prompt_logps(ref_model, batch)        # the reference
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ncakit.logprobs import IGNORE_INDEX, linear_token_logps
from ncakit.scale.forward import HIDDEN_PATH_MODEL_TYPES, causal_lm, model_device, unwrap_model

__all__ = ["shared_prompt_logps", "split_prompt_responses", "PromptSplit"]

_LOGITS_CHUNK = 2048  # scored rows per log-softmax block on the logits path


class PromptSplit:
    """A collated batch split into B prompts and B*K response spans (all tensors on one device).

    Attributes:
        prompt_ids / prompt_attention: ``[B, Tp]`` right-padded prompts (attention 0 on padding).
        prompt_lengths: ``[B]`` real prompt tokens (>= 1).
        response_ids / response_attention / response_labels: ``[B*K, Tr]`` right-padded response
            spans; labels ``-100`` on padding (and wherever the batch had ``-100`` inside the span).
        first_labels: ``[B*K]`` the first response token (scored from the last prompt position),
            ``-100`` for a row with no response.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return (
            f"PromptSplit(B={self.prompt_ids.shape[0]}, K={self.k}, Tp={self.prompt_ids.shape[1]}, "
            f"Tr={self.response_ids.shape[1]})"
        )


def split_prompt_responses(batch: Mapping[str, torch.Tensor], device=None) -> PromptSplit:
    """Split a :class:`ncakit.scale.data.KResponseCollator` batch into prompts and response spans
    (see the module docstring). Raises ValueError when the K rows of a prompt disagree on it."""
    for key in ("input_ids", "attention_mask", "labels", "mask"):
        if key not in batch:
            raise ValueError(f"{key}: missing from batch (use ncakit.scale.data.KResponseCollator)")
    mask = batch["mask"]
    B, K = mask.shape
    input_ids = batch["input_ids"].to(device)
    attention = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    N, T = input_ids.shape
    if N != B * K or labels.shape != (N, T) or attention.shape != (N, T):
        raise ValueError(
            f"input_ids: expected [B*K, T] = [{B * K}, T] rows (with labels/attention_mask alike) for "
            f"mask of shape {list(mask.shape)}, got {list(input_ids.shape)}"
        )
    dev = input_ids.device
    has = labels != IGNORE_INDEX
    has_any = has.any(dim=1)
    ar = torch.arange(T, device=dev)
    first = torch.where(has, ar, T).min(dim=1).values  # first scored index (T when none)
    last = torch.where(has, ar, -1).max(dim=1).values  # last scored index (-1 when none)
    # A label at position 0 is never scored (nothing predicts it): the prompt has >= 1 token.
    row_lp = first.clamp(min=1, max=T)
    end = torch.where(has_any, last + 1, row_lp)
    row_lp, end, has_any_bk = row_lp.view(B, K), end.view(B, K), has_any.view(B, K)
    # The prompt of b: from its first row with a response (else a 1-token dummy from row b*K).
    src_k = torch.where(has_any_bk.any(dim=1), has_any_bk.float().argmax(dim=1), 0)
    src = torch.arange(B, device=dev) * K + src_k
    lp = torch.where(has_any_bk.any(dim=1), row_lp.gather(1, src_k[:, None]).squeeze(1), 1)
    bad = has_any_bk & (row_lp != lp[:, None])
    if bool(bad.any()):
        b, k = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"labels: the rows of prompt {b} disagree on its length ({int(row_lp[b, k])} vs "
            f"{int(lp[b])}); prompt sharing needs the K rows of a prompt to share its tokens"
        )
    Tp = int(lp.max())
    in_prompt = ar[None, :Tp] < lp[:, None]  # [B, Tp]
    prompt_ids = torch.where(in_prompt, input_ids[src, :Tp], input_ids[src, :1].expand(-1, Tp))
    prompt_att = attention[src, :Tp] * in_prompt
    # a prompt none of whose rows has a response (every slot masked): its 1-token dummy is attended,
    # so no query of the prompt pass is fully masked (NaN in some kernels)
    none = ~has_any_bk.any(dim=1)
    if bool(none.any()):
        prompt_att = prompt_att.clone()
        prompt_att[none, 0] = 1
    # every real row's prompt tokens / attention must equal its prompt's
    rows_p = in_prompt.repeat_interleave(K, dim=0) & has_any[:, None]
    same = (input_ids[:, :Tp] == prompt_ids.repeat_interleave(K, dim=0)) & (
        attention[:, :Tp] == prompt_att.repeat_interleave(K, dim=0)
    )
    if bool((rows_p & ~same).any()):
        n = int((rows_p & ~same).any(dim=1).nonzero()[0])
        raise ValueError(
            f"input_ids: row {n} does not repeat the tokens/attention of prompt {n // K}; prompt sharing "
            "needs the K rows of a prompt to share its tokens"
        )
    lr = (end - row_lp).view(N).clamp(min=0)  # response span lengths (0 for masked rows)
    Tr = max(int(lr.max()), 1)
    start = lp.repeat_interleave(K)  # [N]
    jr = torch.arange(Tr, device=dev)
    in_resp = jr[None, :] < lr[:, None]  # [N, Tr]
    idx = (start[:, None] + jr[None, :]).clamp(max=T - 1)
    resp_ids = torch.where(in_resp, input_ids.gather(1, idx), prompt_ids[:, :1].repeat_interleave(K, dim=0))
    resp_att = torch.where(in_resp, attention.gather(1, idx), 0)
    resp_labels = torch.where(in_resp, labels.gather(1, idx), IGNORE_INDEX)
    first_labels = torch.where(lr > 0, resp_labels[:, 0], IGNORE_INDEX)
    return PromptSplit(
        k=K,
        prompt_ids=prompt_ids,
        prompt_attention=prompt_att.to(attention.dtype),
        prompt_lengths=lp,
        response_ids=resp_ids,
        response_attention=resp_att.to(attention.dtype),
        response_labels=resp_labels,
        first_labels=first_labels,
    )


def _hidden_path_applies(model) -> bool:
    if unwrap_model(model) is not model or type(model).__name__ in ("FullyShardedDataParallel",):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(model, FSDPModule):
            return False
    except ImportError:  # pragma: no cover
        pass
    lm = causal_lm(model)
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in HIDDEN_PATH_MODEL_TYPES:
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1):
        return False
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    dec = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    return isinstance(head, torch.nn.Linear) and head.bias is None and dec is not None and dec is not lm


def _check_supported(lm, total_len: int) -> None:
    checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in lm.modules())
    if checkpointing and lm.training:
        raise ValueError(
            "model: prompt sharing is not supported with gradient checkpointing in training mode "
            "(HF drops past_key_values inside checkpointed layers); use batch_logps"
        )
    cfg = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "model_type", None) in ("qwen2", "qwen2_moe") and not getattr(
        cfg, "use_sliding_window", False
    ):
        window = None
    if window is not None and total_len >= int(window):
        raise ValueError(
            f"model: sliding window {window} <= prompt + response length {total_len}: prompt sharing "
            "would window over padded cache indices; use batch_logps"
        )


def _score_rows(rows: torch.Tensor, targets: torch.Tensor, head_weight, chunk_size) -> torch.Tensor:
    """log p(targets) for scored rows: hidden states (with ``head_weight``) or logits (None)."""
    if head_weight is not None:
        with torch.autocast(device_type=rows.device.type, enabled=False):
            return linear_token_logps(rows.to(head_weight.dtype), head_weight, targets, chunk_size)
    out = []
    step = chunk_size or _LOGITS_CHUNK
    for i in range(0, rows.shape[0], step):
        lg = rows[i : i + step].float()
        out.append(lg.gather(1, targets[i : i + step, None]).squeeze(1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float32)


def shared_prompt_logps(
    model,
    batch: Mapping[str, torch.Tensor],
    *,
    average: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sequence log-probs ``[B, K]`` of a collated batch, each prompt run once and its keys/values
    reused by its K responses. Same numbers as :func:`ncakit.scale.forward.batch_logps` (sum of
    response-token log-probs; with ``average=True`` the mean; 0 at masked responses); gradients
    follow the caller (``torch.no_grad`` for a reference).

    Args:
        model: a Llama / Mistral / Qwen-style ``*ForCausalLM`` or a peft model around one.
        batch: :class:`ncakit.scale.data.KResponseCollator` output (moved to the model's device).
        path: ``"hidden"`` (decoder + chunked head on scored positions), ``"logits"`` (the model's
            own forward and logits), ``"auto"`` (hidden when it applies).
        chunk_size: rows per projection / log-softmax block.

    Returns:
        ``[B, K]`` float32.
    """
    if path not in ("auto", "hidden", "logits"):
        raise ValueError(f"path: expected 'auto', 'hidden' or 'logits', got {path!r}")
    device = model_device(model)
    sp = split_prompt_responses(batch, device)
    B, K = batch["mask"].shape
    N = B * K
    Tp, Tr = sp.prompt_ids.shape[1], sp.response_ids.shape[1]
    lm = causal_lm(model)
    _check_supported(lm, Tp + Tr)
    use_hidden = path == "hidden" or (path == "auto" and _hidden_path_applies(model))

    from transformers import DynamicCache

    cache = DynamicCache()  # full layers: no sliding-window cropping of the prompt
    prompt_pos = torch.arange(Tp, device=device).expand(B, Tp)
    last = (sp.prompt_lengths - 1).clamp(min=0)  # [B]
    if use_hidden:
        runner = lm.get_decoder()
        weight = lm.get_output_embeddings().weight
        out = runner(
            input_ids=sp.prompt_ids,
            attention_mask=sp.prompt_attention,
            position_ids=prompt_pos,
            past_key_values=cache,
            use_cache=True,
        )
        h_prompt = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        last_rows = h_prompt[torch.arange(B, device=device), last]  # [B, H]
    else:
        weight = None
        keep = torch.unique(last)
        out = model(
            input_ids=sp.prompt_ids,
            attention_mask=sp.prompt_attention,
            position_ids=prompt_pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        lg = out.logits if hasattr(out, "logits") else out[0]  # [B, len(keep), V]
        col = torch.searchsorted(keep, last)
        last_rows = lg[torch.arange(B, device=device), col]  # [B, V]
    if getattr(out, "past_key_values", None) is not None:
        cache = out.past_key_values
    if cache.get_seq_length() != Tp:
        raise RuntimeError(
            f"model: the prompt pass cached {cache.get_seq_length()} positions, expected {Tp} "
            "(a model or wrapper that drops past_key_values?)"
        )
    if K > 1:
        cache.batch_repeat_interleave(K)

    resp_att = torch.cat([sp.prompt_attention.repeat_interleave(K, dim=0), sp.response_attention], dim=1)
    resp_pos = sp.prompt_lengths.repeat_interleave(K)[:, None] + torch.arange(Tr, device=device)[None, :]
    kwargs = dict(
        input_ids=sp.response_ids,
        attention_mask=resp_att,
        position_ids=resp_pos,
        past_key_values=cache,
        use_cache=True,
    )
    if use_hidden:
        out = runner(**kwargs)
        resp_rows = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    else:
        out = model(**kwargs)
        resp_rows = out.logits if hasattr(out, "logits") else out[0]

    # scored rows: the last prompt position (first response token), then response positions j -> j+1
    first_ok = sp.first_labels != IGNORE_INDEX
    first_n = first_ok.nonzero(as_tuple=True)[0]
    targets = sp.response_labels[:, 1:]
    seq_idx, pos_idx = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    rows = torch.cat([last_rows.repeat_interleave(K, dim=0)[first_n], resp_rows[:, :-1][seq_idx, pos_idx]])
    tgt = torch.cat([sp.first_labels[first_n], targets[seq_idx, pos_idx]])
    tok = _score_rows(rows, tgt, weight, chunk_size)
    owner = torch.cat([first_n, seq_idx])
    seq = torch.zeros(N, dtype=tok.dtype, device=tok.device).index_add(0, owner, tok)
    if average:
        count = torch.zeros(N, dtype=tok.dtype, device=tok.device).index_add(0, owner, torch.ones_like(tok))
        seq = seq / count.clamp(min=1)
    seq = seq.float().view(B, K)
    return seq * batch["mask"].to(seq.device)
