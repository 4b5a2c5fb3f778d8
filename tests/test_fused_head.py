"""The fused LM head + loss (ncakit.fused) against the naive path: full logits, log_softmax, the
sequence log-probs, then the registered loss -- values, implicit rewards, weights and the gradients
w.r.t. the hidden states and the head, for every registered loss, ragged and masked batches, and
chunks of one token / about one prompt / a few prompts / the whole batch."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import ncakit
from ncakit.fused import check_per_prompt, fused_head_loss
from ncakit.logprobs import response_lengths, sequence_logps, sequence_logps_from_hidden
from ncakit.losses import LossOutput, log_ratios, loss_output
from ncakit.registry import ALIASES, LOSS_SPECS, LossSpec, get_loss, loss_spec, register_loss

LOSSES = list(LOSS_SPECS)


def _batch(spec: LossSpec, dtype, *, B=4, T=9, H=8, V=37, seed=0, masked=True):
    """Hidden states, head, ragged labels (some responses shorter, one with no token) and the [B, K]
    inputs of ``spec``'s loss; K-way losses get K = 4 with one masked response in some prompts."""
    g = torch.Generator().manual_seed(seed)
    K = 2 if spec.pairwise else 4
    N = B * K
    hidden = torch.randn(N, T, H, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) / math.sqrt(H)).to(dtype)
    labels = torch.randint(0, V, (N, T), generator=g)
    prompt = torch.randint(1, 4, (N,), generator=g)
    end = torch.randint(5, T + 1, (N,), generator=g)
    pos = torch.arange(T)[None]
    labels[(pos < prompt[:, None]) | (pos >= end[:, None])] = -100  # prompt and padding
    mask = None
    if masked and not spec.pairwise:
        mask = torch.ones(B, K, dtype=torch.bool)
        mask[0, 3] = mask[2, 1] = False
        labels[3] = -100  # the masked padding response (sequence 0*K + 3) has no tokens at all
    ref = (-3 * torch.rand(B, K, generator=g, dtype=torch.float64) - 20).to(dtype)
    rewards = torch.rand(B, K, generator=g, dtype=torch.float64).to(dtype) if spec.needs_rewards else None
    return hidden, weight, labels, ref, rewards, mask


def _naive(
    spec, hidden, weight, labels, ref, rewards, mask, beta, kwargs, *, average=False, from_hidden=False
):
    B, K = ref.shape
    kwargs = dict(kwargs)
    beta = kwargs.pop("beta", beta)  # as ncakit.registry.check_loss_kwargs: beta in loss_kwargs overrides
    if from_hidden:
        pol = sequence_logps_from_hidden(hidden, weight, labels, average=average)
    else:
        pol = sequence_logps(hidden @ weight.t(), labels, average=average, naive=True)
    return spec.fn(pol.view(B, K), ref, rewards, beta=beta, mask=mask, **kwargs)


def _grads(fn, hidden, weight, reduce="mean"):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = fn(h, w)
    getattr(out.loss, reduce)().backward()
    return out, h.grad, w.grad


def _close(a, b, dtype, what):
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    scale = max(float(b.detach().abs().max()), 1e-30) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _chunk_sizes(labels, K):
    per_prompt = response_lengths(labels).view(-1, K).sum(-1)
    # one token per block (every prompt split, logits recomputed), about one prompt, two, all of them
    return [1, int(per_prompt.min()), int(per_prompt[:2].sum()), int(per_prompt.sum())]


def _compare(spec, dtype, *, kwargs=None, average=False, from_hidden=False, reduce="mean", beta=0.3, **batch):
    hidden, weight, labels, ref, rewards, mask = _batch(spec, dtype, **batch)
    kwargs = kwargs(labels, ref.shape) if callable(kwargs) else dict(kwargs or {})
    want, gh, gw = _grads(
        lambda h, w: _naive(
            spec, h, w, labels, ref, rewards, mask, beta, kwargs, average=average, from_hidden=from_hidden
        ),
        hidden,
        weight,
        reduce,
    )
    for chunk in _chunk_sizes(labels, ref.shape[1]):
        got, fh, fw = _grads(
            lambda h, w, chunk=chunk: fused_head_loss(
                h,
                w,
                labels,
                ref,
                rewards,
                spec.name,
                beta=beta,
                mask=mask,
                loss_kwargs=kwargs,
                chunk_tokens=chunk,
                average=average,
            ),
            hidden,
            weight,
            reduce,
        )
        where = f"{spec.name} {dtype} chunk_tokens={chunk}"
        assert isinstance(got, LossOutput) and got.loss.shape == (ref.shape[0],)
        _close(got.loss, want.loss, dtype, f"{where} loss")
        _close(got.implicit_rewards, want.implicit_rewards, dtype, f"{where} implicit rewards")
        _close(got.weights, want.weights, dtype, f"{where} weights")
        _close(fh, gh, dtype, f"{where} grad hidden")
        _close(fw, gw, dtype, f"{where} grad weight")
        assert not got.implicit_rewards.requires_grad and not got.weights.requires_grad


