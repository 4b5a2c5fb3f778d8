"""ncakit.scale.generate: K sampled responses per prompt with LEFT padding (a prompt decodes the same alone
and in a batch with longer prompts), the canonical dataset it writes, one on-policy round (generate ->
train on the file), and the vLLM backend through a fake ``vllm`` module (same request, same file).
Rewards and judges: tests/test_rewards.py."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")


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
        (["--reward_batch_size", "0"], "^reward_batch_size: expected an int >= 1"),
        (["--rm_batch_size", "0"], "^reward_batch_size: expected an int >= 1"),  # the old name still parses
        (["--reward_workers", "0"], "^reward_workers: expected an int >= 1"),
        (["--backend", "jax"], r"^backend: expected one of \['hf', 'vllm'\], got 'jax'"),
        (["--tensor_parallel_size", "2"], "^tensor_parallel_size: only --backend vllm uses it"),
        (
            ["--backend", "vllm"],
            r"^backend: got 'vllm' but the vllm package is not installed .*ncakit\[vllm\]",
        ),
        (["--temperature", "0"], "^temperature: expected a finite value > 0"),
        (["--temperature", "nan"], "^temperature: expected a finite value > 0"),
        (["--top_p", "1.5"], r"^top_p: expected a value in \(0, 1\]"),
        (["--max_new_tokens", "0"], "^max_new_tokens: expected an int >= 1"),
        (["--prompts", "./no/such/prompts.jsonl"], "^prompts: expected an existing local file"),
        (["--reward", "math:sqrt"], r"^reward: expected fn\(prompt, response\)"),
    ],
)
def test_main_checks_arguments_before_loading_a_model(extra, match, tmp_path, no_model_loading, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # "not installed", even where it is
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


# ----------------------------------------------------------------------------------------------
# Issue 16, item 7: the vLLM backend, tested on CPU through a fake ``vllm`` module that records
# the request and answers canned outputs (vllm itself is never installed here)
# ----------------------------------------------------------------------------------------------

CANNED = [
    ["  abc ", "cba", "ab", ""],
    ["hgfedcba", " x ", "hgfedcbahgfedcba", "abc"],
    ["DD", "dd ", "D", "DDD"],
]


def _oracle_ids(tok, prompt):
    """The token ids the HF path feeds the model, computed here without the code under test."""
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _fake_vllm(tok, prompts):
    index = {tuple(_oracle_ids(tok, p)): i for i, p in enumerate(prompts)}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        made: list = []

        def __init__(self, **kw):
            self.kw, self.calls = kw, []
            LLM.made.append(self)

        def generate(self, requests, params, use_tqdm=False):
            self.calls.append((requests, params))
            out = []
            for req, sp in zip(requests, params):
                ids = tuple(req["prompt_token_ids"])  # a truncated prompt: its tail
                i = next(i for key, i in index.items() if key[-len(ids) :] == ids)
                texts = CANNED[i][: sp.kw["n"]]
                out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts]))
            return out

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_request_matches_the_hf_prompts_and_sampling(kit, monkeypatch):
    fake = _fake_vllm(kit.tokenizer, PROMPTS)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    llm = fake.LLM(model="m")
    kw = dict(k=3, max_new_tokens=5, temperature=0.7, top_p=0.9, seed=4)
    got = generate.sample_k_responses_vllm(llm, kit.tokenizer, PROMPTS, **kw)
    requests, params = llm.calls[0]
    assert len(llm.calls) == 1, "one generate call for the list"
    assert [r["prompt_token_ids"] for r in requests] == [_oracle_ids(kit.tokenizer, p) for p in PROMPTS]
    texts, _ = generate.prompt_token_ids(PROMPTS, kit.tokenizer)
    assert texts == [generate.render_prompt(p, kit.tokenizer) for p in PROMPTS]
    for i, sp in enumerate(params):
        assert sp.kw["n"] == 3 and sp.kw["max_tokens"] == 5 and sp.kw["skip_special_tokens"] is True
        assert sp.kw["temperature"] == 0.7 and sp.kw["top_p"] == 0.9
        assert sp.kw["seed"] == 4 * 1_000_003 + i  # the hf path's per-position seed rule
    assert got == [[t.strip() for t in c[:3]] for c in CANNED], "K strings per prompt, stripped as hf"
    # a prompt's seed depends on its position in the whole list, not on the piece it is sampled in
    generate.sample_k_responses_vllm(llm, kit.tokenizer, PROMPTS[1:], index_offset=1, **kw)
    assert [sp.kw["seed"] for sp in llm.calls[1][1]] == [sp.kw["seed"] for sp in params[1:]]
    # max_prompt_length keeps the LAST tokens, as the hf path
    generate.sample_k_responses_vllm(llm, kit.tokenizer, PROMPTS[1:2], max_prompt_length=4, **kw)
    assert llm.calls[2][0][0]["prompt_token_ids"] == _oracle_ids(kit.tokenizer, PROMPTS[1])[-4:]


def test_vllm_writes_the_same_file_as_hf_for_the_same_strings(kit, tmp_path, monkeypatch):
    fake = _fake_vllm(kit.tokenizer, PROMPTS)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    kw = dict(k=4, max_new_tokens=5, seed=2, batch_size=2)
    _, vstats = generate.generate_k_dataset(
        fake.LLM(model="m"), kit.tokenizer, PROMPTS, "ncakit.scale.tinylm:reward", tmp_path / "v.jsonl",
        backend="vllm", **kw,
    )  # fmt: skip

    def hf_canned(model, tokenizer, prompts, k, **_):
        return [[t.strip() for t in CANNED[PROMPTS.index(p)][:k]] for p in prompts]

    monkeypatch.setattr(generate, "sample_k_responses", hf_canned)
    _, hstats = generate.generate_k_dataset(
        kit.model, kit.tokenizer, PROMPTS, "ncakit.scale.tinylm:reward", tmp_path / "h.jsonl", **kw
    )
    assert (tmp_path / "v.jsonl").read_bytes() == (tmp_path / "h.jsonl").read_bytes()
    assert vstats["backend"] == "vllm" and hstats["backend"] == "hf"
    same = lambda st: {k: v for k, v in st.items() if k not in ("backend", "generate_seconds")}
    assert same(vstats) == same(hstats) and vstats["empty_responses"] == 1


def test_main_with_the_vllm_backend(kit, tmp_path, monkeypatch):
    fake = _fake_vllm(kit.tokenizer, [])

    def generate_any(self, requests, params, use_tqdm=False):  # canned by position: prompts are tinylm's
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"r{j}") for j in range(sp.kw["n"])])
                for sp in params]  # fmt: skip

    fake.LLM.generate = generate_any
    monkeypatch.setitem(sys.modules, "vllm", fake)
    out = tmp_path / "o.jsonl"
    rows, stats = generate.main(
        ["--backend", "vllm", "--tiny_kit_dir", str(kit.root), "--max_prompts", "3", "--k", "2",
         "--tensor_parallel_size", "2", "--dtype", "bfloat16", "--gpu_memory_utilization", "0.5", "--out", str(out)]
    )  # fmt: skip
    llm = fake.LLM.made[-1]
    assert llm.kw == dict(model=str(kit.model_path), tokenizer=str(kit.tokenizer_path), dtype="bfloat16", seed=0,
                          tensor_parallel_size=2, gpu_memory_utilization=0.5)  # fmt: skip
    assert stats["prompts"] == 3 and stats["backend"] == "vllm"
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text())
    assert meta["backend"] == "vllm" and meta["k"] == 2
    assert data.load_k_dataset(str(out), warn=False)[1].rows_kept == 3


def test_vllm_refuses_a_multi_process_launch(tmp_path, monkeypatch, no_model_loading):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(None, []))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ValueError, match="^backend: vllm runs in one process .* got a launch with 2 processes"
    ):
        generate.main(["--backend", "vllm", "--out", str(tmp_path / "o.jsonl")])
    assert generate.cli(["--backend", "vllm", "--out", str(tmp_path / "o.jsonl")]) == 2


@pytest.mark.gpu
def test_real_vllm_on_the_tiny_model(kit, tmp_path):
    """Where a GPU and vllm are present: the real engine on the tiny kit gives K strings per prompt,
    the same again for the same seed, and a file that loads like the hf one."""
    pytest.importorskip("vllm")
    llm = generate.load_vllm(
        kit.model_path, tokenizer=kit.tokenizer_path, dtype="float32", seed=0, gpu_memory_utilization=0.2
    )
    kw = dict(k=4, max_new_tokens=8, seed=5)
    a = generate.sample_k_responses_vllm(llm, kit.tokenizer, PROMPTS, **kw)
    assert a == generate.sample_k_responses_vllm(llm, kit.tokenizer, PROMPTS, **kw)
    assert [len(x) for x in a] == [4, 4, 4] and all("<|" not in r for x in a for r in x)
    rows, stats = generate.generate_k_dataset(
        llm, kit.tokenizer, PROMPTS, "ncakit.scale.tinylm:reward", tmp_path / "v.jsonl", backend="vllm", **kw
    )
    assert (
        stats["backend"] == "vllm"
        and data.load_k_dataset(str(tmp_path / "v.jsonl"), warn=False)[1].rows_kept == 3
    )
