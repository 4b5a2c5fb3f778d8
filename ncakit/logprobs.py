"""Token logits (or hidden states) -> per-response sequence log-probs, the inputs of every loss.

The losses take log π(y|x) = Σ_t log π(y_t | x, y_<t) over the RESPONSE tokens only (MATH.md,
notation). Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids``,
prompt and padding positions hold ``ignore_index`` (-100), and the logits at position t predict
the token at t + 1 (the functions shift internally, as ``_get_batch_logps`` in the DPO repo does).

Three paths, same values and gradients (tests check it):

- :func:`token_logps_naive`: ``log_softmax`` + ``gather``. Simple, but it materialises a full
  ``[N, T, V]`` fp32 log-softmax (and its gradient): gigabytes at 32k-128k vocabularies.
- :func:`token_logps` (default ``chunk_size``): gather minus logsumexp, a chunk of tokens at a
  time, through a custom autograd function that saves only the logsumexp per token and
  recomputes the softmax chunk by chunk in the backward pass.
- :func:`sequence_logps_from_hidden`: from the last hidden states and the LM-head weight, so the
  ``[N, T, V]`` logits never exist at all: only response positions are projected, a chunk at a
  time. With a frozen head (LoRA), the hidden-state gradient is formed during the forward pass
  and the backward pass is a single multiply.

Shapes: N sequences (B prompts x K responses, flattened), T tokens, V vocabulary, H hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ncakit.validation import check_int

__all__ = [
    "IGNORE_INDEX",
    "token_logps_naive",
    "token_logps",
    "sequence_logps",
    "sequence_logps_from_hidden",
    "linear_token_logps",
    "response_lengths",
    "auto_chunk_size",
]

IGNORE_INDEX = -100
# Elements of one fp32 [chunk, V] logits block: 2**24 floats = 64 MiB. Chunks of tokens are sized
# from it, so 32k and 128k vocabularies both stay near that working set.
_CHUNK_ELEMENTS = 2**24


def auto_chunk_size(vocab_size: int, budget_elements: int = _CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one fp32 ``[chunk, V]`` block holds about ``budget_elements``."""
    return int(max(16, min(8192, budget_elements // max(1, vocab_size))))


def _check_logits_labels(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> None:
    """Shapes and dtypes, and every label a token id of the vocabulary or ``ignore_index`` (one host sync)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a tensor of shape [N, T, V], got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got {logits.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:2]:
        got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels: expected shape [N, T] = {list(logits.shape[:2])} matching logits, got {got}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"labels: expected an integer (int64) tensor of token ids / {IGNORE_INDEX}, got {labels.dtype}"
        )
    vocab = logits.shape[-1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        where = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"labels: expected token ids in [0, {vocab}) or {ignore_index} (ignored), "
            f"got {labels[tuple(where)].item()} at [n, t] = {where}"
        )


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _shift(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for positions 0..T-2 (the token each position predicts) and their mask."""
    targets = labels[:, 1:]
    mask = targets != ignore_index
    return targets.masked_fill(~mask, 0).long(), mask


def response_lengths(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of scored (response) tokens per sequence ``[N]``: labels != ignore_index after the shift."""
    return (labels[:, 1:] != ignore_index).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# From logits
# --------------------------------------------------------------------------------------------


def token_logps_naive(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-token log-probs ``[N, T-1]`` (0 at ignored positions) by full ``log_softmax`` + ``gather``.

    The reference implementation the lean paths are tested against.
    """
    _check_logits_labels(logits, labels, ignore_index)
    targets, mask = _shift(labels, ignore_index)
    logp = F.log_softmax(logits[:, :-1].to(_acc_dtype(logits)), dim=-1)
    tok = torch.gather(logp, 2, targets.unsqueeze(-1)).squeeze(-1)
    return tok * mask


class _ChunkedLogitsLogps(torch.autograd.Function):
    """logp[i] = z[i, y_i] − logsumexp(z[i]) over rows of a 2-D logits view, chunked over rows.

    Saves the logits (which the caller already holds) and one fp32 logsumexp per row; the
    backward pass recomputes softmax a chunk at a time: dz = g · (onehot(y) − softmax(z)).
    """

    @staticmethod
    def forward(ctx, logits2d, targets, chunk_size):
        n = logits2d.shape[0]
        acc = _acc_dtype(logits2d)
        out = torch.empty(n, dtype=acc, device=logits2d.device)
        lse = torch.empty(n, dtype=acc, device=logits2d.device)
        for start in range(0, n, chunk_size):
            z = logits2d[start : start + chunk_size].to(acc)
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[start : start + chunk_size] = chunk_lse
            out[start : start + chunk_size] = (
                z.gather(1, targets[start : start + chunk_size, None]).squeeze(1) - chunk_lse
            )
        ctx.save_for_backward(logits2d, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits2d, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits2d)
        c = ctx.chunk_size
        for start in range(0, logits2d.shape[0], c):
            g = grad_out[start : start + c].to(lse.dtype)
            d = (
                (logits2d[start : start + c].to(lse.dtype) - lse[start : start + c, None])
                .exp_()
                .mul_(-g[:, None])
            )
            d.scatter_add_(1, targets[start : start + c, None], g[:, None])
            grad[start : start + c] = d
        return grad, None, None


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-token log-probs ``[N, T-1]`` (0 at ignored positions), memory-lean.

    Same values and gradients as :func:`token_logps_naive`, but never holds more than one
    ``[chunk_size, V]`` fp32 block besides the logits themselves and their gradient.
    ``chunk_size`` (tokens) defaults to :func:`auto_chunk_size` of V.
    """
    _check_logits_labels(logits, labels, ignore_index)
    targets, mask = _shift(labels, ignore_index)
    n, t1, v = logits.shape[0], logits.shape[1] - 1, logits.shape[2]
    chunk_size = auto_chunk_size(v) if chunk_size is None else check_int("chunk_size", chunk_size, 1)
    z = logits[:, :-1].reshape(n * t1, v)  # a view when logits are contiguous
    flat = _ChunkedLogitsLogps.apply(z, targets.reshape(-1), int(chunk_size))
    return flat.view(n, t1) * mask


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    naive: bool = False,
) -> torch.Tensor:
    """Sequence log-probs ``[N]``: the sum (or, with ``average=True``, the mean) of response-token
    log-probs, prompt and padding positions masked out via ``ignore_index`` in ``labels``.

    Args:
        logits: ``[N, T, V]`` model outputs; logits[:, t] predicts labels[:, t + 1].
        labels: ``[N, T]`` token ids with ``ignore_index`` at prompt and padding positions.
        average: length-normalise (IPO, SimPO-style losses).
        chunk_size: tokens per chunk of the lean path; ``naive=True`` uses full log_softmax.
    """
    tok = (
        token_logps_naive(logits, labels, ignore_index)
        if naive
        else token_logps(logits, labels, ignore_index, chunk_size)
    )
    total = tok.sum(dim=-1)
    if average:
        return total / response_lengths(labels, ignore_index).clamp(min=1).to(total.dtype)
    return total


# --------------------------------------------------------------------------------------------
# From hidden states + LM-head weight (the logits never exist)
# --------------------------------------------------------------------------------------------


def _addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with an fp32 accumulator, without rounding each chunk's product to bf16 first."""
    if acc.device.type == "cuda" and a.dtype in (torch.bfloat16, torch.float16):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):  # older torch without out_dtype
            pass
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class _LinearLogps(torch.autograd.Function):
    """logp[i] = (h_i·W^T)[y_i] − logsumexp(h_i·W^T), chunked over tokens i.

    Frozen W (no grad): the forward pass stores a_i = W[y_i] − softmax(h_i W^T)·W ``[n, H]`` and
    the backward pass is grad_h = g·a (no recomputation). Trainable W: the forward pass stores only
    the logsumexp; the backward pass recomputes each chunk's logits once for both gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        n = hidden.shape[0]
        dev = hidden.device
        acc = _acc_dtype(hidden)
        out = torch.empty(n, dtype=acc, device=dev)
        lse = torch.empty(n, dtype=acc, device=dev)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        pre = torch.empty_like(hidden) if (need_h and not need_w) else None
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            z = (hidden[sl] @ weight.t()).to(acc)  # logits in the head's dtype, upcast like HF does
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[sl] = chunk_lse
            out[sl] = z.gather(1, targets[sl, None]).squeeze(1) - chunk_lse
            if pre is not None:
                p = z.sub_(chunk_lse[:, None]).exp_().to(weight.dtype)
                pre[sl] = weight[targets[sl]] - p @ weight
        if pre is not None:
            ctx.save_for_backward(pre)
            ctx.mode = "pre"
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.mode = "recompute"
        ctx.chunk_size = chunk_size
        ctx.need = (need_h, need_w)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.mode == "pre":
            (pre,) = ctx.saved_tensors
            return grad_out[:, None].to(pre.dtype) * pre, None, None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.need
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_w else None
        c = ctx.chunk_size
        for start in range(0, hidden.shape[0], c):
            sl = slice(start, start + c)
            g = grad_out[sl].to(lse.dtype)
            h = hidden[sl]
            d = (h @ weight.t()).to(lse.dtype).sub_(lse[sl, None]).exp_().mul_(-g[:, None])
            d.scatter_add_(1, targets[sl, None], g[:, None])
            d = d.to(weight.dtype)
            if need_h:
                grad_h[sl] = d @ weight
            if need_w:
                _addmm_fp32_(grad_w, d.t(), h)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None


def linear_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[targets] for ``hidden [n, H]``, ``weight [V, H]``, ``targets [n]``
    -> ``[n]`` fp32, never materialising more than one ``[chunk_size, V]`` block."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden/weight: expected hidden [n, H] and weight [V, H] with the same H, got {list(hidden.shape)} and {list(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets: expected shape [{hidden.shape[0]}], got {list(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden: expected the head's dtype {weight.dtype}, got {hidden.dtype}")
    chunk_size = (
        auto_chunk_size(weight.shape[0]) if chunk_size is None else check_int("chunk_size", chunk_size, 1)
    )
    return _LinearLogps.apply(hidden, weight, targets.long(), int(chunk_size))


def sequence_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sequence log-probs ``[N]`` from the final hidden states and the LM-head weight.

    Equivalent to ``sequence_logps(hidden @ weight.T, labels)`` (tested), but only the response
    positions are projected, a chunk at a time, so neither the ``[N, T, V]`` logits nor a
    full-vocab log-softmax is ever built.

    Args:
        hidden: ``[N, T, H]`` last hidden states (after the final norm), in the head's dtype.
        weight: ``[V, H]`` the LM head (``model.get_output_embeddings().weight``); no bias.
        labels: ``[N, T]`` token ids with ``ignore_index`` at prompt and padding positions.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected shape [N, T, H], got {list(hidden.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:2]:
        got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels: expected shape [N, T] = {list(hidden.shape[:2])} matching hidden, got {got}"
        )
    n = hidden.shape[0]
    targets = labels[:, 1:]
    mask = targets != ignore_index
    seq_idx, pos_idx = mask.nonzero(as_tuple=True)  # response positions only
    tok = linear_token_logps(hidden[:, :-1][seq_idx, pos_idx], weight, targets[seq_idx, pos_idx], chunk_size)
    total = torch.zeros(n, dtype=tok.dtype, device=hidden.device).index_add(0, seq_idx, tok)
    if average:
        return total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)
    return total
