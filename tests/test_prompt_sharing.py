"""ncakit.scale.prefix.shared_prompt_logps (each prompt run once, its keys/values reused by its K
responses) equals the unshared oracle ``batch_logps(model, batch, path="logits")`` in values and
parameter gradients: Llama (eager and sdpa), Mistral (GQA; its sliding window longer than these
tiny sequences), Qwen2 (tied embeddings), LoRA adapters, no_grad, ``average=True``, every path
(the armed LogprobHead with token statistics, hidden, logits), non-reentrant gradient checkpointing
in training mode; on random batches with ragged prompt and response lengths and a masked (padding)
response. It refuses reentrant gradient checkpointing, a binding sliding window and prompts the K
rows do not share."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ncakit.scale.data import KResponseCollator  # noqa: E402
from ncakit.scale.forward import batch_logps, install_logprob_head  # noqa: E402
from ncakit.scale.prefix import shared_prompt_logps, split_prompt_responses  # noqa: E402

V = 97
PAD = 0
RTOL = 1e-5


def _config(family: str, attn: str):
    common = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=256,
        pad_token_id=PAD,
        initializer_range=0.1,  # larger than the default 0.02: positions and context matter more
    )
    if family == "llama":
        cfg = LlamaConfig(**common)
    elif family == "mistral":
        cfg = MistralConfig(**common, sliding_window=128)  # longer than every test sequence
    elif family == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=True)
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn
    return cfg


def _model(family: str, attn: str = "eager", seed: int = 0):
    cls = {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM}[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(_config(family, attn)).float()
    return model.eval()


def _batch(seed: int = 0, k: int = 4, shapes=None):
    """Random rows: ragged prompts, ragged responses, one prompt with a missing (masked) response."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [(3, [5, 2, 7]), (11, [1, 4, 9, 3]), (1, [3, 3, 2, 8]), (6, [12, 1, 5, 5])]
    rows = []
    for lp, lrs in shapes:
        rows.append(
            {
                "prompt_ids": torch.randint(1, V, (lp,), generator=g).tolist(),
                "response_ids": [torch.randint(1, V, (n,), generator=g).tolist() for n in lrs[:k]],
                "rewards": [0.0] * len(lrs[:k]),
            }
        )
    return KResponseCollator(PAD, k=k)(rows)


def _assert_close_rel(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL, what: str = ""):
    got, want = got.detach().double(), want.detach().double()
    scale = float(want.abs().max()) + 1e-12
    err = float((got - want).abs().max())
    assert err <= rtol * scale, (what, err, scale)
    return err / scale


def _grads_match(model_a, model_b, weights, batch):
    want = batch_logps(model_a, batch, path="logits")
    got = shared_prompt_logps(model_b, batch)
    _assert_close_rel(got, want, what="values")
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    n = 0
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        if not pa.requires_grad:
            assert pb.grad is None
            continue
        assert pa.grad is not None and pb.grad is not None, name
        _assert_close_rel(pb.grad, pa.grad, what=name)
        n += 1
    return want, got, n


@pytest.mark.parametrize(
    "family,attn",
    [("llama", "eager"), ("llama", "sdpa"), ("mistral", "eager"), ("mistral", "sdpa"), ("qwen2", "sdpa")],
)
def test_values_and_gradients_equal_the_unshared_path(family, attn):
    batch = _batch(seed=1)
    assert not bool(batch["mask"].all()), "the batch has a masked response"
    base = _model(family, attn, seed=2)
    shared = copy.deepcopy(base)
    weights = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(3))
    want, got, n = _grads_match(base, shared, weights, batch)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert float(got.detach()[0, 3]) == 0.0, "masked response: exactly 0"
    assert n >= 15
    if family == "qwen2":
        assert shared.lm_head.weight is shared.model.embed_tokens.weight, "tied embeddings"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_both_paths_no_grad_and_average(family):
    model = _model(family, "sdpa", seed=4)
    batch = _batch(seed=5)
    with torch.no_grad():
        want = batch_logps(model, batch, path="logits")
        want_avg = batch_logps(model, batch, path="logits", average=True)
        for path in ("hidden", "logits", "auto"):
            got = shared_prompt_logps(model, batch, path=path)
            assert not got.requires_grad
            _assert_close_rel(got, want, what=path)
            _assert_close_rel(shared_prompt_logps(model, batch, path=path, average=True), want_avg, what=path)


@pytest.mark.parametrize("k", [1, 2, 8])
def test_other_k_and_a_long_prompt(k):
    model = _model("llama", "eager", seed=6)
    shapes = [(40, [3, 17, 1, 9, 2, 30, 4, 6]), (2, [25, 1, 1, 5, 7, 8]), (13, [4])]
    batch = _batch(seed=7, k=k, shapes=shapes)
    with torch.no_grad():
        _assert_close_rel(shared_prompt_logps(model, batch), batch_logps(model, batch, path="logits"))


