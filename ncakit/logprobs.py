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

Token statistics (``stats=True`` on :func:`sequence_logps`, :func:`sequence_logps_from_hidden`,
:func:`linear_token_logps`): while each chunk's logits exist, three no-grad per-token quantities
are taken from them at the cost of a few elementwise passes (no extra matmul, autograd untouched):
the entropy of the next-token distribution H = lse(z) − Σ softmax(z)·z, the mean logit over the
vocabulary Σ z / V, and whether argmax z is the target. They come back summed per sequence with
the token count, as a :class:`TokenStats` (TRL's ``entropy``, ``logits/*`` and
``mean_token_accuracy`` metrics are ratios of such sums; see :func:`ncakit.metrics.token_metrics`).

Shapes: N sequences (B prompts x K responses, flattened), T tokens, V vocabulary, H hidden size.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ncakit.validation import check_int

__all__ = [
    "IGNORE_INDEX",
    "TokenStats",
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


@dataclasses.dataclass
class TokenStats:
    """No-grad per-token statistics of the policy's next-token distributions, summed over the
    scored (response) tokens of each sequence. Every field has the same shape (``[N]`` per
    sequence, ``[B, K]`` per response, ``[n]`` per token where each "sequence" is one token):

    - ``entropy_sum``: Σ_t H(softmax(z_t)) in nats, fp32;
    - ``logit_sum``: Σ_t mean_v z_t[v] (the mean logit over the vocabulary), fp32;
    - ``top1``: Σ_t [argmax_v z_t[v] == y_t] (first index on ties, as ``torch.argmax``), int64;
    - ``tokens``: the number of scored tokens, int64.
    """

    entropy_sum: torch.Tensor
    logit_sum: torch.Tensor
    top1: torch.Tensor
    tokens: torch.Tensor

    def items(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def apply(self, fn) -> TokenStats:
        """``fn`` applied to every field (``.view(B, K)``, ``.to(device)``, masking)."""
        return TokenStats(**{k: fn(v) for k, v in self.items().items()})

    def masked(self, mask: torch.Tensor) -> TokenStats:
        """Zero where ``mask`` (same shape, bool) is False."""
        return self.apply(lambda v: v.masked_fill(~mask.to(v.device), 0))

    def index_sum(self, index: torch.Tensor, n: int) -> TokenStats:
        """Per-token stats ``[m]`` -> per-group sums ``[n]`` (row i added to group ``index[i]``)."""
        return self.apply(lambda v: torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, index, v))

    def row_sum(self, mask: torch.Tensor) -> TokenStats:
        """Per-position stats ``[N, T]`` -> per-sequence sums ``[N]`` over positions where ``mask``."""
        return self.apply(lambda v: v.masked_fill(~mask, 0).sum(dim=-1))


@torch.no_grad()
def _chunk_stats(
    z: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, scratch: torch.Tensor, inplace: bool = False
) -> tuple[TokenStats, torch.Tensor]:
    """Per-token :class:`TokenStats` of one logits block ``z [c, V]`` (its logsumexp ``lse [c]``).

    ``scratch``: a ``[c, V]`` buffer reused from chunk to chunk (a fresh 64 MiB block per pass
    would cost more than the passes themselves on CPU). ``inplace=False``: ``z`` is read only (it
    may be a view of the caller's logits) and H = lse − Σ softmax·z; ``inplace=True``: ``z`` is a
    fresh block, overwritten, H = −Σ p·log p, and the softmax p is returned (in ``scratch``)."""
    mean = z.mean(dim=-1)
    top1 = (z.max(dim=-1).indices == targets).long()  # the first maximal index, as argmax
    if inplace:
        logp = z.sub_(lse[:, None])
        p = torch.exp(logp, out=scratch)
        entropy = logp.mul_(p).sum(dim=-1).neg_()
    else:
        p = torch.sub(z, lse[:, None], out=scratch).exp_().mul_(z)  # p·z
        entropy = lse - p.sum(dim=-1)
        p = None
    return TokenStats(entropy, mean, top1, torch.ones_like(top1)), p


def _stats_buffers(n: int, dtype: torch.dtype, device) -> TokenStats:
    f = torch.zeros(n, dtype=dtype, device=device)
    i = torch.zeros(n, dtype=torch.long, device=device)
    return TokenStats(f, f.clone(), i, i.clone())


def _store(buf: TokenStats | None, sl: slice, chunk: TokenStats) -> None:
    for k, v in chunk.items().items():
        getattr(buf, k)[sl] = v


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
    ``sink``: a list, or None; given a list, the forward appends the per-row :class:`TokenStats`.
    """

    @staticmethod
    def forward(ctx, logits2d, targets, chunk_size, sink=None):
        n = logits2d.shape[0]
        acc = _acc_dtype(logits2d)
        out = torch.empty(n, dtype=acc, device=logits2d.device)
        lse = torch.empty(n, dtype=acc, device=logits2d.device)
        stats = _stats_buffers(n, acc, logits2d.device) if sink is not None else None
        scratch = None
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            z = logits2d[sl].to(acc)  # may be a view of the logits: never written to
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[sl] = chunk_lse
            out[sl] = z.gather(1, targets[sl, None]).squeeze(1) - chunk_lse
            if stats is not None:
                scratch = torch.empty_like(z) if scratch is None else scratch[: z.shape[0]]
                _store(stats, sl, _chunk_stats(z, chunk_lse, targets[sl], scratch)[0])
        if sink is not None:
            sink.append(stats)
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
        return grad, None, None, None


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    *,
    stats: bool = False,
):
    """Per-token log-probs ``[N, T-1]`` (0 at ignored positions), memory-lean.

    Same values and gradients as :func:`token_logps_naive`, but never holds more than one
    ``[chunk_size, V]`` fp32 block besides the logits themselves and their gradient.
    ``chunk_size`` (tokens) defaults to :func:`auto_chunk_size` of V. ``stats=True``: returns
    ``(token log-probs, TokenStats [N])`` (sums over each sequence's scored tokens).
    """
    _check_logits_labels(logits, labels, ignore_index)
    targets, mask = _shift(labels, ignore_index)
    n, t1, v = logits.shape[0], logits.shape[1] - 1, logits.shape[2]
    chunk_size = auto_chunk_size(v) if chunk_size is None else check_int("chunk_size", chunk_size, 1)
    z = logits[:, :-1].reshape(n * t1, v)  # a view when logits are contiguous
    sink: list | None = [] if stats else None
    flat = _ChunkedLogitsLogps.apply(z, targets.reshape(-1), int(chunk_size), sink)
    tok = flat.view(n, t1) * mask
    if not stats:
        return tok
    return tok, sink[0].apply(lambda x: x.view(n, t1)).row_sum(mask)


@torch.no_grad()
def _full_logits_stats(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> TokenStats:
    """:class:`TokenStats` ``[N]`` from the whole ``[N, T, V]`` logits at once (the naive path)."""
    targets, mask = _shift(labels, ignore_index)
    z = logits[:, :-1].to(_acc_dtype(logits))
    n, t1, v = z.shape
    flat = z.reshape(n * t1, v)
    lse = torch.logsumexp(flat, dim=-1)
    per_tok, _ = _chunk_stats(flat, lse, targets.reshape(-1), torch.empty_like(flat))
    return per_tok.apply(lambda x: x.view(n, t1)).row_sum(mask)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    naive: bool = False,
    stats: bool = False,
):
    """Sequence log-probs ``[N]``: the sum (or, with ``average=True``, the mean) of response-token
    log-probs, prompt and padding positions masked out via ``ignore_index`` in ``labels``.

    Args:
        logits: ``[N, T, V]`` model outputs; logits[:, t] predicts labels[:, t + 1].
        labels: ``[N, T]`` token ids with ``ignore_index`` at prompt and padding positions.
        average: length-normalise (IPO, SimPO-style losses).
        chunk_size: tokens per chunk of the lean path; ``naive=True`` uses full log_softmax.
        stats: also return the :class:`TokenStats` ``[N]`` (no grad): ``(seq_logps, stats)``.
    """
    token_stats = None
    if naive:
        tok = token_logps_naive(logits, labels, ignore_index)
        if stats:
            token_stats = _full_logits_stats(logits, labels, ignore_index)
    elif stats:
        tok, token_stats = token_logps(logits, labels, ignore_index, chunk_size, stats=True)
    else:
        tok = token_logps(logits, labels, ignore_index, chunk_size)
    total = tok.sum(dim=-1)
    if average:
        total = total / response_lengths(labels, ignore_index).clamp(min=1).to(total.dtype)
    return (total, token_stats) if stats else total


# --------------------------------------------------------------------------------------------
# From hidden states + LM-head weight (the logits never exist)
# --------------------------------------------------------------------------------------------


def addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
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
    ``sink``: a list, or None; given a list, the forward appends the per-token :class:`TokenStats`.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, sink=None):
        n = hidden.shape[0]
        dev = hidden.device
        acc = _acc_dtype(hidden)
        out = torch.empty(n, dtype=acc, device=dev)
        lse = torch.empty(n, dtype=acc, device=dev)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        pre = torch.empty_like(hidden) if (need_h and not need_w) else None
        stats = _stats_buffers(n, acc, dev) if sink is not None else None
        scratch = None
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            z = (hidden[sl] @ weight.t()).to(acc)  # logits in the head's dtype, upcast like HF does
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[sl] = chunk_lse
            out[sl] = z.gather(1, targets[sl, None]).squeeze(1) - chunk_lse
            if stats is not None:  # z is a fresh block: its softmax is the one `pre` needs
                scratch = torch.empty_like(z) if scratch is None else scratch[: z.shape[0]]
                chunk_stats, p = _chunk_stats(z, chunk_lse, targets[sl], scratch, inplace=True)
                _store(stats, sl, chunk_stats)
            elif pre is not None:
                p = z.sub_(chunk_lse[:, None]).exp_()
            if pre is not None:
                pre[sl] = weight[targets[sl]] - p.to(weight.dtype) @ weight
        if sink is not None:
            sink.append(stats)
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
            return grad_out[:, None].to(pre.dtype) * pre, None, None, None, None
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
                addmm_fp32_(grad_w, d.t(), h)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None


def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    *,
    stats: bool = False,
):
    """log softmax(hidden @ weight.T)[targets] for ``hidden [n, H]``, ``weight [V, H]``, ``targets [n]``
    -> ``[n]`` fp32, never materialising more than one ``[chunk_size, V]`` block. ``stats=True``:
    ``(log-probs [n], TokenStats [n])``, the statistics of each token alone (no grad)."""
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
    sink: list | None = [] if stats else None
    tok = _LinearLogps.apply(hidden, weight, targets.long(), int(chunk_size), sink)
    return (tok, sink[0]) if stats else tok


def sequence_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    stats: bool = False,
):
    """Sequence log-probs ``[N]`` from the final hidden states and the LM-head weight.

    Equivalent to ``sequence_logps(hidden @ weight.T, labels)`` (tested), but only the response
    positions are projected, a chunk at a time, so neither the ``[N, T, V]`` logits nor a
    full-vocab log-softmax is ever built.

    Args:
        hidden: ``[N, T, H]`` last hidden states (after the final norm), in the head's dtype.
        weight: ``[V, H]`` the LM head (``model.get_output_embeddings().weight``); no bias.
        labels: ``[N, T]`` token ids with ``ignore_index`` at prompt and padding positions.
        stats: also return the :class:`TokenStats` ``[N]`` (no grad): ``(seq_logps, stats)``.
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
    tok = linear_token_logps(
        hidden[:, :-1][seq_idx, pos_idx], weight, targets[seq_idx, pos_idx], chunk_size, stats=stats
    )
    if stats:
        tok, per_token = tok
    total = torch.zeros(n, dtype=tok.dtype, device=hidden.device).index_add(0, seq_idx, tok)
    if average:
        total = total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)
    return (total, per_token.index_sum(seq_idx, n)) if stats else total
