"""``rendering: authors`` against an independent transcription of the NCA authors' code.

The oracle below (:func:`_authors_oracle`) is written from thu-ml/Noise-Contrastive-Alignment
directly, without calling ncakit: ``data_utils.py`` ``apply_chat_template(task="reward")``
(lines 245-320) generalised from A0..A3 to K responses, then
``NCADataCollatorWithPadding.tokenize_batch_element`` (lines 64-200) likewise. It returns, per
response, the full-sequence ``input_ids`` / ``attention_mask`` / ``labels`` the authors' collator
builds; ncakit's ``tokenize_k_dataset(..., rendering="authors")`` + ``KResponseCollator`` must give
the same three lists exactly (and padding: attention 0, label -100) for K-response rows (ragged K
and lengths), pairwise rows, a system prompt, a multi-turn prompt and plain text, with and without
truncation, under a Zephyr template (the authors' ``DEFAULT_CHAT_TEMPLATE``) and the tiny kit's.

``rendering: trl`` is checked unchanged against TRL's rule written out here (template prompt with
the generation prompt, completion = the rest of the ids, all attended) and the reference-cache
data key against the formula it had before the attention columns existed. The end-to-end run
trains the tiny kit both ways and checks every reference log-prob differs, the authors' sequences
being longer by exactly the tokens their code adds.
"""

from __future__ import annotations

import hashlib
import math
import re

import pytest

from ncakit.scale import tinylm
from ncakit.scale.data import KResponseCollator, tokenize_k_dataset

# data_utils.py:22, verbatim (the Zephyr format: "<|role|>\n{content}</s>\n" per turn)
AUTHORS_DEFAULT_TEMPLATE = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"  # noqa: E501


# ----------------------------------------------------------------------------------------------
# The oracle: the authors' code, transcribed independently (K responses instead of A0..A3)
# ----------------------------------------------------------------------------------------------


def _authors_apply_chat_template(example, tokenizer, K, assistant_prefix="<|assistant|>\n"):
    """data_utils.py:245-320, task == "reward", for keys A0..A{K-1}."""

    def _strip_prefix(s, pattern):
        return re.sub(f"^{re.escape(pattern)}", "", s)

    prompt_messages = [[msg for msg in example["A0"] if msg["role"] == "user"][0]]
    if example["A0"][0]["role"] != "system":
        prompt_messages.insert(0, {"role": "system", "content": ""})
    else:
        prompt_messages.insert(0, example["A0"][0])
    out = {}
    for k in range(K):
        out[f"text_A{k}"] = tokenizer.apply_chat_template(example[f"A{k}"][1:], tokenize=False)
    out["text_prompt"] = tokenizer.apply_chat_template(
        prompt_messages, tokenize=False, add_generation_prompt=True
    )
    for k in range(K):
        out[f"text_A{k}"] = _strip_prefix(out[f"text_A{k}"], assistant_prefix)
    return out


def _authors_tokenize_batch_element(item, tokenizer, K, max_length, max_prompt_length, label_pad=-100):
    """data_utils.py:64-200 (truncation_mode "keep_end", optimize_prompt False), for A0..A{K-1}."""
    A = [dict(tokenizer(item[f"A{k}"], add_special_tokens=False)) for k in range(K)]
    prompt_tokens = dict(tokenizer(item["prompt"], add_special_tokens=False))
    A = [{"input_ids": list(t["input_ids"]), "attention_mask": list(t["attention_mask"])} for t in A]
    prompt_tokens = {k: list(prompt_tokens[k]) for k in ("input_ids", "attention_mask")}
    eos_token_id = tokenizer.eos_token_id
    eos_indices_prompt = [i for i, x in enumerate(prompt_tokens["input_ids"]) if x == eos_token_id]
    prompt_tokens["attention_mask"] = [
        0 if i in eos_indices_prompt else p for i, p in enumerate(prompt_tokens["attention_mask"])
    ]
    for t in A:
        eos_idx = [i for i, x in enumerate(t["input_ids"]) if x == eos_token_id]
        t["attention_mask"] = [0 if i in eos_idx else p for i, p in enumerate(t["attention_mask"])]
        t["input_ids"].append(eos_token_id)
        t["attention_mask"].append(1)
    longer_response_length = max(len(t["input_ids"]) for t in A)
    if len(prompt_tokens["input_ids"]) + longer_response_length > max_length:
        prompt_tokens = {k: v[-max_prompt_length:] for k, v in prompt_tokens.items()}
    if len(prompt_tokens["input_ids"]) + longer_response_length > max_length:
        A = [{k: v[: max_length - max_prompt_length] for k, v in t.items()} for t in A]
    seqs = []
    for t in A:
        s = {k: prompt_tokens[k] + t[k] for k in t}
        s["labels"] = s["input_ids"][:]
        s["labels"][: len(prompt_tokens["input_ids"])] = [label_pad] * len(prompt_tokens["input_ids"])
        seqs.append(s)
    return seqs