def test_lora_adapters_values_and_gradients():
    peft = pytest.importorskip("peft")
    base = _model("llama", "sdpa", seed=8)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    a = peft.get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, p in a.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    b = copy.deepcopy(a)
    batch = _batch(seed=9)
    weights = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(10))
    _, _, n = _grads_match(a, b, weights, batch)
    assert n == 4 * 2 * 2, "lora_A and lora_B of 4 modules in 2 layers"
    with torch.no_grad():  # the adapter-off reference goes through the same function
        with b.disable_adapter():
            ref = shared_prompt_logps(b, batch)
        _assert_close_rel(ref, batch_logps(base, batch, path="logits"))


def test_mistral_lora_and_logprob_head_installed():
    peft = pytest.importorskip("peft")
    base = _model("mistral", "eager", seed=11)
    install_logprob_head(base)  # unarmed: a plain linear head, the shared path still applies
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    batch = _batch(seed=12)
    with torch.no_grad():
        want = batch_logps(model, batch, path="logits")
        for path in ("auto", "logits"):  # the logits path goes through the peft model's own forward
            _assert_close_rel(shared_prompt_logps(model, batch, path=path), want, what=path)


def test_a_prompt_with_every_response_masked():
    model = _model("qwen2", "sdpa", seed=18)
    batch = _batch(seed=19)
    B, K = batch["mask"].shape
    batch = {key: v.clone() for key, v in batch.items()}
    rows = slice(2 * K, 3 * K)  # prompt 2: all K slots become 1-token dummies, as the collator writes them
    batch["input_ids"][rows] = PAD
    batch["attention_mask"][rows] = 0
    batch["attention_mask"][rows, 0] = 1
    batch["labels"][rows] = -100
    batch["mask"][2] = False
    weights = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(20))
    _, got, _ = _grads_match(model, copy.deepcopy(model), weights, batch)
    assert got.detach()[2].tolist() == [0.0] * K


def test_authors_style_attention_inside_the_text():
    """Rows with attention 0 on some real tokens (rendering: authors) keep that attention."""
    model = _model("llama", "eager", seed=13)
    batch = _batch(seed=14)
    att = batch["attention_mask"].clone()
    B, K = batch["mask"].shape
    for b in range(B):  # the same zero in each prompt's K rows, and one inside a response
        att[b * K : b * K + K, 0] = 0 if batch["prompt_lengths"][b] > 1 else 1
    att[1, 4] = 0
    batch = {**batch, "attention_mask": att}
    with torch.no_grad():
        _assert_close_rel(shared_prompt_logps(model, batch), batch_logps(model, batch, path="logits"))


def test_split_layout():
    batch = _batch(seed=15)
    sp = split_prompt_responses(batch)
    assert sp.prompt_lengths.tolist() == batch["prompt_lengths"].tolist()
    B, K = batch["mask"].shape
    # every scored token once; the first column (the last prompt token) is never scored
    assert int((sp.response_labels != -100).sum()) == int(batch["response_lengths"].sum())
    assert (sp.response_labels[:, 0] == -100).all()
    assert sp.prompt_ids.shape[1] == int(batch["prompt_lengths"].max()) - 1
    for n in range(B * K):
        b, lp = n // K, int(batch["prompt_lengths"][n // K])
        assert (
            sp.prompt_ids[b, : lp - 1].tolist() == batch["input_ids"][n, : lp - 1].tolist()
            or not (batch["mask"].view(-1)[n])
        )
        # the row continues the prompt at its unshared positions
        assert int(sp.response_positions[n, 0]) == lp - 1
        if batch["mask"].view(-1)[n]:
            span = int(batch["response_lengths"].view(-1)[n]) + 1
            assert (
                sp.response_ids[n, :span].tolist() == batch["input_ids"][n, lp - 1 : lp - 1 + span].tolist()
            )


