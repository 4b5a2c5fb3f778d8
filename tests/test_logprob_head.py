"""ncakit.scale.forward.LogprobHead: the LM head that returns per-token log-probs from inside the model's
forward equals the naive path (full-vocab float64 log_softmax of the logits) in values AND gradients,
for a trainable head (full fine-tuning) and a frozen one (LoRA), leaves logits / state dict /
generation unchanged when unarmed, and refuses what it cannot do. (Through a DDP wrapper it is
exercised by tests/test_train.py's two-process run.)"""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from ncakit.logprobs import sequence_logps  # noqa: E402
from ncakit.scale import (  # noqa: E402
    data,  # noqa: E402
    forward,
    reference,
    tinylm,
)

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(300, seed=3)), vocab_size=320)


@pytest.fixture(scope="module")
def batch(tok):
    rows = tinylm.synthetic_k_dataset(6, k=4, seed=2)
    rows[2]["responses"], rows[2]["rewards"] = (
        rows[2]["responses"][:3],
        rows[2]["rewards"][:3],
    )  # a masked slot
    rows[4]["prompt"][0]["content"] += " " + "abcdefgh" * 3  # a longer prompt: real padding
    ds = data.tokenize_k_dataset(rows, tok, max_length=96, max_prompt_length=64, warn=False).dataset
    return data.KResponseCollator(tok.pad_token_id, k=4)([ds[i] for i in range(len(ds))])


def naive(model, batch):
    """The oracle: plain logits, full log_softmax in float64, response tokens summed, [B, K]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    B, K = batch["mask"].shape
    return sequence_logps(logits.double(), batch["labels"], naive=True).view(B, K) * batch["mask"]


@pytest.mark.parametrize("frozen_head", [False, True], ids=["trainable-head", "frozen-head"])
def test_head_equals_naive_values_and_grads(tok, batch, frozen_head):
    base = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=1)
    lean = copy.deepcopy(base)
    head = forward.install_logprob_head(lean)
    assert isinstance(head, forward.LogprobHead) and lean.lm_head is head
    if frozen_head:  # LoRA-style: the head gets no gradient (the "pre" mode of linear_token_logps)
        for m in (base, lean):
            m.lm_head.weight.requires_grad_(False)
    want = naive(base, batch)
    got = forward.batch_logps(lean, batch)  # auto -> the head path
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=1e-6)
    assert float(got.detach()[2, 3]) == 0.0, "masked response: exactly 0"
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (want * weights).sum().backward()
    (got.double() * weights).sum().backward()
    n = 0
    for (name, p_base), (_, p_lean) in zip(base.named_parameters(), lean.named_parameters()):
        if p_base.grad is None:
            assert p_lean.grad is None and frozen_head and "lm_head" in name
            continue
        scale = float(p_base.grad.abs().max()) + 1e-12
        err = float((p_base.grad - p_lean.grad).abs().max())
        assert err <= 1e-4 * scale, (name, err, scale)
        n += 1
    assert n >= 15


def test_head_path_equals_hidden_and_logits_paths(tok, batch):
    model = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=4).eval()
    with torch.no_grad():
        hidden = forward.batch_logps(model, batch, path="hidden")
        logits = forward.batch_logps(model, batch, path="logits")
        forward.install_logprob_head(model)
        head = forward.batch_logps(model, batch, path="head")
        avg = forward.batch_logps(model, batch, path="head", average=True)
    torch.testing.assert_close(head, hidden, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(head, logits, atol=2e-5, rtol=1e-6)
    lengths = batch["response_lengths"].clamp(min=1).float()
    torch.testing.assert_close(avg, head / lengths, atol=1e-6, rtol=1e-6)


def test_unarmed_head_is_the_plain_linear_and_keeps_the_state_dict(tok):
    base = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=5).eval()
    lean = copy.deepcopy(base)
    weight = lean.lm_head.weight
    head = forward.install_logprob_head(lean)
    assert head.weight is weight, "the same Parameter object: optimizers and tying are unaffected"
    assert forward.install_logprob_head(lean) is head, "idempotent"
    assert list(lean.state_dict()) == list(base.state_dict())
    ids = torch.tensor([tok("reverse: abc")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(lean(input_ids=ids).logits, base(input_ids=ids).logits, rtol=0, atol=0)
        g1 = base.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        g2 = lean.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert g1.tolist() == g2.tolist()
    assert not head.armed
    with head.scoring(torch.zeros(1, ids.shape[1], dtype=torch.long)):
        assert head.armed
        with (
            pytest.raises(RuntimeError, match="already armed"),
            head.scoring(torch.zeros(1, 2, dtype=torch.long)),
        ):
            pass
    assert not head.armed, "disarmed after the block, even when it raised"
    forward.remove_logprob_head(lean)
    assert type(lean.lm_head) is torch.nn.Linear and lean.lm_head.weight is weight
    assert forward.find_logprob_head(lean) is None


def test_head_works_inside_peft_and_for_the_adapter_reference(tok, batch):
    peft = pytest.importorskip("peft")
    base = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=6).eval()
    forward.install_logprob_head(base)
    model = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # a non-zero adapter, so disabling it matters
    assert forward.find_logprob_head(model) is not None
    ref = reference.reference_logps_from_adapter(model, batch)
    with torch.no_grad():
        torch.testing.assert_close(ref, forward.batch_logps(base, batch), atol=1e-5, rtol=1e-6)
        assert float((forward.batch_logps(model, batch) - ref).abs().max()) > 1e-3


def test_head_refusals(tok, batch):
    model = tinylm.tiny_llama(tok, hidden=48, layers=2, seed=7)
    with pytest.raises(ValueError, match="^path: 'head' needs a LogprobHead installed"):
        forward.batch_logps(model, batch, path="head")
    head = forward.install_logprob_head(model)
    with pytest.raises(ValueError, match=r"^labels: expected an int64 tensor of shape \[N, T\]"):
        with head.scoring(torch.zeros(3, dtype=torch.long)):
            pass
    with pytest.raises(ValueError, match=r"^hidden: the armed LogprobHead expected hidden states"):
        with head.scoring(torch.zeros(2, 5, dtype=torch.long)):
            model(input_ids=torch.ones(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="^head: a biased LM head is not supported"):
        forward.LogprobHead(torch.nn.Linear(4, 8, bias=True))
    with pytest.raises(TypeError, match="^head: expected the model's nn.Linear LM head"):
        forward.LogprobHead(torch.nn.Embedding(4, 8))
    # a model type whose forward is not known to be lm_head(hidden): left alone, logits path used
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128))
    assert forward.install_logprob_head(gpt2) is None
    assert type(gpt2.lm_head) is torch.nn.Linear