# --------------------------------------------------------------------------------------------
# Equality with the naive path, every registered loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_every_registered_loss_is_per_prompt(name):
    """The claim the fused head rests on, checked by its own probe and here on a real batch: the loss
    of the whole batch equals the losses of its prompts taken one at a time."""
    assert check_per_prompt(name) is None
    spec = loss_spec(name)
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64)
    pol = sequence_logps(hidden @ weight.t(), labels).view(ref.shape)
    whole = spec.fn(pol, ref, rewards, beta=0.3, mask=mask).loss
    rows = [
        spec.fn(
            pol[b : b + 1],
            ref[b : b + 1],
            None if rewards is None else rewards[b : b + 1],
            beta=0.3,
            mask=None if mask is None else mask[b : b + 1],
        ).loss
        for b in range(ref.shape[0])
    ]
    torch.testing.assert_close(whole, torch.cat(rows), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_naive_for_every_registered_loss(name, dtype):
    _compare(loss_spec(name), dtype)


@pytest.mark.parametrize("name", ["nca", "infonca", "dpo"])
def test_fused_equals_the_chunked_hidden_head_fp32(name):
    _compare(loss_spec(name), torch.float32, from_hidden=True, B=6, T=12, V=301, H=16, seed=3)


@pytest.mark.parametrize("name", ["nca", "infonca", "dpo"])
def test_loss_sum_and_keyword_arguments(name):
    spec = loss_spec(name)
    kw = {"alpha": 0.5, "first_bonus": 0.01} if not spec.pairwise else {}
    _compare(spec, torch.float64, kwargs=kw, reduce="sum", seed=5)
    _compare(spec, torch.float64, kwargs={"beta": 0.05}, seed=6)  # beta in loss_kwargs overrides beta=


@pytest.mark.parametrize(
    "name", [n for n in LOSSES if "lengths" in inspect.signature(LOSS_SPECS[n].fn).parameters]
)
def test_per_prompt_keyword_tensors_are_split_by_chunk(name):
    """``lengths`` [B, K] (IPO, PRO, ASFT, CPL) travel with their prompts' chunk."""
    spec = loss_spec(name)
    kwargs = lambda labels, shape: {"lengths": response_lengths(labels).view(shape).clamp(min=1)}  # noqa: E731
    _compare(spec, torch.float64, kwargs=kwargs, masked=False)


def test_reference_reward_tensor_is_split_by_chunk():
    _compare(
        loss_spec("nca_lsc"),
        torch.float64,
        kwargs=lambda labels, shape: {
            "reference_reward": torch.linspace(0.2, 0.8, shape[0], dtype=torch.float64)
        },
    )


@pytest.mark.parametrize("name", ["ipo", "nca"])
def test_length_averaged_logps(name):
    _compare(loss_spec(name), torch.float64, average=True, seed=2)


def test_response_rows_input_matches_full_hidden():
    spec = loss_spec("nca")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64, seed=4)
    want, gh, gw = _grads(
        lambda h, w: fused_head_loss(h, w, labels, ref, rewards, "nca", mask=mask), hidden, weight
    )
    tgt = labels[:, 1:]
    seq, pos = (tgt != -100).nonzero(as_tuple=True)
    perm = torch.randperm(seq.numel(), generator=torch.Generator().manual_seed(0))  # any order is accepted
    seq, pos = seq[perm], pos[perm]

    def rows_fn(h, w):
        return fused_head_loss(
            h[:, :-1][seq, pos],
            w,
            tgt[seq, pos],
            ref,
            rewards,
            "nca",
            mask=mask,
            seq_index=seq,
            chunk_tokens=7,
        )

    got, fh, fw = _grads(rows_fn, hidden, weight)
    for a, b in ((got.loss, want.loss), (fh, gh), (fw, gw)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_frozen_head_and_any_grad_output():
    """With a frozen head only grad_hidden is formed; it is per row, so any [B] grad_output is exact."""
    spec = loss_spec("infonca")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64, seed=7)
    c = torch.tensor([0.3, -1.0, 0.0, 2.0], dtype=torch.float64)
    h1 = hidden.clone().requires_grad_(True)
    (
        fused_head_loss(h1, weight, labels, ref, rewards, "infonca", mask=mask, chunk_tokens=5).loss * c
    ).sum().backward()
    h2 = hidden.clone().requires_grad_(True)
    (_naive(spec, h2, weight, labels, ref, rewards, mask, 0.1, {}).loss * c).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-10, atol=1e-12)


def test_unequal_grad_output_with_a_trainable_head_is_refused():
    spec = loss_spec("nca")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64)
    w = weight.clone().requires_grad_(True)
    out = fused_head_loss(hidden, w, labels, ref, rewards, "nca", mask=mask)
    with pytest.raises(RuntimeError, match="same grad_output for every prompt"):
        out.loss[:2].sum().backward()


def test_no_grad_forward_gives_the_naive_values():
    spec = loss_spec("nca")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64)
    with torch.no_grad():
        got = fused_head_loss(hidden, weight, labels, ref, rewards, "nca", mask=mask, chunk_tokens=3)
    want = _naive(spec, hidden, weight, labels, ref, rewards, mask, 0.1, {})
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-12, atol=1e-12)


