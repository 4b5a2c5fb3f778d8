"""ncakit.scale.forward and ncakit.scale.reference: batch log-probs == one-by-one log-probs (padding changes nothing), the
precompute pass and its disk cache (a hit runs no forward pass), and precomputed == on-the-fly
reference from the same peft model with a NON-ZERO LoRA adapter disabled, and the three reference
modes (precompute / adapter / model) as objects that agree. Tiny model, CPU."""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

import torch  # noqa: E402

from ncakit.scale import (  # noqa: E402
    data,  # noqa: E402
    forward,
    refcache,
    reference,
    tinylm,
)
from ncakit.scale.data import KResponseCollator  # noqa: E402

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(400, seed=3)), vocab_size=320)


@pytest.fixture(scope="module")
def model(tok):
    m = tinylm.tiny_llama(tok, hidden=48, layers=2, heads=4, kv_heads=2, seed=11)
    return m.eval()


@pytest.fixture(scope="module")
def dataset(tok):
    rows = tinylm.synthetic_k_dataset(10, k=4, seed=2)
    rows[3]["responses"], rows[3]["rewards"] = rows[3]["responses"][:2], rows[3]["rewards"][:2]
    rows[6]["responses"], rows[6]["rewards"] = rows[6]["responses"][:3], rows[6]["rewards"][:3]
    rows[8]["prompt"][0]["content"] += " " + "abcdefgh" * 4  # a longer prompt: real padding differences
    return data.tokenize_k_dataset(rows, tok, max_length=96, max_prompt_length=64).dataset


@pytest.fixture(scope="module")
def collate(tok):
    return KResponseCollator(tok.pad_token_id, k=4)


