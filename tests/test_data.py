"""ncakit.scale.data: adapters, loading with counted drops, tokenisation (authors' truncation), collation,
batching. Runs offline on the committed fixtures (tests/fixtures/, written by make_fixtures.py)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

import torch  # noqa: E402

from ncakit.scale import data, tinylm  # noqa: E402
from ncakit.scale.data import (  # noqa: E402
    DroppedExamplesWarning,
    ExampleError,
    KResponseCollator,
    LengthGroupedSampler,
    Reason,
)

FIXTURES = Path(__file__).parent / "fixtures"
datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(400, seed=3)), vocab_size=320)


@pytest.fixture(scope="module")
def plain_tok():
    """The same kind of tokenizer without a chat template (plain concatenation path)."""
    return tinylm.train_tokenizer(
        tinylm.corpus_texts(tinylm.synthetic_corpus(400, seed=3)), vocab_size=320, chat_template=None
    )


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


def load(name, hf_cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedExamplesWarning)
        return data.load_k_dataset(str(FIXTURES / name), cache_dir=hf_cache, **kw)


def read_jsonl(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# Every fixture: rows in / kept / dropped by reason, K, reward order (the closing note's table)
# ----------------------------------------------------------------------------------------------

# file, loader kwargs, schema, rows in, load-stage drops, tokenise-stage drops, final K counts
FIXTURE_EXPECTATIONS = [
    (
        "ultrafeedback_raw.jsonl",
        {},
        "ultrafeedback",
        10,
        {"too_few_responses": 2, "non_finite_reward": 1, "empty_prompt": 1},
        {},
        {3: 1, 4: 5},
    ),
    (
        "ultrafeedback_reward.parquet",
        {},
        "nca_reward",
        8,
        {"non_finite_reward": 1, "bad_value": 1},
        {},
        {4: 6},
    ),
    (
        "ultrafeedback_binarized.jsonl",
        {},
        "binarized",
        8,
        {"missing_field": 1, "bad_value": 1},
        {},
        {2: 6},
    ),
    (
        "ultrafeedback_binarized.jsonl",
        {"pair_rewards": "scores"},
        "binarized",
        8,
        {"missing_field": 1, "bad_value": 1, "non_finite_reward": 1},
        {},
        {2: 5},
    ),
    ("trl_standard_explicit.jsonl", {}, "trl", 6, {"all_responses_empty": 1}, {}, {2: 5}),
    ("trl_standard_implicit.jsonl", {}, "trl", 6, {"bad_value": 1}, {}, {2: 5}),
    ("trl_conversational_explicit.jsonl", {}, "trl", 6, {"bad_type": 1}, {}, {2: 5}),
    ("trl_conversational_implicit.jsonl", {}, "trl", 6, {"missing_field": 1}, {}, {2: 5}),
    (
        "canonical.jsonl",
        {},
        "canonical",
        11,
        {
            "k_mismatch": 1,
            "non_finite_reward": 1,
            "too_few_responses": 1,
            "empty_prompt": 1,
            "all_responses_empty": 1,
        },
        {},
        {2: 2, 3: 2, 4: 2},  # row 5's empty response is dropped and counted at load: K 4 -> 3
    ),
    (
        "canonical.parquet",
        {},
        "canonical",
        11,
        {
            "k_mismatch": 1,
            "non_finite_reward": 1,
            "too_few_responses": 1,
            "empty_prompt": 1,
            "all_responses_empty": 1,
        },
        {},
        {2: 2, 3: 2, 4: 2},  # row 5's empty response is dropped and counted at load: K 4 -> 3
    ),
    ("canonical_chat.json", {}, "canonical", 6, {"non_finite_reward": 1}, {}, {2: 2, 3: 2, 4: 1}),
]


@pytest.mark.parametrize(
    "name, kwargs, schema, rows_in, load_drops, tok_drops, k_counts",
    FIXTURE_EXPECTATIONS,
    ids=[f"{e[0]}{'-' + '-'.join(e[1].values()) if e[1] else ''}" for e in FIXTURE_EXPECTATIONS],
)
def test_fixture_counts(name, kwargs, schema, rows_in, load_drops, tok_drops, k_counts, tok, hf_cache):
    assert data.detect_schema(_columns(name)) == schema
    loaded = load(name, hf_cache, **kwargs)
    assert loaded.stats.rows_in == rows_in
    assert loaded.stats.dropped == load_drops
    assert loaded.stats.rows_kept == rows_in - sum(load_drops.values()) == len(loaded.dataset)
    assert loaded.dataset.column_names == ["prompt", "responses", "rewards"]
    for row in loaded.dataset:  # canonical and usable
        data.from_canonical(row)
        if schema in ("ultrafeedback", "nca_reward"):
            assert row["rewards"] == sorted(row["rewards"], reverse=True), "UltraFeedback rows are best-first"
        if schema in ("binarized", "trl") and not kwargs:
            assert row["rewards"] == [1.0, 0.0], "pairs: chosen first, hard labels"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = data.prepare_k_dataset(
            str(FIXTURES / name), tok, max_length=256, max_prompt_length=128, cache_dir=hf_cache, **kwargs
        )
    stats = prepared.stats
    assert stats.rows_in == rows_in
    assert stats.dropped == {**_sum(load_drops, tok_drops)}
    assert stats.rows_kept == len(prepared.dataset) == rows_in - stats.rows_dropped
    assert stats.k_counts == k_counts
    drop_warnings = [w for w in caught if issubclass(w.category, DroppedExamplesWarning)]
    if stats.rows_dropped:  # never silent: one warning naming every reason with its count
        assert len(drop_warnings) == 1
        for reason, n in stats.dropped.items():
            assert f"{n:>6} x {reason}" in str(drop_warnings[0].message)
    else:
        assert not drop_warnings


def _columns(name):
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(FIXTURES / name).names
    if name.endswith(".json"):
        return list(json.loads((FIXTURES / name).read_text())[0])
    return list(read_jsonl(name)[0])


def _sum(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


# ----------------------------------------------------------------------------------------------
# Adapters: canonical output, K, reward order
# ----------------------------------------------------------------------------------------------


def test_ultrafeedback_sorts_best_first_and_keeps_ties_in_source_order():
    rows = read_jsonl("ultrafeedback_raw.jsonl")
    haiku = data.from_ultrafeedback(rows[1])  # stored worst-first
    assert haiku["prompt"] == "Write a haiku about autumn leaves."
    assert haiku["rewards"] == [8.0, 7.0, 6.0, 1.5]
    assert haiku["responses"][0].startswith("Amber leaves")  # the gpt-4 answer moved with its score
    assert haiku["responses"][-1] == "Leaves."
    tie = data.from_ultrafeedback(rows[2])
    assert tie["rewards"][:2] == [7.0, 7.0]
    assert tie["responses"][:2] == ["Il fait beau aujourd'hui.", "Le temps est beau aujourd'hui."]
    unsorted = data.from_ultrafeedback(rows[1], sort_best_first=False)
    assert unsorted["rewards"] == [1.5, 6.0, 7.0, 8.0]


def test_ultrafeedback_score_choices():
    row = read_jsonl("ultrafeedback_raw.jsonl")[0]
    assert data.from_ultrafeedback(row)["rewards"] == [9.0, 8.5, 3.0, 2.0]
    fine = data.from_ultrafeedback(row, score="fine-grained", sort_best_first=False)["rewards"]
    assert fine == [5.0, 1.75, 4.0, 1.75]
    helpful = data.from_ultrafeedback(row, score="helpfulness", sort_best_first=False)["rewards"]
    assert helpful == [5.0, 2.0, 4.0, 1.0]
    haiku = read_jsonl("ultrafeedback_raw.jsonl")[1]  # truthfulness "N/A" on the first completion
    with pytest.raises(ValueError, match=r"completions\[0\]\.annotations\.truthfulness\.Rating"):
        data.from_ultrafeedback(haiku, score="truthfulness")
    with pytest.raises(ValueError, match="score"):
        data.from_ultrafeedback(row, score="gpt4")


def test_nca_reward_schema(hf_cache):
    import pyarrow.parquet as pq

    rows = pq.read_table(FIXTURES / "ultrafeedback_reward.parquet").to_pylist()
    ex = data.from_nca_reward(rows[3])  # CPU question: A2 (9.5) is the best and must come first
    assert ex["prompt"] == [{"role": "user", "content": "What does CPU stand for?"}]
    assert ex["rewards"] == [9.5, 9.0, 2.0, 1.0]
    assert ex["responses"][0] == [
        {"role": "assistant", "content": "Central Processing Unit, the chip that runs programs."}
    ]
    assert len(ex["responses"]) == 4
    # text answers (A_i as strings) take the prompt column
    flat = {"prompt": "Q?", "A0": "a", "A1": "b", "score_A0": 1.0, "score_A1": 2.0}
    assert data.from_nca_reward(flat) == {"prompt": "Q?", "responses": ["b", "a"], "rewards": [2.0, 1.0]}


def test_binarized_chosen_first_hard_labels_or_scores():
    row = read_jsonl("ultrafeedback_binarized.jsonl")[0]
    ex = data.from_binarized(row)
    assert ex["prompt"] == [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
    assert ex["responses"] == [
        [{"role": "assistant", "content": "100 degrees Celsius (212 F)."}],
        [{"role": "assistant", "content": "About 50 degrees."}],
    ]
    assert ex["rewards"] == [1.0, 0.0]
    assert data.from_binarized(row, pair_rewards="scores")["rewards"] == [9.0, 2.0]


def test_trl_implicit_prompt_equals_explicit(hf_cache):
    for a, b in (
        ("trl_standard_explicit.jsonl", "trl_standard_implicit.jsonl"),
        ("trl_conversational_explicit.jsonl", "trl_conversational_implicit.jsonl"),
    ):
        ex = load(a, hf_cache).dataset.to_list()
        im = load(b, hf_cache).dataset.to_list()
        n = min(len(ex), len(im), 5)
        assert ex[:n] == im[:n], (a, b)
    first = load("trl_standard_implicit.jsonl", hf_cache).dataset[0]
    assert first == {"prompt": "The sky is", "responses": [" blue.", " green."], "rewards": [1.0, 0.0]}


def test_canonical_chat_mixes_text_into_messages():
    rows = [
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "responses": ["Hello.", "Go away."],
            "rewards": [1, 0],
        },
        {
            "prompt": "Plain?",
            "responses": [[{"role": "assistant", "content": "Yes."}], "No."],
            "rewards": [1, 0],
        },
    ]
    ds, stats = data.canonicalize(rows)
    assert stats.rows_kept == 2
    assert ds[1]["prompt"] == [{"role": "user", "content": "Plain?"}]
    assert ds[1]["responses"][1] == [{"role": "assistant", "content": "No."}]


def test_local_json_jsonl_parquet_round_trip(tmp_path, hf_cache):
    rows = tinylm.synthetic_k_dataset(5, k=3, seed=1, chat=False)
    for suffix in (".jsonl", ".json", ".parquet"):
        path = data.save_k_dataset(rows, tmp_path / f"rows{suffix}")
        got = data.load_k_dataset(str(path), cache_dir=hf_cache).dataset.to_list()
        if suffix == ".json":  # datasets re-serialises JSON arrays with 10 significant digits
            for g, r in zip(got, rows):
                assert g["rewards"] == pytest.approx(r["rewards"], rel=1e-9)
                g["rewards"] = r["rewards"]
        assert got == rows, suffix
    got = data.load_k_dataset(str(tmp_path / "rows.jsonl"), split="test", cache_dir=hf_cache)
    assert got.stats.source.endswith(":test") and len(got.dataset) == 5


# ----------------------------------------------------------------------------------------------
# Bad inputs fail with messages naming the column
# ----------------------------------------------------------------------------------------------

GOOD = {"prompt": "Q?", "responses": ["a", "b", "c"], "rewards": [1.0, 0.5, 0.0]}
_MISSING = object()  # marks a key to delete


@pytest.mark.parametrize(
    "change, column, reason",
    [
        ({"rewards": _MISSING}, "rewards", Reason.MISSING_FIELD),
        ({"prompt": _MISSING}, "prompt", Reason.MISSING_FIELD),
        ({"rewards": [1.0, 0.5]}, "rewards", Reason.K_MISMATCH),
        ({"rewards": [1.0, float("nan"), 0.0]}, r"rewards\[1\]", Reason.NON_FINITE_REWARD),
        ({"rewards": [1.0, math.inf, 0.0]}, r"rewards\[1\]", Reason.NON_FINITE_REWARD),
        ({"rewards": [1.0, None, 0.0]}, r"rewards\[1\]", Reason.NON_FINITE_REWARD),
        ({"rewards": [1.0, [0.5], 0.0]}, r"rewards\[1\]", Reason.BAD_TYPE),
        ({"rewards": [1.0, "high", 0.0]}, r"rewards\[1\]", Reason.BAD_TYPE),
        ({"rewards": [True, False, False]}, r"rewards\[0\]", Reason.BAD_TYPE),
        ({"rewards": "1,0,0"}, "rewards", Reason.BAD_TYPE),
        ({"responses": "a"}, "responses", Reason.BAD_TYPE),
        ({"responses": ["a", 3, "c"]}, r"responses\[1\]", Reason.BAD_TYPE),
        (
            {"responses": ["a", [{"role": "assistant"}], "c"]},
            r"responses\[1\]\[0\]\.content",
            Reason.MISSING_FIELD,
        ),
        ({"prompt": 42}, "prompt", Reason.BAD_TYPE),
        ({"prompt": ""}, "prompt", Reason.EMPTY_PROMPT),
        ({"responses": ["a"], "rewards": [1.0]}, "responses", Reason.TOO_FEW_RESPONSES),
    ],
)
def test_canonical_bad_inputs_name_the_column(change, column, reason):
    ex = {k: v for k, v in {**GOOD, **change}.items() if v is not _MISSING}
    with pytest.raises(ValueError, match=f"^{column}") as err:
        data.from_canonical(ex)
    assert isinstance(err.value, ExampleError) and err.value.reason == reason


def test_source_adapters_bad_inputs_name_the_column():
    uf = read_jsonl("ultrafeedback_raw.jsonl")[0]
    with pytest.raises(ValueError, match="^instruction: missing"):
        data.from_ultrafeedback({k: v for k, v in uf.items() if k != "instruction"})
    broken = json.loads(json.dumps(uf))
    del broken["completions"][1]["overall_score"]
    with pytest.raises(ValueError, match=r"^completions\[1\]\.overall_score: missing"):
        data.from_ultrafeedback(broken)
    broken["completions"] = "four answers"
    with pytest.raises(ValueError, match="^completions: expected a list"):
        data.from_ultrafeedback(broken)
    nca = {"prompt": "Q?", "A0": "a", "A1": "b", "A2": "c", "score_A0": 1.0, "score_A1": 0.5}
    with pytest.raises(ValueError, match="^score_A2: missing"):
        data.from_nca_reward(nca)
    with pytest.raises(ValueError, match="^A1: missing"):
        data.from_nca_reward({"A0": "a", "A2": "c", "score_A0": 1.0, "score_A2": 0.0})
    with pytest.raises(ValueError, match="^chosen: expected a string or a message list, got int"):
        data.from_pairwise({"prompt": "Q", "chosen": 1, "rejected": "b"})
    with pytest.raises(ValueError, match="^rejected: missing"):
        data.from_pairwise({"prompt": "Q", "chosen": "a"})
    with pytest.raises(ValueError, match="^score_chosen: missing"):
        data.from_pairwise({"prompt": "Q", "chosen": "a", "rejected": "b"}, pair_rewards="scores")
    with pytest.raises(ValueError, match="^rejected: is text but chosen is a message list"):
        data.from_pairwise(
            {"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b", "prompt": "Q"}
        )


def test_dataset_level_errors_name_the_column(hf_cache):
    canon = [dict(GOOD)]
    with pytest.raises(ValueError, match="^instruction: column missing for schema 'ultrafeedback'"):
        data.canonicalize(canon, "ultrafeedback")
    with pytest.raises(ValueError, match="^score_chosen: column missing"):
        data.canonicalize([{"chosen": "a", "rejected": "b"}], "trl", pair_rewards="scores")
    with pytest.raises(ValueError, match="^columns: cannot tell the schema"):
        data.canonicalize([{"question": "Q", "answer": "A"}])
    with pytest.raises(ValueError, match="^schema: expected"):
        data.canonicalize(canon, "alpaca")
    with pytest.raises(ValueError, match="^on_bad"):
        data.canonicalize(canon, on_bad="ignore")
    # on_bad="raise": the first bad row's error, column named
    with pytest.raises(ValueError, match=r"^completions: has 0 response"):
        data.load_k_dataset(str(FIXTURES / "ultrafeedback_raw.jsonl"), on_bad="raise", cache_dir=hf_cache)
    with pytest.raises(ValueError, match=r"^rewards: has 2 entries but responses has 3"):
        data.load_k_dataset(str(FIXTURES / "canonical.jsonl"), on_bad="raise", cache_dir=hf_cache)
    with pytest.raises(ValueError, match="^prompt: column missing"):
        data.tokenize_k_dataset([{"text": "x"}], None)


# ----------------------------------------------------------------------------------------------
# Tokenisation: chat template, the authors' truncation, EOS once, prompt masked
# ----------------------------------------------------------------------------------------------


def test_chat_template_rendering_and_single_eos(tok):
    ex = {"prompt": "reverse: abc", "responses": ["cba", "abc"], "rewards": [1.0, 0.0]}
    # plain text goes through the template only with apply_chat_template="true" (TRL's rule, "auto")
    out = data.tokenize_k_example(ex, tok, max_length=64, max_prompt_length=32, apply_chat_template="true")
    prompt_text = tok.apply_chat_template(
        [{"role": "user", "content": "reverse: abc"}], add_generation_prompt=True, tokenize=False
    )
    assert out["prompt_ids"] == tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert out["prompt_ids"][0] == tok.bos_token_id  # the template's BOS, not a second one
    assert out["prompt_ids"].count(tok.bos_token_id) == 1
    for r, text in zip(out["response_ids"], ["cba", "abc"]):
        # the template already ends the assistant turn with EOS: it is not appended again
        assert r == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert r.count(tok.eos_token_id) == 1
    assert out["max_seq_len"] == len(out["prompt_ids"]) + max(map(len, out["response_ids"]))
    # prompt + response ids == the full conversation rendered by the template
    full = tok.apply_chat_template(
        [{"role": "user", "content": "reverse: abc"}, {"role": "assistant", "content": "cba"}], tokenize=False
    )
    assert tok.decode(out["prompt_ids"] + out["response_ids"][0]) == full


def test_plain_concatenation_bos_and_eos_once(plain_tok):
    eos = plain_tok.eos_token
    ex = {"prompt": "copy: abc", "responses": [" abc", " abc" + eos], "rewards": [1.0, 0.5]}
    out = data.tokenize_k_example(ex, plain_tok, max_length=64, max_prompt_length=32)
    # TRL: tokenizer(prompt) with the tokenizer's own special tokens; this one adds no BOS, so none
    assert out["prompt_ids"] == plain_tok("copy: abc")["input_ids"]
    assert plain_tok.bos_token_id not in out["prompt_ids"]
    a, b = out["response_ids"]
    assert a[-1] == plain_tok.eos_token_id and a.count(plain_tok.eos_token_id) == 1
    assert b == a, "a response that already ends with EOS gets no second one"
    no_eos = data.tokenize_k_example(ex, plain_tok, max_length=64, max_prompt_length=32, add_eos=False)
    assert no_eos["response_ids"][0][-1] != plain_tok.eos_token_id
    chat_rows = {"prompt": [{"role": "user", "content": "Q"}], "responses": ["a", "b"], "rewards": [1, 0]}
    with pytest.raises(ValueError, match="chat_template"):
        data.tokenize_k_example(chat_rows, plain_tok)


def _ids(tok, n, start=0):
    """A text that encodes to exactly n tokens: digits, which the tokenizer never saw, so BPE has
    no merges for them and each is one byte-level token."""
    text = "".join(str((start + i) % 10) for i in range(n))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == n, (text, ids)
    return text, ids


def test_authors_truncation_keeps_last_prompt_tokens_and_cuts_responses(plain_tok):
    eos = plain_tok.eos_token_id
    p_text, p_ids = _ids(plain_tok, 99)
    long_text, long_ids = _ids(plain_tok, 50, start=3)
    short_text, short_ids = _ids(plain_tok, 9, start=5)
    ex = {"prompt": p_text, "responses": [long_text, short_text], "rewards": [1.0, 0.0]}
    out = data.tokenize_k_example(ex, plain_tok, max_length=64, max_prompt_length=32)
    full_prompt = p_ids  # no BOS: the tokenizer adds none itself (TRL's plain-text rule)
    assert out["prompt_ids"] == full_prompt[-32:], "keep the LAST max_prompt_length prompt tokens"
    assert out["prompt_truncated"]
    assert out["response_ids"][0] == long_ids[:32], "cut to max_length - max_prompt_length (loses its EOS)"
    assert out["response_ids"][1] == short_ids + [eos], "a response within budget is untouched"
    assert out["responses_truncated"] == 1
    assert out["max_seq_len"] <= 64

    # fits after prompt truncation -> responses untouched
    out = data.tokenize_k_example(ex, plain_tok, max_length=90, max_prompt_length=32)
    assert out["prompt_ids"] == full_prompt[-32:] and out["response_ids"][0] == long_ids + [eos]
    assert out["responses_truncated"] == 0

    # a long prompt is NOT cut when prompt + longest response fits (the authors' condition)
    out = data.tokenize_k_example(ex, plain_tok, max_length=200, max_prompt_length=32)
    assert out["prompt_ids"] == full_prompt and not out["prompt_truncated"]

    # short prompt, long response: the authors' budget is max_length - max_prompt_length even
    # though the prompt is shorter; "fill" uses the room the short prompt leaves
    sp_text, sp_ids = _ids(plain_tok, 9)
    ex2 = {"prompt": sp_text, "responses": [long_text, short_text], "rewards": [1.0, 0.0]}
    authors = data.tokenize_k_example(ex2, plain_tok, max_length=40, max_prompt_length=20)
    assert authors["prompt_ids"] == sp_ids
    assert authors["response_ids"][0] == long_ids[:20]
    fill = data.tokenize_k_example(
        ex2, plain_tok, max_length=40, max_prompt_length=20, response_budget="fill"
    )
    assert fill["response_ids"][0] == long_ids[: 40 - len(sp_ids)]
    assert len(fill["prompt_ids"]) + len(fill["response_ids"][0]) == 40


@pytest.mark.parametrize(
    "n_prompt, longest, budget_mode, expected",
    [
        (300, 300, "authors", (300, None)),  # 600 <= 1024: nothing cut
        (600, 300, "authors", (600, None)),  # a long prompt stays when the pair fits (the authors' condition)
        (
            600,
            600,
            "authors",
            (512, 512),
        ),  # prompt to its last 512, still 1112 > 1024: responses to 1024 - 512
        (700, 400, "authors", (512, None)),  # 512 + 400 fits after the prompt's cut
        (100, 2000, "authors", (100, 512)),  # a short prompt: the authors' budget ignores the room it leaves
        (100, 2000, "fill", (100, 924)),  # "fill" uses it: 1024 - 100
    ],
)
def test_truncation_cut_is_the_authors_rule(n_prompt, longest, budget_mode, expected):
    """The one rule both tokenisers apply (ncakit.scale.data.authors.truncation_cut; MATH.md), at
    max_length 1024 / max_prompt_length 512, the authors' settings."""
    from ncakit.scale.data.authors import truncation_cut

    got = truncation_cut(
        n_prompt, longest, max_length=1024, max_prompt_length=512, response_budget=budget_mode
    )
    assert got == expected


