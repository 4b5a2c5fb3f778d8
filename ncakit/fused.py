"""A fused LM head + loss: the per-prompt loss computed inside the head, chunked over prompts.

Opt-in, for a trainable LM head (it also runs with a frozen one): ``fused_loss_head: true`` in
``scale/train.py`` (through :func:`ncakit.scale.forward.fused_batch_loss`). Where
:func:`ncakit.logprobs.sequence_logps_from_hidden` followed by a loss keeps only the logsumexp in its
forward and recomputes every chunk's logits in the backward (4 [tokens x V x H] matmuls), the
fused head has the loss at hand while a chunk's logits exist, so it forms the gradients at once,
as Liger's fused linear preference losses do:

for each chunk (all response tokens of one or a few consecutive prompts, at most ``chunk_tokens``):

1. logits z = h W^T, their logsumexp, token log-probs z[y] - lse, sequence log-probs ``[b, K]``;
2. the registered loss on that chunk's ``[b, K]`` rows (with its reference log-probs, rewards,
   mask and per-prompt keyword tensors), and, by autograd on that small loss, g = dL/d logps;
3. dz = g (onehot(y) - softmax z) in place in z, grad_hidden = dz W for the chunk's rows and
   grad_weight += dz^T h (fp32 accumulator).

So 3 matmuls per token as the naive head, one ``[chunk_tokens, V]`` block at a time. A single
prompt with more response tokens than ``chunk_tokens`` is split into blocks of ``chunk_tokens``
tokens; then the logits of its blocks are recomputed in a second pass (4 matmuls for that prompt),
so the memory bound holds for every batch.

**The loss must be per-prompt**: row b of ``loss [B]`` may depend on prompt b's inputs only, or
the chunks would not add up to the batch. The registry has no field saying so, so
:func:`check_per_prompt` probes it: the loss on a small random batch must equal, in value and
gradient, the loss on each prompt alone. Every call runs the (cached) probe; a loss that fails it,
or that cannot be called on a chunk (an unregistered function, a keyword tensor that is not one
row per prompt), is refused with a one-line ``ValueError`` naming the loss.

**Backward** (``grad_output`` of the ``[B]`` loss): the forward computed the gradients of
Σ_b loss_b. Each hidden row belongs to one prompt, so its gradient is scaled by that prompt's
``grad_output[b]``: exact for any ``grad_output``. The weight gradient is a sum over prompts, so it
is exact only when ``grad_output`` is the same for every prompt -- ``loss.mean()`` (1/B each) and
``loss.sum()`` (1 each), i.e. how every ncakit trainer reduces the loss; it is then scaled by that
common value. Any other ``grad_output`` (a weighted sum, ``loss[:2].sum()`` ...) with a trainable
head raises a one-line ``RuntimeError`` instead of returning a wrong gradient.

Memory: besides one ``[chunk_tokens, V]`` block, the forward keeps grad_hidden of the response rows
``[M, H]`` and an fp32 grad_weight ``[V, H]`` until the backward (the saved tensors).

Shapes: B prompts with K responses each, N = B K sequences (sequence n = b K + k, as
``policy_logps.view(B, K)``), T tokens, V vocabulary, H hidden size, M response tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch

from ncakit.logprobs import IGNORE_INDEX, addmm_fp32_, auto_chunk_size
from ncakit.losses import LossOutput
from ncakit.registry import CALL_ARGUMENTS, LossSpec, check_loss_kwargs
from ncakit.variants import resolve_loss

__all__ = ["fused_head_loss", "check_per_prompt", "fused_chunk_tokens", "FUSED_CHUNK_ELEMENTS"]

#: Elements of the one ``[chunk_tokens, V]`` fp32 logits block the default chunk allows: 2**25
#: floats = 128 MiB (1048 tokens at V = 32000, 261 at V = 128256).
FUSED_CHUNK_ELEMENTS = 2**25

_PROBE_CACHE: dict[tuple, str | None] = {}


def fused_chunk_tokens(vocab_size: int, budget_elements: int = FUSED_CHUNK_ELEMENTS) -> int:
    """The default ``chunk_tokens``: tokens whose fp32 ``[tokens, V]`` block holds ``budget_elements``."""
    return auto_chunk_size(vocab_size, budget_elements)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Which losses the fused head can compute chunk by chunk
# --------------------------------------------------------------------------------------------


def _probe_tensor(t: torch.Tensor, b: int, gen: torch.Generator) -> torch.Tensor:
    shape = (b, *t.shape[1:])
    if t.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if t.is_floating_point():
        return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(t.dtype)
    return torch.randint(1, 6, shape, generator=gen).to(t.dtype)


def check_per_prompt(
    loss, loss_kwargs: Mapping[str, object] | None = None, *, beta: float = 0.1, k: int | None = None
) -> str | None:
    """Whether ``loss`` (a registered name or function) is per-prompt: ``None`` if it is, else the
    reason in a few words. Probe: on a random float64 batch of 4 prompts (K = ``k``; default 2
    pairwise, 3 K-way),
    with the given keyword arguments (keyword tensors replaced by random ones of 4 rows), the loss
    and the gradient w.r.t. the policy log-probs of the whole batch must equal those of each prompt
    computed alone. Tested on every registered loss in ``tests/test_fused_head.py``."""
    spec = resolve_loss(loss)
    kwargs = dict(loss_kwargs or {})
    beta = float(kwargs.pop("beta", beta))
    k = (2 if spec.pairwise else 3) if k is None else int(k)
    key = (
        spec.name,
        beta,
        k,
        tuple(
            sorted(
                (k, ("tensor", v.dtype, tuple(v.shape[1:])) if isinstance(v, torch.Tensor) else repr(v))
                for k, v in kwargs.items()
            )
        ),
    )
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    gen = torch.Generator().manual_seed(1234)
    b = 4
    # log-probs < 0 and rewards in (0, 1): valid inputs of every registered loss (ASFT wants P <= 1,
    # SPPO win probabilities)
    pol = -5 * torch.rand(b, k, generator=gen, dtype=torch.float64) - 0.1
    ref = -5 * torch.rand(b, k, generator=gen, dtype=torch.float64) - 0.1
    rew = torch.rand(b, k, generator=gen, dtype=torch.float64)
    if spec.pairwise:
        rew = torch.sort(rew, dim=-1, descending=True).values
    rew = rew if (spec.needs_rewards or spec.pairwise) else None
    probe_kw = {
        n: (_probe_tensor(v, b, gen) if isinstance(v, torch.Tensor) else v) for n, v in kwargs.items()
    }

    @torch.enable_grad()  # also when called under no_grad (an evaluation loop)
    def run(rows: slice):
        p = pol[rows].clone().requires_grad_(True)
        kw = {n: (v[rows] if isinstance(v, torch.Tensor) else v) for n, v in probe_kw.items()}
        out = spec.fn(p, ref[rows], None if rew is None else rew[rows], beta=beta, **kw)
        (g,) = torch.autograd.grad(out.loss.sum(), p, allow_unused=True)
        return out.loss.detach(), (torch.zeros_like(p) if g is None else g)

    reason = None
    try:
        whole = run(slice(0, b))
        parts = [run(slice(i, i + 1)) for i in range(b)]
    except (TypeError, ValueError, RuntimeError) as err:
        reason = f"it cannot be probed on a small batch ({type(err).__name__}: {str(err).splitlines()[0]})"
    else:
        for a, c in zip(whole, (torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts]))):
            if a.shape != c.shape or not torch.allclose(a, c, rtol=1e-9, atol=1e-12, equal_nan=True):
                reason = "its per-prompt loss rows depend on other prompts (the batch is coupled)"
                break
    _PROBE_CACHE[key] = reason
    return reason


def _resolve(loss, loss_kwargs, beta: float, batch: int, k: int) -> tuple[LossSpec, float, dict]:
    """The loss's spec, β, and its keyword arguments; a one-line ``ValueError`` naming the loss if the
    fused head cannot compute it chunk by chunk."""
    try:
        spec = resolve_loss(loss)
    except ValueError as err:
        raise ValueError(f"fused_head_loss: cannot fuse {str(err).removeprefix('loss: ')}") from None
    kwargs = dict(loss_kwargs or {})
    params = inspect.signature(spec.fn).parameters
    tensors, plain = {}, {}
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            if name in CALL_ARGUMENTS or name not in params:
                raise ValueError(f"fused_head_loss: loss {spec.name!r} takes no keyword tensor {name!r}")
            if value.dim() == 0 or value.shape[0] != batch:
                raise ValueError(
                    f"fused_head_loss: loss {spec.name!r} is refused: keyword tensor {name!r} has shape "
                    f"{list(value.shape)}, not one row per prompt ([{batch}, ...]), so it cannot be split by chunk"
                )
            tensors[name] = value
        else:
            plain[name] = value
    plain = check_loss_kwargs(spec.name, plain, where="loss_kwargs")
    beta = float(plain.pop("beta", beta))
    reason = check_per_prompt(spec.name, {**plain, **tensors}, beta=beta, k=k)
    if reason is not None:
        raise ValueError(f"fused_head_loss: loss {spec.name!r} is refused: {reason}")
    return spec, beta, {**plain, **tensors}


# --------------------------------------------------------------------------------------------
# The fused autograd function
# --------------------------------------------------------------------------------------------


def _chunks(prompt_tokens: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive prompt ranges [p0, p1) whose response tokens sum to <= budget (at least one prompt)."""
    out, p0, total = [], 0, 0
    for p, n in enumerate(prompt_tokens):
        if p > p0 and total + n > budget:
            out.append((p0, p))
            p0, total = p, 0
        total += n
    if prompt_tokens:
        out.append((p0, len(prompt_tokens)))
    return out