def test_aliases_and_functions_resolve():
    spec = loss_spec("dpo")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64)
    a = fused_head_loss(hidden, weight, labels, ref, None, "sigmoid").loss
    b = fused_head_loss(hidden, weight, labels, ref, None, get_loss("dpo")).loss
    torch.testing.assert_close(a, b)
    assert "sigmoid" in ALIASES


# --------------------------------------------------------------------------------------------
# Refusals: one line, naming the loss
# --------------------------------------------------------------------------------------------


def _batch_normalised(policy_logps, ref_logps, rewards=None, *, beta=0.1, mask=None, validate=True):
    """A loss that couples prompts: each log-ratio centred on the batch mean of all log-ratios."""
    s = log_ratios(policy_logps, ref_logps)
    s = s - s.mean()
    loss = -torch.nn.functional.logsigmoid(beta * s[:, 0]) - torch.nn.functional.logsigmoid(-beta * s[:, 1])
    return loss_output(loss, s, beta, torch.zeros_like(s))


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_a_loss_that_couples_prompts_is_refused():
    name = "_test_batch_normalised_dpo"
    register_loss(LossSpec(name, _batch_normalised, "pairwise", False, "test", "test", "#000000"))
    try:
        assert "coupled" in check_per_prompt(name)
        spec = loss_spec(name)
        hidden, weight, labels, ref, _, _ = _batch(spec, torch.float64)
        with pytest.raises(ValueError) as e:
            fused_head_loss(hidden, weight, labels, ref, None, name)
        _one_line(e, name, "refused")
    finally:
        del LOSS_SPECS[name]


def test_an_unregistered_function_is_refused():
    spec = loss_spec("dpo")
    hidden, weight, labels, ref, _, _ = _batch(spec, torch.float64)
    with pytest.raises(ValueError) as e:
        fused_head_loss(hidden, weight, labels, ref, None, _batch_normalised)
    _one_line(e, "_batch_normalised", "not a registered loss")


def test_a_keyword_tensor_not_one_row_per_prompt_is_refused():
    spec = loss_spec("ipo")
    hidden, weight, labels, ref, _, _ = _batch(spec, torch.float64)
    with pytest.raises(ValueError) as e:
        fused_head_loss(hidden, weight, labels, ref, None, "ipo", loss_kwargs={"lengths": torch.ones(3, 2)})
    _one_line(e, "'ipo'", "lengths")
    with pytest.raises(ValueError) as e:
        fused_head_loss(
            hidden, weight, labels, ref, None, "dpo", loss_kwargs={"mask": torch.ones(4, 2, dtype=torch.bool)}
        )
    _one_line(e, "'dpo'")


def test_bad_shapes_are_refused():
    spec = loss_spec("nca")
    hidden, weight, labels, ref, rewards, mask = _batch(spec, torch.float64)
    with pytest.raises(ValueError, match="N = B K"):
        fused_head_loss(hidden[:-1], weight, labels[:-1], ref, rewards, "nca")
    with pytest.raises(ValueError, match="chunk_tokens"):
        fused_head_loss(hidden, weight, labels, ref, rewards, "nca", chunk_tokens=0)
    with pytest.raises(TypeError, match="dtype"):
        fused_head_loss(hidden.float(), weight, labels, ref, rewards, "nca")
    bad = labels.clone()
    bad[0, -1] = weight.shape[0]
    with pytest.raises(ValueError, match="token ids"):
        fused_head_loss(hidden, weight, bad, ref, rewards, "nca")


def test_ncakit_exports_are_untouched():
    assert not hasattr(ncakit, "fused_head_loss")  # opt-in: imported from ncakit.fused


def test_a_second_backward_is_refused():
    """The saved gradients are scaled in place by the backward, so it may run only once."""
    spec = loss_spec("dpo")
    hidden, weight, labels, ref, _, _ = _batch(spec, torch.float64)
    h = hidden.clone().requires_grad_(True)
    out = fused_head_loss(h, weight, labels, ref, None, "dpo")
    out.loss.mean().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        out.loss.mean().backward()


def test_the_probe_runs_under_no_grad_too():
    """An evaluation loop calls the fused head under torch.no_grad(): the per-prompt probe still
    runs its autograd (and caches the right answer), the loss equals the one with grad."""
    from ncakit import fused

    fused._PROBE_CACHE.clear()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2 * 3, 5, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (6, 5), generator=g)
    labels[:, :2] = -100
    ref = -torch.rand(2, 3, generator=g, dtype=torch.float64)
    rewards = torch.rand(2, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        quiet = fused.fused_head_loss(hidden, weight, labels, ref, rewards, "nca", loss_kwargs={"alpha": 0.5})
    assert fused.check_per_prompt("nca", {"alpha": 0.5}, k=3) is None
    loud = fused.fused_head_loss(hidden, weight, labels, ref, rewards, "nca", loss_kwargs={"alpha": 0.5})
    assert torch.equal(quiet.loss, loud.loss.detach())
