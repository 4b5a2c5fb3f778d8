"""ncakit.logprobs: the lean paths equal the naive log_softmax path (values and gradients), masking
and shifting follow the HF convention, and errors name their argument."""

from __future__ import annotations

import math

import pytest
import torch

from ncakit import logprobs as LP

IGN = LP.IGNORE_INDEX


def make_batch(N=4, T=9, V=37, H=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) / math.sqrt(H) * 3
    labels = torch.randint(0, V, (N, T), generator=g)
    # prompts of different lengths masked, and right padding on some rows
    for n in range(N):
        labels[n, : 2 + n % 3] = IGN
    labels[1, -3:] = IGN
    labels[N - 1, -1:] = IGN
    return hidden, weight, labels


def test_sequence_logps_matches_a_hand_loop():
    # Oracle: explicit loop over positions with the HF shift (logits[t] predicts labels[t+1]).
    hidden, weight, labels = make_batch()
    logits = hidden @ weight.T
    got = LP.sequence_logps(logits, labels)
    want = torch.zeros(labels.shape[0], dtype=torch.float64)
    for n in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[n, t + 1])
            if y != IGN:
                want[n] += logits[n, t, y] - torch.logsumexp(logits[n, t], dim=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    lengths = LP.response_lengths(labels)
    torch.testing.assert_close(
        LP.sequence_logps(logits, labels, average=True), want / lengths, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_logits_path_equals_naive(chunk):
    hidden, weight, labels = make_batch(seed=chunk)
    g = torch.randn(labels.shape[0], dtype=torch.float64)
    w1 = weight.clone().requires_grad_(True)
    naive = LP.sequence_logps(hidden @ w1.T, labels, naive=True)
    (gn,) = torch.autograd.grad((naive * g).sum(), w1)
    w2 = weight.clone().requires_grad_(True)
    lean = LP.sequence_logps(hidden @ w2.T, labels, chunk_size=chunk)
    (gl,) = torch.autograd.grad((lean * g).sum(), w2)
    torch.testing.assert_close(lean, naive, rtol=0, atol=1e-12)
    torch.testing.assert_close(gl, gn, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("trainable_head", [True, False])
@pytest.mark.parametrize("average", [False, True])
def test_hidden_path_equals_naive(chunk, trainable_head, average):
    hidden, weight, labels = make_batch(seed=10 + chunk)
    g = torch.randn(labels.shape[0], dtype=torch.float64)
    h1 = hidden.clone().requires_grad_(True)
    w1 = weight.clone().requires_grad_(trainable_head)
    naive = LP.sequence_logps(h1 @ w1.T, labels, naive=True, average=average)
    want = torch.autograd.grad((naive * g).sum(), [h1, w1] if trainable_head else [h1])
    h2 = hidden.clone().requires_grad_(True)
    w2 = weight.clone().requires_grad_(trainable_head)
    lean = LP.sequence_logps_from_hidden(h2, w2, labels, chunk_size=chunk, average=average)
    got = torch.autograd.grad((lean * g).sum(), [h2, w2] if trainable_head else [h2])
    torch.testing.assert_close(lean, naive, rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_float32_and_bfloat16_paths_agree_with_naive():
    hidden, weight, labels = make_batch(N=3, T=12, V=500, H=16, dtype=torch.float32, seed=5)
    naive = LP.sequence_logps(hidden @ weight.T, labels, naive=True)
    torch.testing.assert_close(
        LP.sequence_logps(hidden @ weight.T, labels, chunk_size=5), naive, rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        LP.sequence_logps_from_hidden(hidden, weight, labels, chunk_size=5), naive, rtol=1e-5, atol=1e-4
    )
    hb, wb = hidden.bfloat16(), weight.bfloat16()
    naive_bf = LP.sequence_logps(hb @ wb.T, labels, naive=True)
    lean_bf = LP.sequence_logps_from_hidden(hb, wb, labels, chunk_size=5)
    assert lean_bf.dtype == torch.float32  # accumulated in fp32 even for bf16 inputs
    # Same bf16 logits, same fp32 reduction: equal up to summation order.
    torch.testing.assert_close(lean_bf, naive_bf, rtol=1e-5, atol=1e-3)


def test_padding_and_prompt_tokens_do_not_matter():
    # Changing logits at masked positions (prompt, padding) leaves sequence log-probs unchanged.
    hidden, weight, labels = make_batch()
    logits = hidden @ weight.T
    scored = torch.zeros_like(labels, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != IGN  # positions whose logits are used
    noisy = torch.where(scored.unsqueeze(-1), logits, logits + 100 * torch.randn_like(logits))
    torch.testing.assert_close(
        LP.sequence_logps(noisy, labels), LP.sequence_logps(logits, labels), rtol=0, atol=1e-12
    )


def test_all_ignored_row_gives_zero():
    hidden, weight, labels = make_batch()
    labels[2] = IGN
    out = LP.sequence_logps_from_hidden(hidden, weight, labels)
    assert out[2].item() == 0.0
    assert LP.sequence_logps(hidden @ weight.T, labels, average=True)[2].item() == 0.0


def test_auto_chunk_size_bounds():
    assert LP.auto_chunk_size(32_000) == 2**24 // 32_000
    assert LP.auto_chunk_size(128_256) == 2**24 // 128_256
    assert LP.auto_chunk_size(10) == 8192 and LP.auto_chunk_size(10**9) == 16


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (
            lambda: LP.sequence_logps(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)),
            ValueError,
            r"logits: expected a tensor of shape \[N, T, V\]",
        ),
        (
            lambda: LP.sequence_logps(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)),
            ValueError,
            r"labels: expected shape \[N, T\] = \[2, 3\]",
        ),
        (
            lambda: LP.sequence_logps(torch.zeros(2, 3, 5), torch.zeros(2, 3)),
            TypeError,
            r"labels: expected an integer",
        ),
        (
            lambda: LP.sequence_logps(
                torch.zeros(2, 3, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
            ),
            TypeError,
            r"logits: expected a floating-point",
        ),
        (
            lambda: LP.sequence_logps_from_hidden(
                torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long)
            ),
            ValueError,
            r"hidden: expected shape \[N, T, H\]",
        ),
        (
            lambda: LP.linear_token_logps(
                torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(4, dtype=torch.long)
            ),
            ValueError,
            r"hidden/weight: expected hidden \[n, H\] and weight \[V, H\]",
        ),
        (
            lambda: LP.linear_token_logps(
                torch.zeros(4, 3), torch.zeros(5, 3).double(), torch.zeros(4, dtype=torch.long)
            ),
            TypeError,
            r"hidden: expected the head's dtype",
        ),
    ],
)
def test_bad_inputs(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_chunk_size_must_be_a_positive_int(chunk_size):
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    with pytest.raises((TypeError, ValueError), match=r"^chunk_size: expected an int >= 1"):
        LP.sequence_logps(logits, labels, chunk_size=chunk_size)
    with pytest.raises((TypeError, ValueError), match=r"^chunk_size: expected an int >= 1"):
        LP.linear_token_logps(torch.randn(4, 3), torch.randn(11, 3), torch.randint(0, 11, (4,)), chunk_size)
