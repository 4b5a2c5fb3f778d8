"""TRL's token metrics (``entropy``, ``logits/chosen``, ``logits/rejected``, ``mean_token_accuracy``)
from ncakit's chunked log-prob paths, which never hold the ``[N, T, V]`` logits.

1. The oracle: every path's :class:`ncakit.logprobs.TokenStats` (the chunked logits path, the
   hidden-state path with a trainable and with a frozen head, the naive path, and on the tiny model
   ``batch_logps``' head / hidden / logits paths) equals the naive computation on the full logits
   (``log_softmax``, ``mean``, ``argmax`` over the vocabulary, masked by the ``-100`` labels), to
   1e-5 in float32, on ragged lengths and with planted argmax hits (so ``top1`` is not trivially 0).
2. Autograd is unaffected: gradients with ``stats=True`` are bit-identical to those without.
3. :func:`ncakit.metrics.token_metrics` equals an explicit loop over prompts (chosen = the
   top-reward valid response, rejected = the other valid ones; token-weighted ratios of sums).
4. A tiny training run logs the four keys (train and ``eval_``) with values inside their bounds.
(TRL 1.16's own DPOTrainer numbers: tests/test_trl_data.py.)
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from ncakit.logprobs import (
    IGNORE_INDEX,
    TokenStats,
    linear_token_logps,
    sequence_logps,
    sequence_logps_from_hidden,
)
from ncakit.losses import LossOutput
from ncakit.metrics import token_metrics

TOL = dict(atol=1e-5, rtol=1e-5)


def naive_stats(logits: torch.Tensor, labels: torch.Tensor) -> TokenStats:
    """The oracle: the whole ``[N, T, V]`` logits at once, in float64, summed over scored tokens."""
    z = logits[:, :-1].double()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(z, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    mean = z.mean(-1)
    top1 = z.argmax(-1) == targets
    return TokenStats((entropy * mask).sum(-1), (mean * mask).sum(-1), (top1 & mask).sum(-1), mask.sum(-1))


def assert_stats_close(got: TokenStats, want: TokenStats) -> None:
    torch.testing.assert_close(got.entropy_sum.double(), want.entropy_sum, **TOL)
    torch.testing.assert_close(got.logit_sum.double(), want.logit_sum, **TOL)
    assert torch.equal(got.top1.long(), want.top1.long())
    assert torch.equal(got.tokens.long(), want.tokens.long())


def ragged(n=5, t=13, v=97, h=16, seed=0):
    """Random float32 hidden / head, labels with prompts, padding and one row with no response
    token; half the scored targets are planted at the argmax of their position's logits."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=g)
    weight = torch.randn(v, h, generator=g) / 2
    labels = torch.randint(0, v, (n, t), generator=g)
    for i, (prompt, length) in enumerate([(3, 9), (1, 12), (5, 5), (0, 13), (4, 4)]):
        labels[i, :prompt] = IGNORE_INDEX
        labels[i, length:] = IGNORE_INDEX  # row 4: prompt 4, length 4 -> no response token
    argmax = (hidden @ weight.t()).argmax(-1)  # logits[:, t] predicts labels[:, t + 1]
    plant = (torch.rand(n, t - 1, generator=g) < 0.5) & (labels[:, 1:] != IGNORE_INDEX)
    labels[:, 1:] = torch.where(plant, argmax[:, :-1], labels[:, 1:])
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_every_path_equals_the_naive_stats(chunk):
    hidden, weight, labels = ragged()
    logits = hidden @ weight.t()
    want = naive_stats(logits, labels)
    assert int(want.top1.sum()) > 0 and int(want.tokens[4]) == 0  # planted hits, an empty row
    # the chunked logits path, the naive path
    for naive in (False, True):
        seq, got = sequence_logps(logits, labels, chunk_size=chunk, naive=naive, stats=True)
        assert torch.equal(seq, sequence_logps(logits, labels, chunk_size=chunk, naive=naive))
        assert_stats_close(got, want)
    # the hidden-state path, trainable head (recompute mode) and frozen head (pre mode)
    for need_w in (True, False):
        w = weight.clone().requires_grad_(need_w)
        h = hidden.clone().requires_grad_(True)
        seq, got = sequence_logps_from_hidden(h, w, labels, chunk_size=chunk, stats=True)
        torch.testing.assert_close(seq, sequence_logps_from_hidden(h, w, labels, chunk_size=chunk))
        assert not any(v.requires_grad for v in got.items().values())
        assert_stats_close(got, want)


def test_linear_token_stats_are_per_token():
    hidden, weight, labels = ragged(seed=1)
    logits = (hidden @ weight.t())[:, :-1].reshape(-1, weight.shape[0])
    targets = labels[:, 1:].reshape(-1).clamp(min=0)
    _, per_token = linear_token_logps(hidden[:, :-1].reshape(-1, 16), weight, targets, 7, stats=True)
    logp = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(per_token.entropy_sum.double(), -(logp.exp() * logp).sum(-1), **TOL)
    torch.testing.assert_close(per_token.logit_sum.double(), logits.double().mean(-1), **TOL)
    assert torch.equal(per_token.top1.bool(), logits.argmax(-1) == targets)
    assert torch.equal(per_token.tokens, torch.ones_like(targets))