class _FusedHeadLoss(torch.autograd.Function):
    """rows [M, H] (response positions, grouped by sequence n = b K + k, in order), weight [V, H],
    targets [M], seq [M] (the sequence of each row) -> loss [B], implicit rewards [B, K], weights [B, K].
    See the module docstring; ``plan`` carries everything that is not a tensor input."""

    @staticmethod
    def forward(ctx, rows, weight, targets, seq, ref_logps, rewards, mask, lens, plan):
        spec, beta, kwargs, chunk_tokens, validate = plan
        B, K = ref_logps.shape
        dev = rows.device
        acc = _acc(rows)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_grad = need_h or need_w
        grad_rows = torch.empty_like(rows) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=dev) if need_w else None
        tokens_per_seq = torch.bincount(seq, minlength=B * K)
        seq_start = torch.zeros(B * K + 1, dtype=torch.long)
        seq_start[1:] = torch.cumsum(tokens_per_seq.cpu(), 0)
        prompt_tokens = tokens_per_seq.view(B, K).sum(-1).tolist()
        losses, rhat, wts, logps = [], [], [], []
        for p0, p1 in _chunks(prompt_tokens, chunk_tokens):
            r0, r1 = int(seq_start[p0 * K]), int(seq_start[p1 * K])
            local = seq[r0:r1] - p0 * K
            blocks = [(s, min(s + chunk_tokens, r1)) for s in range(r0, r1, chunk_tokens)]
            keep = len(blocks) == 1  # the chunk's logits fit in one block: kept for the gradient
            tok = torch.empty(r1 - r0, dtype=acc, device=dev)
            lse = torch.empty(r1 - r0, dtype=acc, device=dev)
            z = sumexp = None
            for s, e in blocks:
                # lse = m + log Σ exp(z - m) with exp(z - m) formed in place: no second [c, V] block
                # (torch.logsumexp allocates one), and the softmax of a kept block is z / sumexp.
                z = (rows[s:e] @ weight.t()).to(acc)
                z_y = z.gather(1, targets[s:e, None]).squeeze(1)
                m = z.amax(dim=-1)
                sumexp = z.sub_(m[:, None]).exp_().sum(dim=-1)
                lse[s - r0 : e - r0] = m + sumexp.log()
                tok[s - r0 : e - r0] = z_y - lse[s - r0 : e - r0]
                if not keep:
                    z = None
            nb = (p1 - p0) * K
            seq_logps = torch.zeros(nb, dtype=acc, device=dev).index_add_(0, local, tok)
            if lens is not None:
                seq_logps = seq_logps / lens[p0 * K : p1 * K]
            logps.append(seq_logps.detach())
            with torch.enable_grad():
                pol = seq_logps.view(p1 - p0, K).detach().requires_grad_(need_grad)
                out = spec.fn(
                    pol,
                    ref_logps[p0:p1],
                    None if rewards is None else rewards[p0:p1],
                    beta=beta,
                    mask=None if mask is None else mask[p0:p1],
                    validate=validate,
                    **{n: (v[p0:p1] if isinstance(v, torch.Tensor) else v) for n, v in kwargs.items()},
                )
                g = None
                if need_grad and out.loss.requires_grad:
                    (g,) = torch.autograd.grad(out.loss.sum(), pol, allow_unused=True)
            losses.append(out.loss.detach())
            rhat.append(out.implicit_rewards.detach())
            wts.append(out.weights.detach())
            if not need_grad:
                continue
            g = torch.zeros(nb, dtype=acc, device=dev) if g is None else g.reshape(nb).to(acc)
            if lens is not None:
                g = g / lens[p0 * K : p1 * K]
            g_tok = g[local]
            for s, e in blocks:
                gt = g_tok[s - r0 : e - r0]
                if z is not None:  # the kept block holds exp(z - m): dz = g (onehot - exp(z - m) / sumexp)
                    d = z.mul_((-gt / sumexp)[:, None])
                else:  # recomputed: dz = g (onehot - exp(z - lse))
                    z = (rows[s:e] @ weight.t()).to(acc)
                    d = z.sub_(lse[s - r0 : e - r0, None]).exp_().mul_(-gt[:, None])
                d.scatter_add_(1, targets[s:e, None], gt[:, None])
                d = d.to(weight.dtype)
                z = None
                if need_h:
                    torch.mm(d, weight, out=grad_rows[s:e])
                if need_w:
                    addmm_fp32_(grad_w, d.t(), rows[s:e])
                del d
        loss = torch.cat(losses) if losses else ref_logps.new_zeros(0, dtype=acc)
        ctx.save_for_backward(
            grad_rows if need_h else None, grad_w if need_w else None, seq if need_h else None
        )
        ctx.K = K
        ctx.used = False
        ctx.weight_dtype = weight.dtype
        ir, w = torch.cat(rhat), torch.cat(wts)
        pol = torch.cat(logps).view(B, K) if logps else ref_logps.new_zeros(0, K, dtype=acc)
        ctx.mark_non_differentiable(ir, w, pol)
        ctx.set_materialize_grads(True)
        return loss, ir, w, pol

    @staticmethod
    def backward(ctx, grad_loss, _grad_ir, _grad_w, _grad_pol):
        if ctx.used:
            raise RuntimeError(
                "fused_head_loss: backward runs once (its saved gradients are scaled in place)"
            )
        ctx.used = True
        grad_rows, grad_w, seq = ctx.saved_tensors
        gh = gw = None
        if grad_rows is not None:
            per_row = grad_loss.to(grad_rows.dtype)[seq // ctx.K]  # each row's own prompt: exact
            gh = grad_rows.mul_(per_row[:, None])  # in place: no second [M, H] buffer
        if grad_w is not None:
            g0 = grad_loss.reshape(-1)[:1]
            if grad_loss.numel() > 1 and not bool((grad_loss == g0).all()):
                raise RuntimeError(
                    "fused_head_loss: the weight gradient is summed over prompts in the forward, so the "
                    "backward needs the same grad_output for every prompt (loss.mean() or loss.sum()); "
                    "reduce the [B] loss that way or use sequence_logps_from_hidden + the loss"
                )
            gw = grad_w.mul_(g0.to(grad_w.dtype)).to(ctx.weight_dtype)  # in place: no second [V, H]
        return gh, gw, None, None, None, None, None, None, None


def fused_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_logps: torch.Tensor,
    rewards: torch.Tensor | None,
    loss: str | Callable[..., LossOutput],
    *,
    beta: float = 0.1,
    mask: torch.Tensor | None = None,
    loss_kwargs: Mapping[str, object] | None = None,
    chunk_tokens: int | None = None,
    seq_index: torch.Tensor | None = None,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    validate: bool = True,
    return_logps: bool = False,
) -> LossOutput | tuple[LossOutput, torch.Tensor]:
    """LM head + sequence log-probs + a registered per-prompt loss, fused and chunked over prompts.

    Equal (values and gradients, tested) to::

        logps = sequence_logps_from_hidden(hidden, weight, labels, average=average).view(B, K)
        get_loss(loss)(logps, ref_logps, rewards, beta=beta, mask=mask, **loss_kwargs)

    but never holds more than one ``[chunk_tokens, V]`` logits block, and does 3 matmuls per token
    where that path does 4 (see the module docstring, also for how ``grad_output`` is applied:
    reduce the returned ``loss`` with ``.mean()`` or ``.sum()`` when the head is trainable).

    Args:
        hidden: ``[N, T, H]`` last hidden states (after the final norm), N = B K, in the head's
            dtype; or the response-position rows ``[M, H]`` with ``labels`` their target ids ``[M]``
            and ``seq_index`` ``[M]`` the sequence (0..N-1) of each row.
        weight: ``[V, H]`` the LM head (no bias).
        labels: ``[N, T]`` token ids, ``ignore_index`` at prompt and padding positions (shifted
            inside: position t predicts labels[t + 1]); or ``[M]`` targets with ``seq_index``.
        ref_logps: ``[B, K]`` precomputed reference log-probs (constants).
        rewards: ``[B, K]`` or None, as the loss wants it; mask: optional ``[B, K]`` bool.
        loss: a registered loss name or function; refused with a one-line ``ValueError`` if it is
            not per-prompt or a keyword tensor is not one row per prompt.
        loss_kwargs: the loss's keywords (``alpha`` ...; ``beta`` overrides ``beta``) and per-prompt
            keyword tensors with B rows (``lengths`` ``[B, K]``, ``reference_reward`` ``[B]``).
        chunk_tokens: response tokens per chunk (the memory bound); default
            :func:`fused_chunk_tokens` of V (a 128 MiB fp32 block).
        average: length-normalised sequence log-probs (the mean over each response's tokens).
        validate: passed to the loss (its input checks, per chunk).
        return_logps: also return the policy's sequence log-probs ``[B, K]`` (detached; what the
            loss saw: summed, or averaged with ``average``), for metrics.

    Returns:
        :class:`ncakit.losses.LossOutput`: ``loss [B]`` (differentiable w.r.t. hidden and weight),
        ``implicit_rewards`` and ``weights`` ``[B, K]`` (detached); with ``return_logps``,
        ``(LossOutput, policy_logps)``. The head runs outside autocast, in the weight's dtype.
    """
    if not isinstance(ref_logps, torch.Tensor) or ref_logps.dim() != 2:
        raise ValueError(
            f"ref_logps: expected a tensor of shape [B, K], got {getattr(ref_logps, 'shape', type(ref_logps).__name__)}"
        )
    B, K = ref_logps.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight: expected the LM head [V, H], got {getattr(weight, 'shape', type(weight).__name__)}"
        )
    if (
        not isinstance(hidden, torch.Tensor)
        or hidden.dim() not in (2, 3)
        or hidden.shape[-1] != weight.shape[1]
    ):
        raise ValueError(
            f"hidden: expected [N, T, H] or [M, H] with H = {weight.shape[1]}, got {getattr(hidden, 'shape', None)}"
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden: expected the head's dtype {weight.dtype}, got {hidden.dtype}")
    spec, beta, kwargs = _resolve(loss, loss_kwargs, beta, B, K)
    if chunk_tokens is None:
        chunk_tokens = fused_chunk_tokens(weight.shape[0])
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: expected a positive int, got {chunk_tokens!r}")
    if hidden.dim() == 3:
        if seq_index is not None:
            raise ValueError(
                "seq_index: only with response rows hidden [M, H]; labels [N, T] say where they are"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:2]:
            raise ValueError(
                f"labels: expected shape {list(hidden.shape[:2])} matching hidden, got {getattr(labels, 'shape', None)}"
            )
        if hidden.shape[0] != B * K:
            raise ValueError(
                f"hidden: expected N = B K = {B * K} sequences for ref_logps {list(ref_logps.shape)}, got {hidden.shape[0]}"
            )
        tgt = labels[:, 1:]
        resp = tgt != ignore_index
        seq, pos = resp.nonzero(as_tuple=True)  # row-major: grouped by sequence, in order
        rows = hidden[:, :-1][seq, pos]
        targets = tgt[seq, pos].long()
    else:
        if seq_index is None or labels.shape != hidden.shape[:1] or seq_index.shape != hidden.shape[:1]:
            raise ValueError(
                "labels / seq_index: with hidden rows [M, H], pass targets [M] and seq_index [M]"
            )
        seq = seq_index.long()
        if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) >= B * K):
            raise ValueError(f"seq_index: expected sequence ids in [0, {B * K})")
        rows, targets = hidden, labels.long()
        if seq.numel() > 1 and bool((seq[1:] < seq[:-1]).any()):
            order = torch.argsort(seq, stable=True)
            rows, targets, seq = rows[order], targets[order], seq[order]
    V = weight.shape[0]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= V):
        raise ValueError(f"labels: expected token ids in [0, {V}) or {ignore_index} (ignored)")
    lens = None
    if average:
        # token counts: the sums are divided by them, as the naive path does
        lens = torch.bincount(seq, minlength=B * K).clamp(min=1).to(_acc(hidden))
    plan = (spec, beta, kwargs, int(chunk_tokens), validate)
    with torch.autocast(device_type=rows.device.type, enabled=False):  # fp32 logits under mixed precision
        *out, policy = _FusedHeadLoss.apply(
            rows,
            weight,
            targets,
            seq,
            ref_logps.detach(),
            None if rewards is None else rewards.detach(),
            mask,
            lens,
            plan,
        )
    out = LossOutput(*out)
    return (out, policy) if return_logps else out
