"""ncakit.scale.generate: K sampled responses per prompt with LEFT padding (a prompt decodes the same alone
and in a batch with longer prompts), reward specs (module:function, callable, reward model with
padding-invariant scores), the canonical dataset it writes, and one on-policy round (generate ->
train on the file)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

from ncakit.scale import (  # noqa: E402
    data,  # noqa: E402
    generate,
    tinylm,
)

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-kit")
    return tinylm.ensure_tiny_kit(root, n_train=16, n_test=4, hidden=32, sft_steps=60)


PROMPTS = [
    [{"role": "user", "content": "copy: abc"}],
    [{"role": "user", "content": "reverse: abcdefghabcdefgh"}],  # longer: the others get left padding
    [{"role": "user", "content": "upper: dd"}],
]


def test_left_padding_gives_the_same_continuation_as_alone(kit):
    # top_p -> 0 keeps only the most likely token: greedy decoding, so the only thing that can change a
    # prompt's continuation is how it is padded in its batch
    greedy = dict(k=1, max_new_tokens=6, top_p=1e-9, seed=0)
    batched = generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS, batch_size=3, **greedy)
    for i, p in enumerate(PROMPTS):
        alone = generate.sample_k_responses(kit.model, kit.tokenizer, [p], batch_size=1, **greedy)
        assert alone[0] == batched[i], (i, alone, batched[i])


def test_sampling_is_seeded_and_returns_k_per_prompt(kit):
    kw = dict(k=4, max_new_tokens=8, batch_size=2)
    a = generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS, seed=1, **kw)
    b = generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS, seed=1, **kw)
    c = generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS, seed=2, **kw)
    assert a == b and a != c
    assert [len(x) for x in a] == [4, 4, 4]
    assert all("<|" not in r for x in a for r in x), "special tokens are removed"
    assert kit.model.training is False
    with pytest.raises(ValueError, match="^temperature"):
        generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS, temperature=0)


def test_reward_specs():
    fn = generate.load_reward("ncakit.scale.tinylm:reward")
    prompts = ["reverse: abc", "reverse: abc", [{"role": "user", "content": "copy: xy"}]]
    responses = ["cba", "cbx", "xy"]
    assert fn(prompts, responses) == [tinylm.reward(p, r) for p, r in zip(prompts, responses)]
    assert fn(prompts, responses)[0] == 1.0 and 0 < fn(prompts, responses)[1] < 1
    assert generate.load_reward(lambda p, r: len(r))(["a", "b"], ["xyz", ""]) == [3.0, 0.0]
    with pytest.raises(ValueError, match="^reward: cannot import module 'no_such_module'"):
        generate.load_reward("no_such_module:f")
    with pytest.raises(ValueError, match="^reward: 'ncakit.scale.tinylm' has no callable 'nope'"):
        generate.load_reward("ncakit.scale.tinylm:nope")
    with pytest.raises(ValueError, match="non-finite score nan"):
        generate.load_reward(lambda p, r: math.nan)(["a"], ["b"])
    with pytest.raises(ValueError, match="^responses: expected 2 entries"):
        fn(["a", "b"], ["x"])


def test_reward_model_scores_are_padding_invariant(kit, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = kit.tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    fn = generate.load_reward(str(tmp_path / "rm"), batch_size=3)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]]
    responses = ["abc", "a much longer answer than the others", "DD", ""]
    scores = fn(prompts, responses)
    for p, r, s in zip(prompts, responses, scores):
        text = tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            alone = rm(input_ids=ids).logits[0, 0].item()
        assert s == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) > 1


def test_generate_k_dataset_writes_canonical_rows(kit, tmp_path):
    out = tmp_path / "gen.jsonl"
    rows, stats = generate.generate_k_dataset(
        kit.model, kit.tokenizer, PROMPTS, "ncakit.scale.tinylm:reward", out, k=4, max_new_tokens=8, seed=3
    )
    assert stats["prompts"] == 3 and stats["responses"] == 12
    for row, p in zip(rows, PROMPTS):
        assert row["prompt"] == p and len(row["responses"]) == 4
        assert row["rewards"] == sorted(row["rewards"], reverse=True), "best first"
        texts = [r[0]["content"] for r in row["responses"]]
        assert row["rewards"] == [tinylm.reward(p, t) for t in texts]
    loaded, lstats = data.load_k_dataset(str(out), warn=False)
    assert lstats.rows_kept == 3 and lstats.k_counts == {4: 3}
    meta = json.loads((tmp_path / "gen.jsonl.meta.json").read_text())
    assert meta["reward"] == "ncakit.scale.tinylm:reward" and meta["k"] == 4


def test_on_policy_round_generate_then_train(kit, tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from ncakit.scale.train import main as train_main

    out = tmp_path / "onpolicy.jsonl"
    rows, stats = generate.main(
        ["--model", str(kit.model_path), "--tokenizer", str(kit.tokenizer_path), "--prompts", "tinylm", "--max_prompts", "12",
         "--k", "4", "--max_new_tokens", "8", "--out", str(out)]
    )  # fmt: skip
    assert stats["prompts"] == 12 and out.is_file()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    res = train_main(
        ["--model_name_or_path", str(kit.model_path), "--tokenizer_name_or_path", str(kit.tokenizer_path),
         "--dataset_name", str(out), "--max_length", "64", "--max_prompt_length", "48", "--loss_kwargs", "{alpha: 0.1}",
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
         "--output_dir", str(tmp_path / "run"), "--progress", "false", "--save_final", "false"]
    )  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert len(losses) == 2 and losses[0] == pytest.approx(2 * math.log(2), abs=1e-5)  # policy = reference
    # sampled answers can tie on reward; ties still train (NCA reads soft labels)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["k"] == 4


# ----------------------------------------------------------------------------------------------
# Issue 14, item 8: every argument checked before a model is loaded; atomic, incremental writes;
# an existing tiny kit is reused as is, never rebuilt
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: the errors below must come before one."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(tinylm, "ensure_tiny_kit", boom)
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--k", "1"], "^k: expected an int >= 2"),
        (["--max_prompts", "0"], "^max_prompts: expected an int >= 1"),
        (["--batch_size", "0"], "^batch_size: expected an int >= 1"),
        (["--rm_batch_size", "0"], "^rm_batch_size: expected an int >= 1"),
        (["--temperature", "0"], "^temperature: expected a finite value > 0"),
        (["--temperature", "nan"], "^temperature: expected a finite value > 0"),
        (["--top_p", "1.5"], r"^top_p: expected a value in \(0, 1\]"),
        (["--max_new_tokens", "0"], "^max_new_tokens: expected an int >= 1"),
        (["--prompts", "./no/such/prompts.jsonl"], "^prompts: expected an existing local file"),
        (["--reward", "math:sqrt"], r"^reward: expected fn\(prompt, response\)"),
    ],
)
def test_main_checks_arguments_before_loading_a_model(extra, match, tmp_path, no_model_loading):
    with pytest.raises(ValueError, match=match):
        generate.main(["--out", str(tmp_path / "o.jsonl"), "--max_prompts", "2", *extra])
    assert not list(tmp_path.iterdir()), "nothing written"


def test_out_path_is_checked_first(tmp_path, no_model_loading):
    (tmp_path / "taken.jsonl").write_text("keep me\n")
    (tmp_path / "afile").write_text("")
    cases = [
        (str(tmp_path / "o.csv"), "^out: expected a file name ending in .jsonl, .json or .parquet"),
        (str(tmp_path), "^out: expected a .jsonl, .json or .parquet file path, got the folder"),
        (str(tmp_path / "taken.jsonl"), "^out: expected a new file, got the existing .*--overwrite true"),
        (str(tmp_path / "afile" / "o.jsonl"), "^out: expected a folder to write into.*is a file"),
        ("", "^out: expected a .jsonl, .json or .parquet file path, got ''"),
    ]
    for out, match in cases:
        with pytest.raises(ValueError, match=match):
            generate.main(["--out", out])
    assert (tmp_path / "taken.jsonl").read_text() == "keep me\n"


def test_a_crash_mid_generation_leaves_nothing_half_written(kit, tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text("the old file\n")
    calls = {"n": 0}

    def flaky(prompt, response):
        calls["n"] += 1
        if calls["n"] > 1 + 4:  # the one-example check, then the first batch (1 prompt x 4)
            raise RuntimeError("the reward server went away")
        return 0.5

    with pytest.raises(RuntimeError, match="went away"):
        generate.generate_k_dataset(
            kit.model, kit.tokenizer, PROMPTS, flaky, out, k=4, max_new_tokens=4, batch_size=1
        )
    assert out.read_text() == "the old file\n", "the old file is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.jsonl"], "no temporary file is left"


def test_batches_written_incrementally_give_the_same_rows(kit, tmp_path):
    kw = dict(k=3, max_new_tokens=5, seed=7)
    one, _ = generate.generate_k_dataset(
        kit.model,
        kit.tokenizer,
        PROMPTS,
        "ncakit.scale.tinylm:reward",
        tmp_path / "a.jsonl",
        batch_size=3,
        **kw,
    )
    many, _ = generate.generate_k_dataset(
        kit.model,
        kit.tokenizer,
        PROMPTS,
        "ncakit.scale.tinylm:reward",
        tmp_path / "b.jsonl",
        batch_size=1,
        **kw,
    )
    whole = generate.sample_k_responses(kit.model, kit.tokenizer, PROMPTS[1:], batch_size=1, **kw)
    assert [r[0]["content"] for r in many[1]["responses"]] != [] and len(whole) == 2
    assert (tmp_path / "b.jsonl").read_text().count("\n") == 3
    assert [len(r["responses"]) for r in one] == [3, 3, 3] == [len(r["responses"]) for r in many]


def test_full_disk_is_named(kit, tmp_path, monkeypatch):
    from ncakit.scale.data import load as load_mod

    def full(path):
        return open("/dev/full", "w"), tmp_path / "never-created.partial"

    monkeypatch.setattr(load_mod, "_open_temp", full)
    out = tmp_path / "gen.jsonl"
    with pytest.raises(OSError, match=f"^no space left on device writing {out}$"):
        generate.generate_k_dataset(
            kit.model, kit.tokenizer, PROMPTS[:1], "ncakit.scale.tinylm:reward", out, k=2, max_new_tokens=2
        )
    with pytest.raises(OSError, match="^no space left on device writing .*x.json$"):
        data.save_k_dataset(
            [{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}], tmp_path / "x.json"
        )
    assert not out.exists()


def test_an_existing_tiny_kit_is_reused_never_rebuilt(kit, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in kit.root.iterdir()}
    rows, stats = generate.main(
        ["--tiny_kit_dir", str(kit.root), "--max_prompts", "2", "--k", "2", "--max_new_tokens", "3",
         "--out", str(tmp_path / "o.jsonl")]
    )  # fmt: skip
    assert stats["prompts"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in kit.root.iterdir()} == before, "the kit is untouched"
    broken = tmp_path / "broken-kit"
    broken.mkdir()
    (broken / "kit.json").write_text('{"n_train": 8}')
    with pytest.raises(ValueError, match="^tiny_kit_dir: expected a complete tiny kit .* not rebuilt"):
        generate.main(["--tiny_kit_dir", str(broken), "--out", str(tmp_path / "p.jsonl")])
    (tmp_path / "kitfile").write_text("")
    with pytest.raises(ValueError, match="^tiny_kit_dir: expected a folder"):
        generate.main(["--tiny_kit_dir", str(tmp_path / "kitfile"), "--out", str(tmp_path / "p.jsonl")])


def test_cli_prints_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert generate.cli(["--k", "1", "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "scale/generate.py: error: k: expected an int >= 2 (responses per prompt: a comparison needs two), got 1"
    ]
    with pytest.raises(ValueError, match="^k: "):
        generate.cli(["--k", "1", "--out", str(tmp_path / "o.jsonl"), "--debug", "true"])
    monkeypatch.setenv("NCAKIT_DEBUG", "1")
    with pytest.raises(ValueError, match="^k: "):
        generate.cli(["--k", "1", "--out", str(tmp_path / "o.jsonl")])