def _authors_oracle(row, tokenizer, max_length, max_prompt_length):
    """One canonical row -> the authors' K sequences. The row becomes their dataset's A_k
    conversations (prompt + response k; a plain string as a user / an assistant message)."""
    prompt = row["prompt"]
    p = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    K = len(row["responses"])
    example = {
        f"A{k}": [dict(m) for m in p] + (r if isinstance(r, list) else [{"role": "assistant", "content": r}])
        for k, r in enumerate(row["responses"])
    }
    texts = _authors_apply_chat_template(example, tokenizer, K)
    item = {"prompt": texts["text_prompt"], **{f"A{k}": texts[f"text_A{k}"] for k in range(K)}}
    return _authors_tokenize_batch_element(item, tokenizer, K, max_length, max_prompt_length)


# ----------------------------------------------------------------------------------------------
# Data and tokenizers
# ----------------------------------------------------------------------------------------------


def _msg(role, content):
    return {"role": role, "content": content}


def _k_rows(n=10, seed=5):
    """K-response rows, K ragged in 2..4, response lengths ragged, conversational."""
    rows = []
    for i, task in enumerate(tinylm.synthetic_corpus(n, seed=seed)):
        K = 2 + i % 3
        good = task["response"]
        resps = [good] + [good[::-1] * (1 + j) + "x" * (i % 4) for j in range(K - 1)]
        rows.append(
            {
                "prompt": [_msg("user", task["prompt"] + " please" * (i % 5))],
                "responses": [[_msg("assistant", r)] for r in resps],
                "rewards": [float(K - j) for j in range(K)],
            }
        )
    return rows


def _pair_rows(n=6, seed=8):
    """Pairwise rows: chosen first, K = 2."""
    return [
        {
            "prompt": [_msg("user", t["prompt"])],
            "responses": [
                [_msg("assistant", t["response"])],
                [_msg("assistant", t["response"][::-1] + " no")],
            ],
            "rewards": [1.0, 0.0],
        }
        for t in tinylm.synthetic_corpus(n, seed=seed)
    ]


def _special_rows():
    """A system prompt (kept as the system turn), a multi-turn prompt (only the first user message
    is the prompt; the rest ends up in the response text), plain text (user / assistant)."""
    return [
        {
            "prompt": [_msg("system", "be brief"), _msg("user", "add 2 3")],
            "responses": [[_msg("assistant", "5")], [_msg("assistant", "six")]],
            "rewards": [1.0, 0.0],
        },
        {
            "prompt": [_msg("user", "hi"), _msg("assistant", "hello"), _msg("user", "add 1 1")],
            "responses": [[_msg("assistant", "2")], [_msg("assistant", "3")], [_msg("assistant", "eleven")]],
            "rewards": [2.0, 1.0, 0.0],
        },
        {"prompt": "reverse abc", "responses": ["cba", "abc", "bca"], "rewards": [1.0, 0.5, 0.0]},
    ]


