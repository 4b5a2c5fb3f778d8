"""ncakit.scale.tinylm: the offline tokenizer / tiny Llama / synthetic reward data, and their
save-reload round trips (tokenizer + model + dataset)."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from ncakit.scale import data, tinylm  # noqa: E402

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(500, seed=1)), vocab_size=384)


def test_tokenizer_specials_bytes_and_chat_template(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 384 and tok.padding_side == "right"
    for text in ("reverse: dacb", "héllo wörld ☃ 123", "\n\t  "):  # byte-level: anything round-trips
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok("reverse: dacb")["input_ids"]) < len("reverse: dacb"), "BPE merges learned from the corpus"
    msgs = [{"role": "user", "content": "copy: ab"}, {"role": "assistant", "content": "ab"}]
    assert (
        tok.apply_chat_template(msgs, tokenize=False)
        == "<|bos|><|user|>\ncopy: ab<|eos|><|assistant|>\nab<|eos|>"
    )
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|user|>\ncopy: ab<|eos|><|assistant|>\n"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|bos|>", "<|user|>"], "role markers are single tokens"
    with pytest.raises(ValueError, match="^vocab_size"):
        tinylm.train_tokenizer(["abc"], vocab_size=100)


def test_tokenizer_save_reload(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.chat_template == tok.chat_template == tinylm.CHAT_TEMPLATE
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    for text in ("sort: hgfe", "<|user|>\nx<|eos|>"):
        assert again(text)["input_ids"] == tok(text)["input_ids"]
    ex = {"prompt": "copy: abc", "responses": ["abc", "abd"], "rewards": [1.0, 0.5]}
    assert data.tokenize_k_example(ex, again) == data.tokenize_k_example(ex, tok)


def test_tiny_llama_config_seed_and_save_reload(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    m = tinylm.tiny_llama(tok, hidden=64, layers=2, seed=3)
    cfg = m.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, 2, len(tok))
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    n_params = sum(p.numel() for p in m.parameters())
    assert 50_000 < n_params < 300_000, n_params
    same = tinylm.tiny_llama(tok, hidden=64, layers=2, seed=3)
    other = tinylm.tiny_llama(tok, hidden=64, layers=2, seed=4)
    ids = torch.tensor([tok("reverse: abc")["input_ids"]])
    with torch.no_grad():
        logits = m(input_ids=ids).logits
        assert torch.equal(logits, same(input_ids=ids).logits), "seeded"
        assert not torch.allclose(logits, other(input_ids=ids).logits)
    state = torch.get_rng_state()
    tinylm.tiny_llama(tok, seed=9)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG is untouched"
    m.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="^hidden/heads/kv_heads"):
        tinylm.tiny_llama(tok, hidden=50, heads=4)


def test_reward_is_graded():
    assert tinylm.reward("reverse: abcd", "dcba") == 1.0
    assert tinylm.reward("reverse: abcd", " dcba \n") == 1.0, "surrounding whitespace ignored"
    assert tinylm.reward("sort: dcba", "abcd") == 1.0
    assert tinylm.reward("upper: abc", "ABC") == 1.0
    assert tinylm.reward("copy: abcd", "abcx") == pytest.approx(0.75)  # one substitution in four
    assert tinylm.reward("copy: abcd", "") == 0.0
    assert tinylm.reward("copy: abcd", "wxyz") == 0.0
    msgs = [{"role": "user", "content": "reverse: ab"}]
    assert tinylm.reward(msgs, [{"role": "assistant", "content": "ba"}]) == 1.0
    assert tinylm.rewards(["copy: ab"] * 3, ["ab", "a", "zz"]) == [1.0, 0.5, 0.0]
    # graded: more random edits -> lower reward on average (partial credit, not 0/1)
    rng = random.Random(0)
    corpus = tinylm.synthetic_corpus(200, seed=0, min_len=6, max_len=8)
    means = [
        statistics.mean(tinylm.reward(ex["prompt"], tinylm.corrupt(ex["response"], n, rng)) for ex in corpus)
        for n in (0, 1, 2, 4)
    ]
    assert means[0] == 1.0 and means[0] > means[1] > means[2] > means[3] > 0.2, means
    with pytest.raises(ValueError, match="^task"):
        tinylm.reward("shout: abc", "ABC")
    with pytest.raises(ValueError, match="^prompt"):
        tinylm.reward("no task here", "x")


def test_synthetic_k_dataset_is_canonical_graded_and_deterministic():
    rows = tinylm.synthetic_k_dataset(40, k=4, seed=7)
    assert rows == tinylm.synthetic_k_dataset(40, k=4, seed=7)
    assert rows != tinylm.synthetic_k_dataset(40, k=4, seed=8)
    distinct_rewards = 0
    for row in rows:
        data.from_canonical(row)
        texts = [r[0]["content"] for r in row["responses"]]
        assert len(set(texts)) == 4, "K distinct responses"
        assert row["rewards"] == sorted(row["rewards"], reverse=True), "best-first"
        assert row["rewards"] == pytest.approx([tinylm.reward(row["prompt"], t) for t in texts])
        distinct_rewards += len(set(row["rewards"])) > 1
    assert distinct_rewards >= 38, "rewards differ within (almost) every prompt"
    text_rows = tinylm.synthetic_k_dataset(3, k=2, seed=1, chat=False, reward_scale=10.0)
    assert isinstance(text_rows[0]["prompt"], str) and isinstance(text_rows[0]["responses"][0], str)
    assert max(r for row in text_rows for r in row["rewards"]) == 10.0
    with pytest.raises(ValueError, match="^k"):
        tinylm.synthetic_k_dataset(3, k=1)


def test_build_tiny_kit_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kit = tinylm.build_tiny_kit(
        tmp_path / "kit", n_train=24, n_test=6, k=4, vocab_size=320, hidden=32, seed=1
    )
    tok = AutoTokenizer.from_pretrained(kit.tokenizer_path)
    model = AutoModelForCausalLM.from_pretrained(kit.model_path)
    train, stats = data.load_k_dataset(str(kit.train_path), cache_dir=str(tmp_path / "hf"))
    assert stats.rows_in == stats.rows_kept == 24 and stats.k_counts == {4: 24}
    assert train.to_list() == tinylm.synthetic_k_dataset(24, 4, seed=1)
    assert len(data.load_k_dataset(str(kit.test_path), cache_dir=str(tmp_path / "hf")).dataset) == 6
    ids = torch.tensor([tok("copy: abc")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, kit.model(input_ids=ids).logits, rtol=0, atol=0
        )
    assert tok.chat_template == kit.tokenizer.chat_template
    prepared, pstats = data.prepare_k_dataset(
        str(kit.train_path), tok, max_length=64, max_prompt_length=32, cache_dir=str(tmp_path / "hf")
    )
    assert pstats.rows_kept == 24 and len(prepared) == 24
    assert (kit.root / "kit.json").is_file()


def test_sft_warmup_learns_the_correct_answers(tok):
    model = tinylm.tiny_llama(tok, hidden=32, layers=2, seed=2)
    rows = tinylm.synthetic_corpus(256, seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    losses = tinylm.sft_warmup(model, tok, rows, steps=60, batch_size=16, lr=3e-3, warmup_steps=5, seed=1)
    assert len(losses) == 60 and not model.training
    assert all(p.grad is None for p in model.parameters()), "no stale gradients left for the next trainer"
    # the response-token NLL starts near ln(V) (an untrained model) and falls well below it
    assert losses[0] == pytest.approx(math.log(len(tok)), rel=0.15)
    assert sum(losses[-10:]) / 10 < losses[0] - 1.5
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    again = tinylm.tiny_llama(tok, hidden=32, layers=2, seed=2)
    assert (
        tinylm.sft_warmup(again, tok, rows, steps=60, batch_size=16, lr=3e-3, warmup_steps=5, seed=1)
        == losses
    )


def test_ensure_tiny_kit_builds_once_and_rebuilds_on_new_settings(tmp_path):
    settings = dict(n_train=8, n_test=2, vocab_size=320, hidden=32, sft_steps=5, seed=1)
    kit = tinylm.ensure_tiny_kit(tmp_path / "kit", **settings)
    meta = json.loads((kit.root / "kit.json").read_text())
    assert meta["sft_steps"] == 5 and meta["sft_loss_last"] is not None
    stamp = (kit.model_path / "model.safetensors").stat().st_mtime_ns
    again = tinylm.ensure_tiny_kit(tmp_path / "kit", **settings)
    assert (kit.model_path / "model.safetensors").stat().st_mtime_ns == stamp, "reloaded, not rebuilt"
    for a, b in zip(kit.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    tinylm.ensure_tiny_kit(tmp_path / "kit", **{**settings, "sft_steps": 6})
    assert json.loads((kit.root / "kit.json").read_text())["sft_steps"] == 6, "new settings: rebuilt"
    with pytest.raises(TypeError, match=r"^settings: unknown tiny-kit setting\(s\) \['hiden'\]"):
        tinylm.ensure_tiny_kit(tmp_path / "kit", hiden=3)