def one_by_one(model, prompt_ids, response_ids):
    """The oracle: one unpadded sequence, full log_softmax in float64, response tokens summed."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    tok_logp = logp.gather(1, targets[:, None])[:, 0]
    return float(tok_logp[len(prompt_ids) - 1 :].sum())


@pytest.mark.parametrize("path", ["hidden", "logits", "auto"])
def test_batch_logps_equal_one_by_one(model, dataset, collate, path):
    rows = [dataset[i] for i in range(len(dataset))]
    batch = collate(rows)
    with torch.no_grad():
        got = forward.batch_logps(model, batch, path=path)
    assert got.shape == (len(rows), 4) and got.dtype == torch.float32
    for b, r in enumerate(rows):
        for k in range(4):
            if k < len(r["response_ids"]):
                want = one_by_one(model, r["prompt_ids"], r["response_ids"][k])
                assert got[b, k].item() == pytest.approx(want, abs=2e-4, rel=1e-5), (b, k)
            else:
                assert got[b, k].item() == 0.0, "masked responses are exactly 0"


def test_padding_changes_nothing(model, dataset, collate):
    with torch.no_grad():
        alone = forward.batch_logps(model, collate([dataset[0]]))
        padded = forward.batch_logps(model, collate([dataset[0], dataset[8]]))  # row 8 is much longer
        mult = forward.batch_logps(model, KResponseCollator(0, k=4, pad_to_multiple_of=64)([dataset[0]]))
    assert (
        collate([dataset[0], dataset[8]])["input_ids"].shape[1] > collate([dataset[0]])["input_ids"].shape[1]
    )
    torch.testing.assert_close(padded[0], alone[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(mult[0], alone[0], atol=2e-5, rtol=0)


def test_batch_logps_average_and_grad(model, dataset, collate):
    batch = collate([dataset[i] for i in range(3)])
    total = forward.batch_logps(model, batch)
    mean = forward.batch_logps(model, batch, average=True)
    lengths = batch["response_lengths"].clamp(min=1)
    torch.testing.assert_close(mean, total / lengths * batch["mask"], atol=1e-5, rtol=1e-5)
    assert total.requires_grad, "the policy path keeps the graph (the trainer backpropagates through it)"
    with pytest.raises(ValueError, match="^path"):
        forward.batch_logps(model, batch, path="fast")
    with pytest.raises(ValueError, match="^mask: missing"):
        forward.batch_logps(model, {k: v for k, v in batch.items() if k != "mask"})


class ForwardCounter:
    """Counts forward passes through the input embeddings (every path goes through them)."""

    def __init__(self, model):
        self.calls = 0
        emb = forward.causal_lm(model).get_input_embeddings()
        self.handle = emb.register_forward_hook(lambda *a: self._hit())

    def _hit(self):
        self.calls += 1

    def close(self):
        self.handle.remove()


def test_precompute_then_cache_hit_runs_no_forward(model, dataset, collate, tok, tmp_path):
    counter = ForwardCounter(model)
    try:
        first = reference.precompute_reference_logps(
            model,
            dataset,
            collate,
            batch_size=4,
            cache_dir=tmp_path,
            tokenizer=tok,
            key_extra={"max_length": 96},
        )
        assert counter.calls == 3  # ceil(10 / 4) batches
        assert first.info["cache_hit"] is False and first.info["sequences"] == 4 * 10 - 2 - 1
        assert refcache.cache_file(tmp_path, first.info["key"]).is_file()
        assert [p.name for p in tmp_path.iterdir()] == [refcache.cache_file(tmp_path, first.info["key"]).name]
        counter.calls = 0
        second = reference.precompute_reference_logps(
            model,
            dataset,
            collate,
            batch_size=7,
            cache_dir=tmp_path,
            tokenizer=tok,
            key_extra={"max_length": 96},
        )
        assert counter.calls == 0, "a cache hit runs no forward pass"
        assert second.info["cache_hit"] is True and second.info["key"] == first.info["key"]
        assert second.dataset["ref_logps"] == first.dataset["ref_logps"]
        # anything in the key changes -> a miss
        third = reference.precompute_reference_logps(
            model,
            dataset,
            collate,
            batch_size=4,
            cache_dir=tmp_path,
            tokenizer=tok,
            key_extra={"max_length": 128},
        )
        assert counter.calls == 3 and third.info["cache_hit"] is False
    finally:
        counter.close()

    ref = first.dataset["ref_logps"]
    assert [len(v) for v in ref] == [len(r) for r in dataset["response_ids"]]
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        direct = forward.batch_logps(model, batch)
    for b, values in enumerate(ref):
        assert values == pytest.approx(direct[b, : len(values)].tolist(), abs=2e-5)
    # the collator now carries them: batch["ref_logps"] [B, K], 0 where masked
    with_ref = collate([first.dataset[i] for i in range(4)])
    assert with_ref["ref_logps"].shape == (4, 4)
    torch.testing.assert_close(with_ref["ref_logps"], direct[:4], atol=2e-5, rtol=0)


def test_precompute_on_row_lists_and_without_cache(model, dataset, collate):
    rows = dataset.to_list()
    out = reference.precompute_reference_logps(model, rows, collate, batch_size=3)
    assert isinstance(out.dataset, list) and out.info["cache_path"] is None
    assert out.info["sequences_per_s"] > 0 and out.info["tokens"] > out.info["sequences"]
    other = reference.precompute_reference_logps(model, dataset, collate, batch_size=5).dataset["ref_logps"]
    flat = [x for r in out.dataset for x in r["ref_logps"]]
    assert flat == pytest.approx([x for v in other for x in v], abs=2e-5)


def test_fingerprints(model, dataset, tok):
    rows = dataset.to_list()
    assert reference.data_fingerprint(dataset) == reference.data_fingerprint(rows), "Dataset == its rows"
    rows[2]["response_ids"][1][0] += 1
    assert reference.data_fingerprint(dataset) != reference.data_fingerprint(rows)
    assert reference.data_fingerprint(dataset.select([1, 0])) != reference.data_fingerprint(
        dataset.select([0, 1])
    )
    fp = reference.model_fingerprint(model)
    other = copy.deepcopy(model)
    assert reference.model_fingerprint(other) == fp
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert reference.model_fingerprint(other) != fp
    plain = tinylm.train_tokenizer(["abc"] * 3, vocab_size=300)
    assert reference.tokenizer_fingerprint(tok) != reference.tokenizer_fingerprint(plain)


@pytest.fixture(scope="module")
def peft_model(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random A AND B: the adapter changes the outputs from step 0
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 deprecation inside peft
        torch.manual_seed(0)
        pm = peft.get_peft_model(copy.deepcopy(model), config)
    return pm


def test_precomputed_equals_on_the_fly_from_disabled_adapter(model, peft_model, dataset, collate, tmp_path):
    pre = reference.precompute_reference_logps(model, dataset, collate, batch_size=4, cache_dir=tmp_path)
    peft_model.train()  # as in a training loop: the function switches to eval and back
    for batch in data.make_dataloader(pre.dataset, collate, batch_size=3, shuffle=True, seed=5):
        on_the_fly = reference.reference_logps_from_adapter(peft_model, batch)
        assert not on_the_fly.requires_grad
        torch.testing.assert_close(on_the_fly, batch["ref_logps"], atol=2e-5, rtol=0)
        with torch.no_grad():
            adapted = forward.batch_logps(peft_model, batch)
        gap = (adapted - batch["ref_logps"]).abs()[batch["mask"]]
        assert gap.min() > 1e-3, "the adapter is non-zero, so disabling it matters"
    assert peft_model.training, "train mode restored"
    # the peft model's base weights have the same fingerprint as the base model: a cache hit
    again = reference.precompute_reference_logps(
        peft_model, dataset, collate, batch_size=4, cache_dir=tmp_path
    )
    assert again.info["cache_hit"] is True
    # with the adapter enabled it is another reference (another key, other numbers)
    enabled = reference.precompute_reference_logps(
        peft_model, dataset, collate, batch_size=4, cache_dir=tmp_path, disable_adapter=False
    )
    assert enabled.info["cache_hit"] is False and enabled.info["key"] != pre.info["key"]
    assert enabled.dataset["ref_logps"][0] != pytest.approx(pre.dataset["ref_logps"][0], abs=1e-3)


def test_adapter_reference_needs_a_peft_model(model, dataset, collate):
    with pytest.raises(TypeError, match="^model: expected a peft model"):
        reference.reference_logps_from_adapter(model, collate([dataset[0]]))


def test_reference_losses_at_policy_equal_reference(peft_model, dataset, collate):
    """With the adapter's B zeroed (policy == reference) the NCA loss hits MATH.md's 2·ln 2 anchor."""
    import math

    from ncakit import get_loss

    pm = copy.deepcopy(peft_model)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.zero_()
    batch = collate([dataset[i] for i in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = forward.batch_logps(pm, batch)
    ref = reference.reference_logps_from_adapter(pm, batch)
    out = get_loss("nca")(policy, ref, batch["rewards"], beta=0.1, mask=batch["mask"])
    assert out.loss.mean().item() == pytest.approx(2 * math.log(2), abs=1e-5)


def test_precompute_on_miss_raise(model, dataset, collate, tmp_path):
    """``on_miss='raise'``: a caller that must not spend a forward reads the cache or gets a clear error."""
    with pytest.raises(FileNotFoundError, match="^cache_dir: no reference log-probs cached"):
        reference.precompute_reference_logps(model, dataset, collate, cache_dir=tmp_path, on_miss="raise")
    filled = reference.precompute_reference_logps(model, dataset, collate, cache_dir=tmp_path)
    hit = reference.precompute_reference_logps(model, dataset, collate, cache_dir=tmp_path, on_miss="raise")
    assert hit.info["cache_hit"] and hit.dataset["ref_logps"] == filled.dataset["ref_logps"]
    with pytest.raises(ValueError, match="^on_miss: expected 'compute' or 'raise'"):
        reference.precompute_reference_logps(model, dataset, collate, cache_dir=tmp_path, on_miss="skip")


class _OneProcess:
    """The few accelerator members the reference objects use, for one CPU process."""

    num_processes, process_index, is_main_process = 1, 0, True
    device = torch.device("cpu")
    state = SimpleNamespace()

    def __init__(self, distributed_type: str = "NO"):
        self.distributed_type = SimpleNamespace(value=distributed_type)

    def autocast(self):
        return contextlib.nullcontext()

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model


def test_reference_modes_are_chosen_once_and_agree(model, peft_model, dataset, collate, tok, tmp_path):
    """make_reference picks one object per mode; the three give the same [B, K] reference log-probs
    (precomputed from the base, the peft model with its adapter disabled, a frozen copy of the base)."""
    from ncakit.scale.config import TrainConfig

    cfg = TrainConfig(model_name_or_path=str(tmp_path), output_dir=str(tmp_path / "run"), progress=False)
    acc = _OneProcess()
    modes = {
        m: reference.make_reference(replace(cfg, reference=m), acc)
        for m in ("precompute", "adapter", "model")
    }
    assert [type(r) for r in modes.values()] == [
        reference.PrecomputedReference,
        reference.AdapterReference,
        reference.ModelReference,
    ]
    # a folder without weight files (here: the model lives in memory only) falls back to the live weights
    assert reference.model_identity(cfg, model) == reference.model_fingerprint(model)
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = replace(cfg, model_name_or_path="org/name", model_revision=commit)
    assert reference.model_identity(hub) == f"hub:org/name@{commit}"

    train_ds, eval_ds, info = modes["precompute"].prepare(
        model, dataset, None, collate=collate, tokenizer=tok
    )
    assert eval_ds is None and info["train"]["shards"] == 1 and "ref_logps" in train_ds.column_names
    assert modes["adapter"].prepare(peft_model, dataset, None, collate=collate, tokenizer=tok) == (
        dataset,
        None,
        {},
    )
    modes["model"].prepare(model, dataset, None, collate=collate, tokenizer=tok)
    assert modes["model"].model is not model and not any(
        p.requires_grad for p in modes["model"].model.parameters()
    )
    batch = collate([train_ds[i] for i in range(4)])
    pre = modes["precompute"].logps(model, batch)
    torch.testing.assert_close(modes["adapter"].logps(peft_model, batch), pre, atol=2e-5, rtol=0)
    torch.testing.assert_close(modes["model"].logps(None, batch), pre, atol=2e-5, rtol=0)

    with pytest.raises(ValueError, match="^reference: 'precompute' but the batch has no ref_logps"):
        modes["precompute"].logps(model, collate([dataset[0]]))
    with pytest.raises(ValueError, match="^reference: 'model' .* single-device/DDP"):
        reference.make_reference(replace(cfg, reference="model"), _OneProcess("FSDP"))