@pytest.fixture(scope="module")
def tokenizers():
    texts = tinylm.corpus_texts(tinylm.synthetic_corpus(200, seed=3))
    zephyr = tinylm.train_tokenizer(texts, vocab_size=320, chat_template=AUTHORS_DEFAULT_TEMPLATE)
    kit = tinylm.train_tokenizer(texts, vocab_size=320)  # the tiny kit's template (BOS, no "\n")
    return {"zephyr": zephyr, "tinykit": kit}


def _sequences(batch, n, length):
    """Sequence n of a collated batch cut to its real length, as three lists."""
    return {
        "input_ids": batch["input_ids"][n, :length].tolist(),
        "attention_mask": batch["attention_mask"][n, :length].tolist(),
        "labels": batch["labels"][n, :length].tolist(),
    }


# ----------------------------------------------------------------------------------------------
# rendering: authors == the oracle
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["zephyr", "tinykit"])
@pytest.mark.parametrize(
    "rows_fn,max_length,max_prompt_length",
    [
        (_k_rows, 512, 256),  # nothing truncated
        (_k_rows, 40, 24),  # prompts and responses truncated
        (_pair_rows, 512, 256),
        (_pair_rows, 30, 20),
        (_special_rows, 512, 256),
        (_special_rows, 24, 16),
    ],
)
def test_authors_rendering_equals_their_code(tokenizers, template, rows_fn, max_length, max_prompt_length):
    tok = tokenizers[template]
    rows = rows_fn()
    ds = tokenize_k_dataset(
        rows, tok, max_length=max_length, max_prompt_length=max_prompt_length, rendering="authors", warn=False
    ).dataset
    assert len(ds) == len(rows), "no row may be dropped: the authors' code keeps every row"
    batch = KResponseCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])
    K = batch["mask"].shape[1]
    truncated = False
    for b, row in enumerate(rows):
        want = _authors_oracle(row, tok, max_length, max_prompt_length)
        assert len(want) == int(batch["mask"][b].sum()), "one sequence per response"
        for k, w in enumerate(want):
            n = b * K + k
            length = len(w["input_ids"])
            truncated |= length < len(_authors_oracle(row, tok, 10**6, max_prompt_length)[k]["input_ids"])
            got = _sequences(batch, n, length)
            for key in ("input_ids", "labels", "attention_mask"):
                assert got[key] == w[key], (
                    f"{template} row {b} response {k}: {key} differs from the authors' collator\n"
                    f"ncakit:  {got[key]}\nauthors: {w[key]}"
                )
            # padding after the sequence: not attended, not scored (data_utils.py:202-233)
            assert batch["attention_mask"][n, length:].eq(0).all(), "padding must not be attended"
            assert batch["labels"][n, length:].eq(-100).all(), "padding must not be scored"
            assert int(batch["response_lengths"][b, k]) == length - int(batch["prompt_lengths"][b])
    if max_length < 100:
        assert truncated, "the short max_length cases must exercise the authors' truncation"


def test_authors_rendering_hides_inner_eos_and_scores_it(tokenizers):
    """The rules the issue names, read off the oracle's output on the Zephyr template: an empty
    system turn opens the prompt, every EOS inside the text has attention 0 yet (in responses) a
    label, and each response ends with a second, attended EOS."""
    tok = tokenizers["zephyr"]
    eos = tok.eos_token_id
    rows = _pair_rows(3)
    ds = tokenize_k_dataset(rows, tok, rendering="authors", warn=False).dataset
    for b in range(len(rows)):
        prompt_text = tok.decode(ds[b]["prompt_ids"])
        assert prompt_text.startswith("<|system|>\n" + tok.eos_token + "\n<|user|>\n"), prompt_text
        for k, resp in enumerate(ds[b]["response_ids"]):
            att = ds[b]["response_attention_mask"][k]
            assert resp[-1] == eos and att[-1] == 1, "the appended EOS is attended (data_utils.py:102-103)"
            assert resp.count(eos) == 2, "the template's EOS and the appended one"
            inner = resp.index(eos)
            assert att[inner] == 0, "an EOS inside the text is hidden from attention (data_utils.py:96-101)"
            assert tok.decode(resp[inner + 1 : -1]) == "\n", "the template's newline sits between the two EOS"
        assert [a for t, a in zip(ds[b]["prompt_ids"], ds[b]["prompt_attention_mask"]) if t == eos] == [0, 0]


