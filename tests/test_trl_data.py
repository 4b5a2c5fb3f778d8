"""Data parity with TRL 1.16: on the same preference file, ncakit's tokenisation gives TRL's
DPOTrainer token ids row by row, and ncakit's DPO loss on them equals ``DPOTrainer.evaluate()``.

What is compared, for a plain-text file (prompt/chosen/rejected strings), a conversational one
(message lists) and a conversational one under a chat template whose generation prompt is NOT a
prefix of the assistant turn:

1. ids: ``tokenize_k_dataset(load_k_dataset(file))`` -> ``prompt_ids`` / ``response_ids[0]`` /
   ``response_ids[1]`` == TRL's ``trainer.eval_dataset`` ``prompt_ids`` / ``chosen_ids`` /
   ``rejected_ids`` (TRL's own ``_prepare_dataset`` ran on the file), for every row;
2. loss: ncakit ``batch_logps`` (policy and reference) + ``get_loss("dpo")`` on ncakit's ids ==
   TRL's ``trainer.evaluate()["eval_loss"]`` (one eval batch holding every row), within 1e-4. The
   reference is a second tiny model (another seed), so the loss depends on the tokens (with the
   policy as its own reference every DPO loss is log 2 whatever the tokens);
3. token metrics: the same batch through the scale loop's metric chain (``batch_logps(...,
   stats=True)`` -> ``MetricsWindow.rows`` -> ``window_metrics(prefix="eval_")``) gives TRL's
   ``eval_entropy``, ``eval_logits/chosen``, ``eval_logits/rejected`` and
   ``eval_mean_token_accuracy`` (TRL's fused LM head kernel), within 1e-4, on the hidden-state and
   the chunked-logits paths.

Nothing is truncated (``max_length`` is above every row): TRL cuts in its collator, ncakit uses the
authors' truncation; the two agree only when nothing is cut. Skipped when trl is not installed.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

pytest.importorskip("trl", reason="trl not installed")

from ncakit import get_loss  # noqa: E402
from ncakit.scale import tinylm  # noqa: E402
from ncakit.scale.data import (  # noqa: E402
    KResponseCollator,
    TemplateMismatchWarning,
    load_k_dataset,
    tokenize_k_dataset,
    tokenize_k_example,
)
from ncakit.scale.forward import batch_logps  # noqa: E402
from ncakit.scale.tracking import MetricsWindow, window_metrics  # noqa: E402

BETA = 0.5
MAX_LENGTH, MAX_PROMPT_LENGTH = 256, 128
N_ROWS = 16

# generation prompt "<|assistant|>\nA:" but the assistant turn renders as "<|assistant|>\n{content}"
NON_PREFIX_TEMPLATE = tinylm.CHAT_TEMPLATE.replace("{{ '<|assistant|>\n' }}", "{{ '<|assistant|>\nA:' }}")
assert NON_PREFIX_TEMPLATE != tinylm.CHAT_TEMPLATE


@pytest.fixture(scope="module")
def kit():
    tok = tinylm.train_tokenizer(tinylm.corpus_texts(tinylm.synthetic_corpus(200, seed=3)), vocab_size=320)
    policy = tinylm.tiny_llama(tok, hidden=32, layers=2, seed=0)
    # a short SFT warm-up: peaked next-token distributions and argmax hits, so the token metrics
    # (entropy below ln V, mean logits away from 0, accuracy above 0) are not a random init's
    tinylm.sft_warmup(policy, tok, steps=30, n_rows=256, batch_size=16, lr=1e-2, warmup_steps=3)
    policy.eval()
    reference = tinylm.tiny_llama(tok, hidden=32, layers=2, seed=1).eval()
    return tok, policy, reference


def _rows(conversational: bool) -> list[dict]:
    rows = []
    for i, task in enumerate(tinylm.synthetic_corpus(N_ROWS, seed=11)):
        prompt, good = task["prompt"], task["response"]
        bad = good[::-1] + ("x" * (i % 3))
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
        else:  # TRL's standard format: the completion follows the prompt text directly
            rows.append({"prompt": prompt + "\n", "chosen": good, "rejected": " " + bad})
    return rows


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trl(tok, policy, reference, path, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        beta=BETA,
        max_length=MAX_LENGTH,
        per_device_eval_batch_size=N_ROWS,
        use_cpu=True,
        bf16=False,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=ds,
        eval_dataset=ds,
        processing_class=tok,
    )
    return trainer


def _ncakit(tok, path, tmp_path, **kw):
    loaded = load_k_dataset(str(path), cache_dir=str(tmp_path / "hf"), warn=False)
    return tokenize_k_dataset(
        loaded.dataset, tok, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH, warn=False, **kw
    )


def _ncakit_loss(tok, policy, reference, ds) -> float:
    batch = KResponseCollator(tok.pad_token_id, k=2)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pol, ref = batch_logps(policy, batch), batch_logps(reference, batch)
    return float(get_loss("dpo")(pol, ref, beta=BETA).loss.mean())


TOKEN_METRICS = ("eval_entropy", "eval_logits/chosen", "eval_logits/rejected", "eval_mean_token_accuracy")


def _ncakit_eval(tok, policy, reference, ds, path: str) -> dict[str, float]:
    """The scale loop's eval metrics (``evaluate``'s chain) on one batch holding every row."""
    batch = KResponseCollator(tok.pad_token_id, k=2)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pol, stats = batch_logps(policy, batch, path=path, stats=True)
        ref = batch_logps(reference, batch)
    out = get_loss("dpo")(pol, ref, batch["rewards"], mask=batch["mask"], beta=BETA)
    return window_metrics(MetricsWindow.rows(out, pol, batch, stats), prefix="eval_")


def _assert_same_ids(ours, trl_ds):
    assert len(ours) == len(trl_ds) == N_ROWS
    for i in range(N_ROWS):
        a, b = ours[i], trl_ds[i]
        assert a["prompt_ids"] == b["prompt_ids"], f"row {i}: prompt ids"
        assert a["response_ids"][0] == b["chosen_ids"], f"row {i}: chosen ids"
        assert a["response_ids"][1] == b["rejected_ids"], f"row {i}: rejected ids"


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_same_ids_and_eval_loss_as_trl(kit, tmp_path, conversational):
    tok, policy, reference = kit
    path = _write(tmp_path, "prefs.jsonl", _rows(conversational))
    trainer = _trl(copy.deepcopy(tok), policy, reference, path, tmp_path)
    ours, stats = _ncakit(tok, path, tmp_path)
    assert stats.rows_kept == N_ROWS and "template_mismatch" not in stats.examples
    _assert_same_ids(ours, trainer.eval_dataset)
    if not conversational:  # plain text: no template, EOS appended once, no BOS (this tokenizer adds none)
        assert all(ours[i]["prompt_ids"][0] != tok.bos_token_id for i in range(N_ROWS))
        assert all(
            r[-1] == tok.eos_token_id and r.count(tok.eos_token_id) == 1 for r in ours[0]["response_ids"]
        )
        assert "<|user|>" not in tok.decode(ours[0]["prompt_ids"])
    else:
        assert tok.decode(ours[0]["prompt_ids"]).endswith("<|assistant|>\n")
    trl_metrics = trainer.evaluate()
    trl_loss = trl_metrics["eval_loss"]
    ours_loss = _ncakit_loss(tok, policy, reference, ours)
    assert ours_loss == pytest.approx(trl_loss, abs=1e-4)
    assert set(TOKEN_METRICS) <= set(trl_metrics), sorted(trl_metrics)
    for path in ("hidden", "logits"):
        got = _ncakit_eval(tok, policy, reference, ours, path)
        assert got["eval_loss"] == pytest.approx(trl_loss, abs=1e-4)
        for key in TOKEN_METRICS:
            assert got[key] == pytest.approx(trl_metrics[key], abs=1e-4), (path, key)


def test_non_prefix_template_warns_and_falls_back_as_trl(kit, tmp_path):
    tok, policy, reference = kit
    bent = copy.deepcopy(tok)
    bent.chat_template = NON_PREFIX_TEMPLATE
    path = _write(tmp_path, "prefs.jsonl", _rows(conversational=True))
    trainer = _trl(copy.deepcopy(bent), policy, reference, path, tmp_path)  # TRL: logger.warning_once
    with pytest.warns(TemplateMismatchWarning, match=rf"{N_ROWS} of {N_ROWS} kept rows"):
        ours, stats = _ncakit(bent, path, tmp_path)
    assert stats.examples["template_mismatch"].startswith(f"{N_ROWS} of {N_ROWS}")
    assert stats.rows_kept == N_ROWS
    _assert_same_ids(ours, trainer.eval_dataset)  # the same fallback split as TRL
    assert not tok.decode(ours[0]["prompt_ids"]).endswith("A:"), "the diverging tail is left out"
    trl_loss = trainer.evaluate()["eval_loss"]
    assert _ncakit_loss(bent, policy, reference, ours) == pytest.approx(trl_loss, abs=1e-4)
    # the documented option: stop with the fix instead
    with pytest.raises(ValueError, match=r"^on_template_mismatch: 'error'.*Fix: use a chat template"):
        _ncakit(bent, path, tmp_path, on_template_mismatch="error")


# ----------------------------------------------------------------------------------------------
# The apply_chat_template rule (auto | true | false)
# ----------------------------------------------------------------------------------------------

PLAIN = {"prompt": "reverse: abc\n", "responses": ["cba", "abc"], "rewards": [1.0, 0.0]}
CHAT = {
    "prompt": [{"role": "user", "content": "reverse: abc"}],
    "responses": [[{"role": "assistant", "content": "cba"}], [{"role": "assistant", "content": "abc"}]],
    "rewards": [1.0, 0.0],
}


def test_apply_chat_template_modes(kit):
    tok = kit[0]
    kw = dict(max_length=64, max_prompt_length=32)
    auto = tokenize_k_example(PLAIN, tok, **kw)
    assert tokenize_k_example(PLAIN, tok, apply_chat_template="false", **kw) == auto, "auto: plain text as is"
    assert "<|user|>" not in tok.decode(auto["prompt_ids"])
    wrapped = tokenize_k_example(PLAIN, tok, apply_chat_template="true", **kw)
    assert tok.decode(wrapped["prompt_ids"]).startswith(tok.bos_token + "<|user|>\n")
    assert tok.decode(wrapped["response_ids"][0]) == "cba" + tok.eos_token
    chat = tokenize_k_example(CHAT, tok, **kw)
    assert tokenize_k_example(CHAT, tok, apply_chat_template="true", **kw) == chat
    assert chat["prompt_ids"] == wrapped["prompt_ids"] or tok.decode(chat["prompt_ids"]).endswith(
        "<|assistant|>\n"
    )
    for value, mode in ((True, "true"), (False, "false"), ("TRUE", "true")):
        assert tokenize_k_example(PLAIN, tok, apply_chat_template=value, **kw) == tokenize_k_example(
            PLAIN, tok, apply_chat_template=mode, **kw
        )
    with pytest.raises(ValueError, match=r"^apply_chat_template: 'false', but the data is conversational"):
        tokenize_k_example(CHAT, tok, apply_chat_template="false", **kw)
    with pytest.raises(ValueError, match=r"^apply_chat_template: expected 'auto', 'true' or 'false'"):
        tokenize_k_example(PLAIN, tok, apply_chat_template="yes", **kw)
    with pytest.raises(ValueError, match=r"^on_template_mismatch: expected 'warn' or 'error'"):
        tokenize_k_example(PLAIN, tok, on_template_mismatch="ignore", **kw)
    no_template = copy.deepcopy(tok)
    no_template.chat_template = None
    with pytest.raises(
        ValueError, match=r"^apply_chat_template: 'true', but the tokenizer has no chat_template"
    ):
        tokenize_k_example(PLAIN, no_template, apply_chat_template="true", **kw)
    with pytest.raises(ValueError, match=r"^apply_chat_template: the data is conversational"):
        tokenize_k_example(CHAT, no_template, **kw)
    # a dataset-level refusal is one error, not a drop per row
    with pytest.raises(ValueError, match="apply_chat_template"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenize_k_dataset([CHAT, CHAT], tok, apply_chat_template="false", **kw)