def test_refusals():
    model = _model("llama", "eager", seed=16)
    batch = _batch(seed=17)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    with pytest.raises(
        ValueError, match="^model: prompt sharing is not supported with reentrant gradient checkpointing"
    ):
        shared_prompt_logps(model, batch)
    small = MistralForCausalLM(
        MistralConfig(**{**_config("mistral", "eager").to_dict(), "sliding_window": 8})
    )
    with pytest.raises(ValueError, match="^model: sliding window 8"):
        shared_prompt_logps(small, batch)
    bad = {**batch, "input_ids": batch["input_ids"].clone()}
    bad["input_ids"][1, 0] += 1  # row 1 no longer repeats prompt 0
    with pytest.raises(ValueError, match="^input_ids: row 1 does not repeat"):
        shared_prompt_logps(_model("llama"), bad)
    with pytest.raises(ValueError, match="^path: expected"):
        shared_prompt_logps(_model("llama"), batch, path="bogus")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_logprob_head_path_token_stats_and_gradients(family):
    """The training script's path: the installed LogprobHead armed for the response pass, through
    the model's own forward (what DDP / FSDP2 / ZeRO-3 wrappers need), token statistics included."""
    base = _model(family, "sdpa", seed=21)
    shared = copy.deepcopy(base)
    install_logprob_head(shared)
    batch = _batch(seed=22)
    weights = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(23))
    want, want_stats = batch_logps(base, batch, path="logits", stats=True)
    got, got_stats = batch_logps(shared, batch, stats=True, share_prompt=True)
    _assert_close_rel(got, want, what="values")
    for name, value in want_stats.items().items():
        _assert_close_rel(got_stats.items()[name], value, what=name)
    assert torch.equal(
        got_stats.items()["tokens"], batch["response_lengths"].to(got_stats.items()["tokens"].dtype)
    )
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, pa), (_, pb) in zip(base.named_parameters(), shared.named_parameters()):
        _assert_close_rel(pb.grad, pa.grad, what=name)


def test_every_prompt_one_token_and_k_one_rows():
    """Nothing to cache (every prompt is one token): the response pass alone, no past."""
    model = _model("llama", "eager", seed=24)
    batch = _batch(seed=25, shapes=[(1, [4, 2]), (1, [3, 6])], k=2)
    assert split_prompt_responses(batch).prompt_ids.shape[1] == 0
    with torch.no_grad():
        _assert_close_rel(
            batch_logps(model, batch, share_prompt=True), batch_logps(model, batch, path="logits")
        )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gradient_checkpointing_values_and_gradients(family):
    """Non-reentrant checkpointing in training mode (the training script's; QLoRA's): the checkpointed
    layers keep the prompt's cache (written once, read only by the responses), so the recomputation
    in the backward sees what the forward saw: values and every gradient equal the unshared path's,
    through the installed log-prob head as in training."""
    base = _model(family, "sdpa", seed=26).train()
    shared = copy.deepcopy(base)
    install_logprob_head(shared)
    shared.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert shared.model.layers[0].gradient_checkpointing is True
    batch = _batch(seed=27)
    weights = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(28))
    want = batch_logps(base, batch, path="logits")
    got = batch_logps(shared, batch, share_prompt=True)
    _assert_close_rel(got, want, what="values")
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, pa), (_, pb) in zip(base.named_parameters(), shared.named_parameters()):
        _assert_close_rel(pb.grad, pa.grad, what=name)
    # the flag HF's checkpointed layers read is back to the class's own after the call
    assert "_can_checkpoint_with_cache" not in shared.model.layers[0].__dict__


def test_resolve_prompt_sharing_says_why_auto_is_off():
    """``prompt_sharing: auto`` per run: on where it is tested, off with a reason otherwise; ``true``
    raises that reason in one line; ``false`` is off."""
    from ncakit.scale.prefix import resolve_prompt_sharing

    llama = _model("llama", "sdpa")
    on = resolve_prompt_sharing("auto", llama, k=4, max_cache_len=64)
    assert on == {"setting": "auto", "policy": True, "reference": True, "reason": None}
    assert resolve_prompt_sharing(False, llama, k=4, max_cache_len=64)["policy"] is False
    off = resolve_prompt_sharing("auto", llama, k=1, max_cache_len=64)
    assert not off["policy"] and not off["reference"] and off["reason"].startswith("K = 1")
    assert resolve_prompt_sharing(True, llama, k=1, max_cache_len=64)["policy"] is True  # forced
    llama.config._attn_implementation = "flex_attention"  # untested here: auto is off, true forces it
    assert (
        "attention 'flex_attention'" in resolve_prompt_sharing("auto", llama, k=4, max_cache_len=64)["reason"]
    )
    mistral = _model("mistral", "eager")  # sliding window 128
    assert resolve_prompt_sharing("auto", mistral, k=4, max_cache_len=100)["policy"] is True
    binding = resolve_prompt_sharing("auto", mistral, k=4, max_cache_len=200)
    assert not binding["reference"] and binding["reason"].startswith("sliding window 128")
    with pytest.raises(ValueError, match="^prompt_sharing: true, but sliding window 128"):
        resolve_prompt_sharing(True, mistral, k=4, max_cache_len=200)
    with pytest.raises(ValueError, match="^prompt_sharing: expected auto, true or false"):
        resolve_prompt_sharing("yes", mistral, k=4, max_cache_len=10)