def _grads(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_(r) for x, r in leaves]
    seq = fn(*leaves)
    seq = seq[0] if isinstance(seq, tuple) else seq
    (seq * torch.linspace(-1, 2, seq.numel()).view_as(seq)).sum().backward()
    return [x.grad for x in leaves if x.requires_grad]


@pytest.mark.parametrize("chunk", [3, None])
def test_gradients_are_bit_identical_with_and_without_stats(chunk):
    hidden, weight, labels = ragged(seed=2)
    logits = hidden @ weight.t()
    runs = {}
    for stats in (False, True):
        runs[stats] = (
            _grads(lambda z, s=stats: sequence_logps(z, labels, chunk_size=chunk, stats=s), (logits, True)),
            _grads(
                lambda h, w, s=stats: sequence_logps_from_hidden(h, w, labels, chunk_size=chunk, stats=s),
                (hidden, True),
                (weight, True),
            ),
            _grads(
                lambda h, w, s=stats: sequence_logps_from_hidden(h, w, labels, chunk_size=chunk, stats=s),
                (hidden, True),
                (weight, False),
            ),
        )
    for without, with_ in zip(runs[False], runs[True]):
        assert len(without) == len(with_) > 0
        assert all(torch.equal(a, b) for a, b in zip(without, with_))


# ----------------------------------------------------------------------------------------------
# The tiny model: batch_logps' three paths
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    from ncakit.scale import data, tinylm

    tok = tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(300, seed=3)), vocab_size=320)
    rows = tinylm.synthetic_k_dataset(5, k=4, seed=2)
    rows[2]["responses"], rows[2]["rewards"] = rows[2]["responses"][:3], rows[2]["rewards"][:3]  # masked slot
    rows[4]["prompt"][0]["content"] += " " + "abcdefgh" * 3  # a longer prompt: real padding
    ds = data.tokenize_k_dataset(rows, tok, max_length=96, max_prompt_length=64, warn=False).dataset
    batch = data.KResponseCollator(tok.pad_token_id, k=4)([ds[i] for i in range(len(ds))])
    model = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=1)
    tinylm.sft_warmup(model, tok, steps=15, n_rows=128, batch_size=16, lr=1e-2, warmup_steps=2)
    return model.train(), batch


def test_batch_logps_stats_on_every_path_equal_the_naive_stats(tiny):
    from ncakit.scale import forward

    model, batch = tiny
    B, K = batch["mask"].shape
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = naive_stats(logits, batch["labels"]).apply(lambda v: v.view(B, K)).masked(batch["mask"])
    assert int(want.top1.sum()) > 0  # the warmed-up model hits some tokens
    lean = copy.deepcopy(model)
    forward.install_logprob_head(lean)
    for m, path in ((lean, "head"), (model, "hidden"), (model, "logits")):
        seq, got = forward.batch_logps(m, batch, path=path, stats=True)
        assert got.tokens.shape == (B, K)
        torch.testing.assert_close(seq, forward.batch_logps(m, batch, path=path), atol=1e-6, rtol=0)
        assert_stats_close(got, want)
        assert int(got.tokens[~batch["mask"]].sum()) == 0
        assert torch.equal(got.tokens, batch["response_lengths"])
    assert forward.find_logprob_head(lean).stats is None  # the side channel is emptied


def test_batch_logps_gradients_are_bit_identical_with_stats(tiny):
    from ncakit.scale import forward

    model, batch = tiny
    lean = copy.deepcopy(model)
    forward.install_logprob_head(lean)
    for m, path in ((lean, "head"), (model, "hidden"), (model, "logits")):
        grads = {}
        for stats in (False, True):
            m.zero_grad(set_to_none=True)
            seq = forward.batch_logps(m, batch, path=path, stats=stats)
            seq = seq[0] if stats else seq
            (seq * torch.linspace(-1, 2, seq.numel()).view_as(seq)).sum().backward()
            grads[stats] = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        assert len(grads[False]) == len(grads[True]) > 0
        assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True])), path


# ----------------------------------------------------------------------------------------------
# token_metrics and the window
# ----------------------------------------------------------------------------------------------