# ----------------------------------------------------------------------------------------------
# rendering: trl unchanged
# ----------------------------------------------------------------------------------------------


def _trl_rule(row, tok):
    """TRL 1.16's rule for a conversational row, written out (trl/trainer/dpo_trainer.py:1080-1125):
    prompt = template(prompt, add_generation_prompt=True), completion = the rest of the ids."""
    p = tok.apply_chat_template(row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True)
    p = list(p["input_ids"])
    out = []
    for r in row["responses"]:
        full = list(tok.apply_chat_template(row["prompt"] + r, tokenize=True, return_dict=True)["input_ids"])
        assert full[: len(p)] == p
        out.append(full[len(p) :])
    return p, out


@pytest.mark.parametrize("template", ["zephyr", "tinykit"])
def test_trl_rendering_unchanged(tokenizers, template):
    tok = tokenizers[template]
    rows = _k_rows() + _pair_rows()
    default = tokenize_k_dataset(rows, tok, warn=False).dataset
    explicit = tokenize_k_dataset(rows, tok, rendering="trl", warn=False).dataset
    assert "prompt_attention_mask" not in default.column_names, "trl rows carry no attention columns"
    assert default.to_list() == explicit.to_list(), "rendering='trl' is the default"
    for b, row in enumerate(rows):
        p, resps = _trl_rule(row, tok)
        assert default[b]["prompt_ids"] == p, f"row {b}: prompt ids are TRL's"
        assert default[b]["response_ids"] == resps, f"row {b}: completion ids are TRL's"
    batch = KResponseCollator(tok.pad_token_id)([default[i] for i in range(len(default))])
    K = batch["mask"].shape[1]
    for b, row in enumerate(default):
        for k, resp in enumerate(row["response_ids"]):
            length = len(row["prompt_ids"]) + len(resp)
            att = batch["attention_mask"][b * K + k]
            assert att[:length].eq(1).all() and att[length:].eq(0).all(), (
                f"row {b} response {k}: trl rendering attends every real token (EOS included), no padding"
            )


def test_reference_cache_key_trl_unchanged_authors_distinct(tokenizers):
    """The reference-cache data key of trl rows is the formula it had before the attention
    columns (token ids only); authors rows get another key (other ids, and their attention)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ncakit.scale.refcache import data_fingerprint

    def old_key(ds):  # refcache.data_fingerprint before rendering: authors existed
        h = hashlib.sha256()
        for name in ("prompt_ids", "response_ids"):
            h.update(name.encode())
            arr = ds.select_columns([name]).with_format("arrow")[:].column(name).combine_chunks()
            while pa.types.is_list(arr.type):
                lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
                h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
                arr = pc.list_flatten(arr)
            h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
        return h.hexdigest()

    tok = tokenizers["zephyr"]
    rows = _k_rows()
    trl = tokenize_k_dataset(rows, tok, warn=False).dataset
    authors = tokenize_k_dataset(rows, tok, rendering="authors", warn=False).dataset
    assert data_fingerprint(trl) == old_key(trl), "trl caches written before this change stay valid"
    assert data_fingerprint(authors) != data_fingerprint(trl), "the two renderings never share a cache entry"
    assert data_fingerprint(authors) != old_key(authors), "the authors' attention is part of the key"
    assert data_fingerprint(authors) == data_fingerprint(authors.to_list()), "Dataset and row list agree"


def test_config_key(tmp_path):
    from ncakit.scale.config import TrainConfig

    assert TrainConfig().rendering == "trl"
    with pytest.raises(ValueError, match="rendering"):
        TrainConfig(output_dir=str(tmp_path), rendering="authors", apply_chat_template=False).validate()


def test_run_fingerprint_distinguishes_renderings():
    """A checkpoint of one rendering does not resume as the other; trl fingerprints (and so every
    checkpoint written before the key existed) have no ``rendering`` entry."""
    from ncakit.scale.config import TrainConfig
    from ncakit.scale.fingerprint import check_allowed_changes, check_resume, run_fingerprint

    def fp(rendering):
        cfg = TrainConfig(rendering=rendering)
        kw = dict(num_processes=1, warmup_steps=0, max_steps=10, data_stats={}, trainable_params=1)
        return run_fingerprint(cfg, original=cfg, **kw)

    trl, authors = fp("trl"), fp("authors")
    assert "rendering" not in trl, "the default adds no key: older checkpoints keep resuming"
    assert authors["rendering"] == "authors"
    with pytest.raises(ValueError, match="rendering"):
        check_resume(trl, authors, allow=[], checkpoint="ckpt", checkpoint_step=1)
    check_allowed_changes(["rendering"])  # a deliberate change can be allowed by name


# ----------------------------------------------------------------------------------------------
# End to end: the tiny kit trained both ways
# ----------------------------------------------------------------------------------------------


def _ref_values(out_dir):
    """{rows: reference log-probs} of the run's cache entries (training set 24 rows, eval set 6)."""
    from safetensors.numpy import load_file

    from ncakit.scale.refcache import read_manifest

    files = sorted((out_dir / "ref_cache").glob("ref_logps-*.safetensors"))
    out = {int(read_manifest(f)["rows"]): load_file(str(f))["values"] for f in files}
    assert sorted(out) == [6, 24], f"one cache entry per split expected, got {files}"
    return out