def test_truncation_with_chat_template_keeps_the_generation_prompt(tok):
    p_text, _ = _ids(tok, 60)
    r_text, r_ids = _ids(tok, 40, start=2)
    ex = {"prompt": p_text, "responses": [r_text, "ab"], "rewards": [1.0, 0.0]}
    out = data.tokenize_k_example(ex, tok, max_length=48, max_prompt_length=24, apply_chat_template="true")
    rendered = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": p_text}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert out["prompt_ids"] == rendered[-24:]
    assert tok.decode(out["prompt_ids"]).endswith("<|assistant|>\n"), "the end of the prompt survives"
    assert out["response_ids"][0] == r_ids[:24]


def test_tokenize_length_arguments_are_checked(tok):
    with pytest.raises(ValueError, match="^max_prompt_length"):
        data.tokenize_k_example(GOOD, tok, max_length=32, max_prompt_length=32)
    with pytest.raises(ValueError, match="^max_length"):
        data.tokenize_k_example(GOOD, tok, max_length=0, max_prompt_length=32)
    with pytest.raises(ValueError, match="^response_budget"):
        data.tokenize_k_example(GOOD, tok, max_length=64, max_prompt_length=32, response_budget="all")


def test_tokenize_drops_are_counted_and_warned(plain_tok):
    rows = [
        {"prompt": "copy: ab", "responses": [" ab", " ba", " aa"], "rewards": [1.0, 0.5, 0.0]},
        {"prompt": "copy: ab", "responses": ["", " "], "rewards": [1.0, 0.0]},  # all_responses_empty
        {"prompt": "copy: cd", "responses": [" cd", " dc"], "rewards": [1.0, float("nan")]},  # non_finite
        {"prompt": "copy: ef", "responses": [" ef"], "rewards": [1.0]},  # too_few_responses
        {"prompt": "copy: gh", "responses": [" gh", ""], "rewards": [1.0, 0.0]},  # 1 left: too_few
        {"prompt": "copy: ij", "responses": [" ij", "  ", " ji"], "rewards": [1.0, 0.5, 0.0]},  # kept, K = 2
    ]
    with pytest.warns(DroppedExamplesWarning, match="4 dropped") as rec:
        ds, stats = data.tokenize_k_dataset(rows, plain_tok, max_length=32, max_prompt_length=16)
    assert stats.dropped == {"all_responses_empty": 1, "non_finite_reward": 1, "too_few_responses": 2}
    assert stats.responses_dropped == {"empty_response": 1}
    assert stats.rows_in == 6 and stats.rows_kept == 2 == len(ds)
    assert stats.k_counts == {2: 1, 3: 1}
    msg = str(rec[0].message)
    assert "1 x all_responses_empty" in msg and "2 x too_few_responses" in msg
    assert "1 responses x empty_response" in msg
    eos = plain_tok.eos_token_id
    assert all(r != [eos] for row in ds["response_ids"] for r in row), "never a lone-EOS response"
    assert ds[1]["rewards"] == [1.0, 0.0], "the removed response's reward goes with it"
    assert set(ds.column_names) == {"prompt_ids", "response_ids", "rewards", "max_seq_len"}
    # a response budget of 0 tokens cannot happen (max_prompt_length < max_length is enforced);
    # without an EOS token an empty response has no tokens and is removed (counted) just the same
    no_eos_rows = [
        {"prompt": "copy: gh", "responses": [" gh", ""], "rewards": [1.0, 0.0]},  # 1 left: too_few_responses
        {"prompt": "copy: ab", "responses": [" ab", "", " ba"], "rewards": [1.0, 0.5, 0.0]},  # kept, K = 2
    ]
    with pytest.warns(DroppedExamplesWarning, match="1 responses x empty_response"):
        ds2, stats2 = data.tokenize_k_dataset(
            no_eos_rows, _NoEos(plain_tok), max_length=32, max_prompt_length=16
        )
    assert stats2.dropped == {"too_few_responses": 1} and stats2.responses_dropped == {"empty_response": 1}
    assert ds2[0]["rewards"] == [1.0, 0.0], "the removed response's reward goes with it"