def _loop_metrics(stats: TokenStats, rewards, mask) -> dict[str, float]:
    """token_metrics the slow way: per prompt, the first top-reward valid response is chosen."""
    sums = {k: [0.0, 0.0] for k in ("entropy", "chosen", "rejected", "acc")}
    for b in range(mask.shape[0]):
        valid = [k for k in range(mask.shape[1]) if mask[b, k]]
        best = max(valid, key=lambda k: (float(rewards[b, k]), -k))
        for k in valid:
            n = float(stats.tokens[b, k])
            sums["entropy"][0] += float(stats.entropy_sum[b, k])
            sums["entropy"][1] += n
            side = "chosen" if k == best else "rejected"
            sums[side][0] += float(stats.logit_sum[b, k])
            sums[side][1] += n
            if k == best:
                sums["acc"][0] += float(stats.top1[b, k])
                sums["acc"][1] += n
    ratio = {k: (s / n if n else 0.0) for k, (s, n) in sums.items()}
    return {
        "entropy": ratio["entropy"],
        "logits/chosen": ratio["chosen"],
        "logits/rejected": ratio["rejected"],
        "mean_token_accuracy": ratio["acc"],
    }


def test_token_metrics_equal_an_explicit_loop():
    g = torch.Generator().manual_seed(4)
    B, K = 7, 4
    tokens = torch.randint(0, 9, (B, K), generator=g)
    stats = TokenStats(
        torch.rand(B, K, generator=g) * tokens * 3,
        torch.randn(B, K, generator=g) * tokens,
        (torch.rand(B, K, generator=g) * (tokens + 1)).long().clamp(max=tokens),
        tokens,
    )
    rewards = torch.randint(0, 3, (B, K), generator=g).float()  # ties: the first column wins
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 2:] = False
    mask[5, 0] = False  # a masked slot ahead of the valid ones
    rewards[5, 0] = 9.0  # the highest reward, but masked: never chosen
    stats = stats.masked(mask)
    got = {k: float(v) for k, v in token_metrics(stats, rewards, mask).items()}
    assert got == pytest.approx(_loop_metrics(stats, rewards, mask), abs=1e-12)
    # pairwise rows without rewards: column 0 chosen, column 1 rejected (TRL)
    pair = stats.apply(lambda v: v[:, :2])
    m = token_metrics(pair)
    assert float(m["logits/chosen"]) == pytest.approx(
        float(pair.logit_sum[:, 0].sum() / pair.tokens[:, 0].sum())
    )
    assert float(m["mean_token_accuracy"]) == pytest.approx(
        float(pair.top1[:, 0].sum() / pair.tokens[:, 0].sum())
    )
    empty = token_metrics(stats.apply(torch.zeros_like), rewards, mask)
    assert all(float(v) == 0.0 for v in empty.values())  # no token: 0, as TRL


def test_window_is_token_weighted_across_batches():
    """Two batches of very different lengths: the window's ratio is of the pooled sums (TRL's
    gathered sums / gathered counts), not a mean of per-batch ratios."""
    from ncakit.scale.tracking import MetricsWindow, window_metrics

    window = MetricsWindow()
    pooled = []
    for n_tok, ent in ((1, 1.0), (99, 3.0)):
        batch = {
            "rewards": torch.tensor([[1.0, 0.0]]),
            "mask": torch.ones(1, 2, dtype=torch.bool),
            "attention_mask": torch.ones(2, 4, dtype=torch.long),
        }
        tokens = torch.tensor([[n_tok, n_tok]])
        stats = TokenStats(ent * tokens.float(), -tokens.float(), tokens // 2, tokens)
        out = LossOutput(torch.zeros(1), torch.zeros(1, 2), torch.full((1, 2), 0.5))
        window.add(out, torch.zeros(1, 2), batch, stats)
        pooled.append(stats)
    m = window_metrics(window.tensors(), prefix="eval_")
    assert m["eval_entropy"] == pytest.approx((1 * 2 + 3 * 198) / 200)
    assert m["eval_logits/chosen"] == pytest.approx(-1.0)
    assert m["eval_mean_token_accuracy"] == pytest.approx((0 + 49) / 100)
    # rows without stats: no token metrics, the rest unchanged
    bare = MetricsWindow()
    bare.append(MetricsWindow.rows(out, torch.zeros(1, 2), batch))
    assert "entropy" not in window_metrics(bare.tensors()) and "loss" in window_metrics(bare.tensors())


# ----------------------------------------------------------------------------------------------
# A tiny training run
# ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_accelerate_state")
def test_training_run_logs_the_token_metrics(tmp_path_factory):
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from _tinykit import build_small_kit, run_train, small_args

    kit = build_small_kit(tmp_path_factory, "kit-head-metrics")
    out = tmp_path_factory.mktemp("head-metrics-run")
    run_train(small_args(kit, out, "--max_steps", "2", "--eval_split", "test", "--eval_steps", "2"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads(next(kit.rglob("config.json")).read_text())
    ln_v = math.log(cfg["vocab_size"])
    for prefix in ("", "eval_"):
        logged = [r for r in rows if f"{prefix}loss" in r]
        assert logged, prefix
        for r in logged:
            assert 0.0 <= r[f"{prefix}mean_token_accuracy"] <= 1.0
            assert 0.0 < r[f"{prefix}entropy"] < ln_v
            assert math.isfinite(r[f"{prefix}logits/chosen"]) and math.isfinite(r[f"{prefix}logits/rejected"])