@pytest.mark.slow
def test_end_to_end_authors_rendering_trains_and_differs(tmp_path_factory):
    from _tinykit import build_small_kit, run_train, small_args

    from ncakit.scale.data import load_k_dataset

    kit = build_small_kit(tmp_path_factory, "authors_kit")
    results, refs = {}, {}
    for rendering in ("trl", "authors"):
        out = tmp_path_factory.mktemp(f"run_{rendering}")
        extra = ("--max_steps", "3", "--eval_split", "test", "--eval_steps", "3", "--rendering", rendering)
        results[rendering] = run_train(small_args(kit, out, *extra))
        refs[rendering] = _ref_values(out)
    for rendering, res in results.items():
        assert res.state.global_step == 3, f"{rendering}: the run trains its 3 steps"
        losses = [h["loss"] for h in res.history if "loss" in h]
        assert losses and all(math.isfinite(x) for x in losses), f"{rendering}: finite losses {losses}"
    for rows in (24, 6):  # training and eval sets: the reference pass and evaluation both rendered
        a, t = refs["authors"][rows], refs["trl"][rows]
        assert a.shape == t.shape, "same rows and responses either way"
        assert (a != t).all(), f"{rows}-row set: the summed log-probs differ on every sequence"
    evals = [h for h in results["authors"].history if any(key.startswith("eval_") for key in h)]
    assert evals, "the authors-rendered run evaluates"

    # the authors' sequences are longer by exactly the tokens their code adds (untruncated here)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(kit / "tokenizer"))
    eos = tok.eos_token_id
    rows = load_k_dataset(str(kit / "train.jsonl"), warn=False).dataset.to_list()
    args = dict(max_length=4096, max_prompt_length=2048, apply_chat_template=True, warn=False)
    trl = tokenize_k_dataset(rows, tok, **args).dataset
    authors = tokenize_k_dataset(rows, tok, rendering="authors", **args).dataset
    for b, row in enumerate(rows):
        oracle = _authors_oracle(row, tok, 4096, 2048)
        for k, seq in enumerate(oracle):
            a, t = authors[b]["response_ids"][k], trl[b]["response_ids"][k]
            assert len(a) == sum(x != -100 for x in seq["labels"]), "scored tokens = the authors' labels"
            # the kit's template renders BOS + "<|assistant|>\n" before the turn; the authors strip
            # only a leading "<|assistant|>\n" (data_utils.py:246-250), so the header stays, and
            # one more EOS follows (data_utils.py:102)
            header = tok("<|bos|><|assistant|>\n", add_special_tokens=False)["input_ids"]
            assert a == header + t + [eos], f"row {b} response {k}: authors = header + trl completion + EOS"