class _NoEos:
    """A tokenizer view without an EOS token (to exercise the zero-token response path)."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_token_id = None
        self.eos_token = None
        self.bos_token_id = tok.bos_token_id
        self.chat_template = None

    def __call__(self, *a, **k):
        return self._tok(*a, **k)


# ----------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenized(tok):
    rows = tinylm.synthetic_k_dataset(12, k=4, seed=5)
    rows[1]["responses"], rows[1]["rewards"] = rows[1]["responses"][:2], rows[1]["rewards"][:2]  # K = 2
    rows[2]["responses"], rows[2]["rewards"] = rows[2]["responses"][:3], rows[2]["rewards"][:3]  # K = 3
    return data.tokenize_k_dataset(rows, tok, max_length=64, max_prompt_length=32).dataset


def test_collator_shapes_masks_and_prompt_major_order(tokenized, tok):
    rows = [tokenized[i] for i in range(4)]
    batch = KResponseCollator(tok.pad_token_id, k=4, pad_to_multiple_of=8)(rows)
    B, K = 4, 4
    T = batch["input_ids"].shape[1]
    assert T % 8 == 0 and T >= max(r["max_seq_len"] for r in rows)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (B * K, T) and batch[key].dtype == torch.long
    assert batch["rewards"].shape == (B, K) and batch["rewards"].dtype == torch.float32
    assert batch["mask"].tolist() == [
        [True] * 4,
        [True, True, False, False],
        [True, True, True, False],
        [True] * 4,
    ]
    assert batch["prompt_lengths"].tolist() == [len(r["prompt_ids"]) for r in rows]
    for b, r in enumerate(rows):
        lp = len(r["prompt_ids"])
        for k in range(K):
            n = b * K + k  # prompt-major
            if k < len(r["response_ids"]):
                resp = r["response_ids"][k]
                seq = r["prompt_ids"] + resp
                assert batch["input_ids"][n, : len(seq)].tolist() == seq
                assert (batch["input_ids"][n, len(seq) :] == tok.pad_token_id).all()
                assert batch["attention_mask"][n].sum() == len(seq)
                assert (batch["labels"][n, :lp] == -100).all(), "prompt masked"
                assert batch["labels"][n, lp : len(seq)].tolist() == resp
                assert (batch["labels"][n, len(seq) :] == -100).all(), "padding masked"
                assert batch["response_lengths"][b, k] == len(resp)
                assert batch["rewards"][b, k] == pytest.approx(r["rewards"][k])
            else:  # dummy 1-token sequence, nothing scored
                assert batch["attention_mask"][n].tolist() == [1] + [0] * (T - 1)
                assert (batch["labels"][n] == -100).all()
                assert batch["rewards"][b, k] == 0 and batch["response_lengths"][b, k] == 0
    from ncakit.logprobs import response_lengths

    assert torch.equal(response_lengths(batch["labels"]).view(B, K), batch["response_lengths"])
    assert "ref_logps" not in batch


def test_collator_k_none_ref_logps_and_errors(tokenized, tok):
    rows = [dict(tokenized[i]) for i in (1, 2)]
    batch = KResponseCollator(tok.pad_token_id)(rows)  # K = largest in the batch
    assert batch["mask"].shape == (2, 3)
    for r in rows:
        r["ref_logps"] = [-1.5] * len(r["response_ids"])
    batch = KResponseCollator(tok.pad_token_id, k=4)(rows)
    assert batch["ref_logps"].tolist() == [[-1.5, -1.5, 0, 0], [-1.5, -1.5, -1.5, 0]]
    with pytest.raises(
        ValueError, match="^response_ids: row 0 has 4 responses, more than the collator's k=2"
    ):
        KResponseCollator(tok.pad_token_id, k=2)([tokenized[0]])
    with pytest.raises(ValueError, match="^pad_token_id"):
        KResponseCollator(None)
    with pytest.raises(ValueError, match="^prompt_ids: missing"):
        KResponseCollator(0)([{"prompt": "x"}])
    bad = dict(tokenized[0])
    bad["rewards"] = bad["rewards"][:2]
    with pytest.raises(ValueError, match="^rewards: row 0 has 2 rewards for 4 responses"):
        KResponseCollator(0)([bad])


def test_losses_take_the_batch(tokenized, tok):
    """The batch plugs into the loss unchanged: [B*K] log-probs -> view(B, K), rewards, mask."""
    from ncakit import get_loss

    batch = KResponseCollator(tok.pad_token_id, k=4)([tokenized[i] for i in range(4)])
    policy = torch.zeros(batch["mask"].shape)
    out = get_loss("nca")(policy, torch.zeros_like(policy), batch["rewards"], beta=0.1, mask=batch["mask"])
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all()


# ----------------------------------------------------------------------------------------------
# Batching: one row = one prompt with its K responses; length grouping
# ----------------------------------------------------------------------------------------------


def test_dataloader_keeps_k_together_and_covers_every_prompt(tokenized, tok):
    collate = KResponseCollator(tok.pad_token_id, k=4)
    for kwargs in ({"shuffle": False}, {"shuffle": True, "seed": 1}, {"group_by_length": True, "seed": 1}):
        loader = data.make_dataloader(tokenized, collate, batch_size=5, **kwargs)
        seen = []
        for batch in loader:
            B = batch["mask"].shape[0]
            assert batch["input_ids"].shape[0] == B * 4
            seen.extend(batch["rewards"][:, 0].tolist())
        assert len(seen) == len(tokenized)
        assert sorted(seen) == pytest.approx(sorted(r[0] for r in tokenized["rewards"]))


def test_length_grouped_sampler():
    lengths = torch.randint(5, 500, (400,), generator=torch.Generator().manual_seed(0)).numpy()
    s = LengthGroupedSampler(lengths, batch_size=8, mega_batch_mult=10, seed=3)
    idx = list(s)
    assert sorted(idx) == list(range(400)), "a permutation: every prompt once"
    assert lengths[idx[:8]].max() == lengths.max(), "the longest batch comes first"
    batches = [idx[i : i + 8] for i in range(0, 400, 8)]
    grouped_pad = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    rand = torch.randperm(400, generator=torch.Generator().manual_seed(3)).numpy()
    random_pad = sum(
        lengths[rand[i : i + 8]].max() * 8 - lengths[rand[i : i + 8]].sum() for i in range(0, 400, 8)
    )
    assert grouped_pad < 0.25 * random_pad, (grouped_pad, random_pad)
    assert list(LengthGroupedSampler(lengths, 8, mega_batch_mult=10, seed=3)) == idx, "deterministic"
    s.set_epoch(1)
    assert list(s) != idx, "a new order each epoch"


def test_to_pairwise_rules_ties_and_counts():
    rows = [
        {"prompt": "p0", "responses": ["a", "b", "c", "d"], "rewards": [0.2, 0.9, 0.5, 0.1]},
        {"prompt": "p1", "responses": ["a", "b", "c"], "rewards": [0.7, 0.7, 0.3]},  # tied best: first kept
        {"prompt": "p2", "responses": ["a", "b"], "rewards": [0.4, 0.4]},  # all tied: no pair, dropped
    ]
    with pytest.warns(data.DroppedExamplesWarning, match="1 dropped"):
        worst, stats = data.to_pairwise(rows, "best_vs_worst")
    assert stats.rows_in == 3 and stats.rows_kept == 2 and stats.dropped == {data.Reason.TIED_REWARDS: 1}
    assert stats.k_counts == {2: 2}
    assert worst[0] == {"prompt": "p0", "responses": ["b", "d"], "rewards": [0.9, 0.1]}
    assert worst[1]["responses"] == ["a", "c"]
    # best_vs_random: the rejected one is drawn among STRICTLY lower rewards, per row from the seed
    seen = set()
    for seed in range(40):
        ds, _ = data.to_pairwise(rows[:2], "best_vs_random", seed=seed, warn=False)
        assert ds[0]["responses"][0] == "b" and ds[0]["responses"][1] in ("a", "c", "d")
        assert ds[1]["responses"] == ["a", "c"], "b ties the best: never the rejected one"
        assert ds[0]["rewards"][0] > ds[0]["rewards"][1]
        seen.add(ds[0]["responses"][1])
    assert seen == {"a", "c", "d"}
    again, _ = data.to_pairwise(rows[:2], "best_vs_random", seed=7, warn=False)
    assert (
        again.to_list() == data.to_pairwise(rows[:2], "best_vs_random", seed=7, warn=False).dataset.to_list()
    )
    binary, _ = data.to_pairwise(rows[:1], "best_vs_worst", pair_rewards="binary", warn=False)
    assert binary[0]["rewards"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="^rule: expected one of"):
        data.to_pairwise(rows, "best_vs_best")
    with pytest.raises(ValueError, match="^rewards: column missing"):
        data.to_pairwise([{"prompt": "p", "responses": ["a", "b"]}])


# ----------------------------------------------------------------------------------------------
# Issue 14, item 8: empty responses and float32-overflowing rewards never reach training
# ----------------------------------------------------------------------------------------------


def test_load_drops_and_counts_empty_responses():
    rows = [
        {"prompt": "p1", "responses": ["a", "", "b"], "rewards": [1.0, 2.0, 0.0]},  # kept with K = 2
        {"prompt": "p2", "responses": ["a", " \n"], "rewards": [1.0, 0.0]},  # 1 left: too_few_responses
        {"prompt": "p3", "responses": ["", "  "], "rewards": [1.0, 0.0]},  # none left
        {"prompt": "p4", "responses": ["x", "y"], "rewards": [1.0, 0.0]},
    ]
    with pytest.warns(DroppedExamplesWarning, match="empty_response"):
        ds, stats = data.canonicalize(rows, "canonical")
    assert stats.dropped == {"too_few_responses": 1, "all_responses_empty": 1}
    assert stats.responses_dropped == {"empty_response": 1}
    assert ds[0]["responses"] == ["a", "b"] and ds[0]["rewards"] == [1.0, 0.0], "rewards follow responses"
    assert stats.k_counts == {2: 2}
    chat = [
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "responses": [[{"role": "assistant", "content": ""}], [{"role": "assistant", "content": "a"}]]
            + [[{"role": "assistant", "content": "b"}]],
            "rewards": [3.0, 1.0, 0.0],
        }
    ]
    ds, stats = data.canonicalize(chat, "canonical", warn=False)
    assert stats.responses_dropped == {"empty_response": 1} and ds[0]["rewards"] == [1.0, 0.0]


def test_prepare_counts_empty_responses_once(plain_tok):
    rows = [{"prompt": "copy: ab", "responses": [" ab", "", " ba"], "rewards": [1.0, 0.5, 0.0]}]
    with pytest.warns(DroppedExamplesWarning):
        ds, stats = data.prepare_k_dataset(rows, plain_tok, max_length=32, max_prompt_length=16)
    assert stats.responses_dropped == {"empty_response": 1}
    assert len(ds[0]["response_ids"]) == 2


@pytest.mark.parametrize("bad", [1e39, -1e39, 3.5e38, float("inf"), float("nan")])
def test_rewards_overflowing_float32_are_dropped_at_load(bad):
    rows = [
        {"prompt": "p", "responses": ["a", "b"], "rewards": [bad, 0.0]},
        {"prompt": "q", "responses": ["a", "b"], "rewards": [3.0e38, 0.0]},  # fits float32: kept
    ]
    with pytest.warns(DroppedExamplesWarning, match="non_finite_reward"):
        ds, stats = data.canonicalize(rows, "canonical")
    assert stats.dropped == {"non_finite_reward": 1} and len(ds) == 1
    assert "rewards[0]" in stats.examples["non_finite_reward"]
    with pytest.raises(data.ExampleError, match=r"^rewards\[0\]: expected a (finite )?number"):
        data.from_canonical(rows[0])


def test_tokenless_response_is_dropped_not_trained_as_eos(plain_tok):
    eos = plain_tok.eos_token
    row = {"prompt": "copy: ab", "responses": [" ab", eos, " ba"], "rewards": [1.0, 0.5, 0.0]}
    out = data.tokenize_k_example(row, plain_tok, max_length=32, max_prompt_length=16)
    assert out["responses_removed"] == 1 and out["rewards"] == [1.0, 0.0]
    assert all(r != [plain_tok.eos_token_id] for r in out["response_ids"])


def test_local_path_errors_name_the_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="^name_or_path: expected K-response examples in .*empty file"):
        data.load_k_dataset(str(tmp_path / "empty.jsonl"))
    with pytest.raises(
        ValueError, match="^name_or_path: expected an existing local file.*not looked up on the Hub"
    ):
        data.load_k_dataset("./no/such/train.jsonl")
    (tmp_path / "one.jsonl").write_text('{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}\n')
    with pytest.raises(ValueError, match="^max_rows: expected a positive int"):
        data.load_k_dataset(str(tmp_path / "one.jsonl"), max_rows=0)
