"""The bad-input table (issue 14, "Every error names the input"): one row per wrong input a user can
give the data loaders and adapters, the scale config and its command line, generate, the losses and
the toy demo. Each row asserts the exception type, that the message STARTS with the argument's name
(``argument: expected X, got Y``, ncakit/validation.py) and that it says what was expected.

Nothing here loads a model: every error must come before that (the whole table runs in seconds).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

from ncakit import get_loss  # noqa: E402
from ncakit.scale import cli as C  # noqa: E402
from ncakit.scale import data  # noqa: E402
from ncakit.scale import generate as G  # noqa: E402
from ncakit.scale import rewards as R  # noqa: E402

datasets.disable_progress_bars()
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    id: str
    call: Any  # fn(tmp: Path) -> anything; must raise
    exc: type[BaseException]
    starts: str  # the message starts with this (the argument's name)
    expected: str = "expected"  # a regex: what the message says was expected


def good_row(**over) -> dict:
    row = {"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, 0.0]}
    row.update(over)
    return row


def _write(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _jsonl(tmp: Path, name: str, rows) -> str:
    return _write(tmp, name, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
# data: adapters (pure functions) and loaders
# ----------------------------------------------------------------------------------------------

E = data.ExampleError
DATA = [
    Case(
        "canonical-missing-prompt",
        lambda t: data.from_canonical({"responses": ["a", "b"], "rewards": [1, 0]}),
        E,
        "prompt: missing",
    ),
    Case("canonical-prompt-int", lambda t: data.from_canonical(good_row(prompt=3)), E, "prompt:"),
    Case(
        "canonical-prompt-null",
        lambda t: data.from_canonical(good_row(prompt=None)),
        E,
        "prompt: is null",
        "expected text",
    ),
    Case("canonical-responses-str", lambda t: data.from_canonical(good_row(responses="ab")), E, "responses:"),
    Case("canonical-rewards-str", lambda t: data.from_canonical(good_row(rewards="1,0")), E, "rewards:"),
    Case(
        "canonical-k-mismatch",
        lambda t: data.from_canonical(good_row(rewards=[1.0])),
        E,
        "rewards:",
        "one reward per response",
    ),
    Case(
        "canonical-reward-nan",
        lambda t: data.from_canonical(good_row(rewards=[math.nan, 0])),
        E,
        "rewards[0]:",
    ),
    Case(
        "canonical-reward-inf",
        lambda t: data.from_canonical(good_row(rewards=[0, -math.inf])),
        E,
        "rewards[1]:",
    ),
    Case(
        "canonical-reward-1e39",
        lambda t: data.from_canonical(good_row(rewards=[1e39, 0])),
        E,
        "rewards[0]:",
        "float32",
    ),
    Case(
        "canonical-reward-null",
        lambda t: data.from_canonical(good_row(rewards=[None, 0])),
        E,
        "rewards[0]:",
        "expected a finite number",
    ),
    Case(
        "canonical-reward-word",
        lambda t: data.from_canonical(good_row(rewards=["high", 0])),
        E,
        "rewards[0]:",
    ),
    Case(
        "canonical-reward-bool", lambda t: data.from_canonical(good_row(rewards=[True, 0])), E, "rewards[0]:"
    ),
    Case(
        "canonical-one-response",
        lambda t: data.from_canonical(good_row(responses=["a"], rewards=[1])),
        E,
        "responses:",
        "at least 2",
    ),
    Case(
        "canonical-empty-prompt",
        lambda t: data.from_canonical(good_row(prompt="  ")),
        E,
        "prompt: is empty",
        "empty",
    ),
    Case(
        "canonical-bad-message",
        lambda t: data.from_canonical(good_row(prompt=[{"role": "user"}])),
        E,
        "prompt[0].content:",
        "expected text",
    ),
    Case(
        "canonical-message-not-dict", lambda t: data.from_canonical(good_row(prompt=["hi"])), E, "prompt[0]:"
    ),
    Case("canonical-not-a-mapping", lambda t: data.from_canonical(["p", ["a"], [1]]), E, "prompt:"),
    Case("ultrafeedback-score", lambda t: data.from_ultrafeedback({}, score="gpt5"), ValueError, "score:"),
    Case(
        "ultrafeedback-completions-str",
        lambda t: data.from_ultrafeedback({"instruction": "x", "completions": "c"}),
        E,
        "completions:",
    ),
    Case(
        "ultrafeedback-no-rating",
        lambda t: data.from_ultrafeedback({"instruction": "x", "completions": [{"response": "a"}]}),
        E,
        "completions[0].overall_score: missing",
        "missing",
    ),
    Case(
        "nca-reward-no-A0", lambda t: data.from_nca_reward({"prompt": "x"}), E, "A0:", "expected columns A0"
    ),
    Case(
        "nca-reward-last-role",
        lambda t: data.from_nca_reward({"A0": [{"role": "user", "content": "q"}], "score_A0": 1}),
        E,
        "A0[-1].role:",
    ),
    Case(
        "pairwise-pair-rewards",
        lambda t: data.from_pairwise({}, pair_rewards="soft"),
        ValueError,
        "pair_rewards:",
    ),
    Case(
        "pairwise-text-vs-chat",
        lambda t: data.from_pairwise({"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}),
        E,
        "rejected:",
        "but chosen is text",
    ),
    Case(
        "pairwise-no-prefix",
        lambda t: data.from_pairwise({"chosen": "abc", "rejected": "xyz"}),
        E,
        "prompt: missing",
        "share no prefix",
    ),
    Case("schema-unknown", lambda t: data.canonicalize([good_row()], "ultra"), ValueError, "schema:"),
    Case("schema-undetectable", lambda t: data.canonicalize([{"q": 1, "a": 2}]), ValueError, "columns:"),
    Case(
        "column-missing",
        lambda t: data.canonicalize([{"prompt": "p", "responses": ["a", "b"]}], "canonical"),
        ValueError,
        "rewards: column missing",
        "needed",
    ),
    Case("on-bad", lambda t: data.canonicalize([good_row()], on_bad="skip"), ValueError, "on_bad:"),
    Case(
        "on-bad-raise-names-row-field",
        lambda t: data.canonicalize([good_row(rewards=[math.nan, 0])], on_bad="raise", warn=False),
        E,
        "rewards[0]:",
    ),
    Case("pairs-rule", lambda t: data.to_pairwise([good_row()], "best_vs_best"), ValueError, "rule:"),
    Case(
        "pairs-pair-rewards",
        lambda t: data.to_pairwise([good_row()], pair_rewards="soft"),
        ValueError,
        "pair_rewards:",
    ),
    Case(
        "load-empty-file",
        lambda t: data.load_k_dataset(_write(t, "e.jsonl", "")),
        ValueError,
        "name_or_path:",
        "expected K-response examples",
    ),
    Case(
        "load-empty-json-array",
        lambda t: data.load_k_dataset(_write(t, "e.json", "[]\n")),
        ValueError,
        "name_or_path:",
        "expected K-response examples",
    ),
    Case(
        "load-mistyped-relative-path",
        lambda t: data.load_k_dataset("./data/trian.jsonl"),
        ValueError,
        "name_or_path:",
        "expected an existing local file.*not looked up on the Hub",
    ),
    Case(
        "load-mistyped-absolute-path",
        lambda t: data.load_k_dataset(str(t / "nope" / "x.parquet")),
        ValueError,
        "name_or_path:",
        "expected an existing local file",
    ),
    Case(
        "load-mistyped-home-path",
        lambda t: data.load_k_dataset("~/no-such-ncakit-dir/train.json"),
        ValueError,
        "name_or_path:",
        "expected an existing",
    ),
    Case(
        "load-glob-matches-nothing",
        lambda t: data.load_k_dataset(str(t / "*.jsonl")),
        ValueError,
        "name_or_path:",
        "expected the glob",
    ),
    Case(
        "load-folder-without-data",
        lambda t: data.load_k_dataset(str(t) + "/"),
        ValueError,
        "name_or_path:",
        "expected .json/.jsonl/.parquet files",
    ),
    Case(
        "load-broken-json",
        lambda t: data.load_k_dataset(_write(t, "b.jsonl", '{"prompt": "p",\n')),
        ValueError,
        "name_or_path:",
        "expected valid",
    ),
    Case(
        "load-mixed-suffixes",
        lambda t: (
            _jsonl(t, "a.jsonl", [good_row()]),
            _write(t, "b.txt", "x"),
            data.load_k_dataset(str(t / "*")),
        )[-1],
        ValueError,
        "name_or_path:",
        "expected .json/.jsonl/.parquet files of one kind",
    ),
    Case(
        "load-max-rows-0",
        lambda t: data.load_k_dataset(_jsonl(t, "a.jsonl", [good_row()]), max_rows=0),
        ValueError,
        "max_rows:",
    ),
    Case(
        "load-zero-byte-parquet",
        lambda t: data.load_k_dataset(_write(t, "z.parquet", "")),
        ValueError,
        "name_or_path:",
        "expected valid",
    ),
    Case(
        "load-every-row-dropped",
        lambda t: data.load_k_dataset(_jsonl(t, "a.jsonl", [good_row(rewards=[1, "x"])]), warn=False),
        ValueError,
        "name_or_path:",
        r"expected usable K-response examples .* rewards\[1\]: expected a number",
    ),
    Case(
        "load-every-response-empty",
        lambda t: data.load_k_dataset(_jsonl(t, "a.jsonl", [good_row(responses=["", " "])]), warn=False),
        ValueError,
        "name_or_path:",
        "expected usable K-response examples .*all_responses_empty",
    ),
    Case(
        "save-suffix",
        lambda t: data.save_k_dataset([good_row()], t / "out.csv"),
        ValueError,
        "path:",
        "expected a .jsonl, .json or .parquet",
    ),
    Case(
        "save-nan-reward",
        lambda t: data.save_k_dataset([good_row(rewards=[math.nan, 0])], t / "o.jsonl"),
        ValueError,
        "rewards: expected finite numbers in every row, got nan in row 0",
    ),
    Case(
        "tokenize-lengths",
        lambda t: data.tokenize_k_example(good_row(), None, max_length=8, max_prompt_length=8),
        ValueError,
        "max_prompt_length:",
        "expected < max_length",
    ),
    Case(
        "tokenize-max-length-0",
        lambda t: data.tokenize_k_dataset([good_row()], None, max_length=0),
        ValueError,
        "max_length:",
        "expected a positive int",
    ),
    Case(
        "tokenize-budget",
        lambda t: data.tokenize_k_example(
            good_row(), None, max_length=64, max_prompt_length=8, response_budget="all"
        ),
        ValueError,
        "response_budget:",
    ),
    Case(
        "tokenize-not-canonical",
        lambda t: data.tokenize_k_dataset([{"prompt": "p"}], None),
        ValueError,
        "responses: column missing",
        "canonical format needed",
    ),
    Case("collator-pad-id", lambda t: data.KResponseCollator(pad_token_id=None), ValueError, "pad_token_id:"),
    Case("collator-k", lambda t: data.KResponseCollator(pad_token_id=0, k=0), ValueError, "k:"),
    Case(
        "collator-no-rows",
        lambda t: data.KResponseCollator(pad_token_id=0)([]),
        ValueError,
        "rows:",
        "expected at least one",
    ),
]

# ----------------------------------------------------------------------------------------------
# the scale config and its command line
# ----------------------------------------------------------------------------------------------


def cfg(*argv):
    return lambda t: C.parse_config([str(a).replace("{tmp}", str(t)) for a in argv])


def recipe(text):
    def call(t):
        (t / "r.yaml").write_text(text)
        return C.parse_config(["--config", str(t / "r.yaml")])

    return call


CONFIG = [
    Case(
        "yaml-syntax-error",
        recipe("loss: nca\nbeta: [0.1,\n"),
        ValueError,
        "config:",
        r"expected a YAML mapping .*r\.yaml, line 3",
    ),
    Case("yaml-bad-indent", recipe("loss: nca\n  beta: 0.1\n"), ValueError, "config:", r"r\.yaml, line 2"),
    Case("yaml-not-a-mapping", recipe("- loss\n- nca\n"), ValueError, "config:", "must hold a mapping"),
    Case(
        "yaml-unknown-key",
        recipe("lerning_rate: 1e-5\n"),
        ValueError,
        "lerning_rate: unknown key",
        "did you mean 'learning_rate'",
    ),
    Case("yaml-bad-type", recipe("max_steps: many\n"), TypeError, "max_steps: expected int"),
    Case(
        "recipe-missing",
        cfg("--config", "{tmp}/none.yaml"),
        ValueError,
        "config: no such recipe file",
        "recipe file",
    ),
    Case("recipe-flag-without-path", cfg("--config"), ValueError, "config: expected a recipe path"),
    Case("cli-unknown-key", cfg("--lr", "1e-5"), ValueError, "lr: unknown key in the command line", "--help"),
    Case("cli-positional", cfg("train.yaml"), ValueError, "train.yaml: expected --key value"),
    Case("cli-bad-int", cfg("--max_steps", "1e3.5"), TypeError, "max_steps: expected int"),
    Case(
        "cli-bad-bool",
        cfg("--gradient_checkpointing", "yes please"),
        TypeError,
        "gradient_checkpointing: expected bool",
    ),
    Case(
        "cli-bad-choice",
        cfg("--torch_dtype", "fp32"),
        TypeError,
        "torch_dtype: expected one of",
        "allowed values",
    ),
    Case("cli-missing-value", cfg("--max_steps"), TypeError, "max_steps: expected int after --max_steps"),
    Case("cli-bad-mapping", cfg("--loss_kwargs", "[1, 2]"), TypeError, "loss_kwargs: expected mapping"),
    Case(
        "max-grad-norm-nan",
        cfg("--max_grad_norm", "nan"),
        ValueError,
        "max_grad_norm: expected a finite float",
    ),
    Case(
        "learning-rate-inf",
        cfg("--learning_rate", "inf"),
        ValueError,
        "learning_rate: expected a finite float",
    ),
    Case("beta-nan-in-yaml", recipe("beta: .nan\n"), ValueError, "beta: expected a finite float"),
    Case("beta-negative", cfg("--beta", "-0.1"), ValueError, "beta: expected a value > 0"),
    Case(
        "warmup-ratio", cfg("--warmup_ratio", "1.5"), ValueError, "warmup_ratio: expected a value in [0, 1)"
    ),
    Case(
        "prompt-length",
        cfg("--max_length", "64", "--max_prompt_length", "64"),
        ValueError,
        "max_prompt_length: expected < max_length",
    ),
    Case("k-one", cfg("--k", "1"), ValueError, "k: expected >= 2"),
    Case(
        "loss-unknown", cfg("--loss", "ncaa"), ValueError, "loss: unknown loss 'ncaa'", "did you mean 'nca'"
    ),
    Case(
        "loss-kwargs-unknown",
        cfg("--loss_kwargs", "{gamma: 1}"),
        ValueError,
        "loss_kwargs:",
        "expected|allowed|accepts",
    ),
    Case(
        "max-train-samples-0",
        cfg("--max_train_samples", "0"),
        ValueError,
        "max_train_samples: expected a positive int",
    ),
    Case(
        "max-eval-samples-neg",
        cfg("--max_eval_samples", "-3"),
        ValueError,
        "max_eval_samples: expected a positive int",
    ),
    Case(
        "output-dir-empty", cfg("--output_dir", ""), ValueError, "output_dir: expected a folder path, got ''"
    ),
    Case(
        "output-dir-is-a-file",
        lambda t: (_write(t, "f", ""), C.parse_config(["--output_dir", str(t / "f")]))[-1],
        ValueError,
        "output_dir: expected a folder, got the existing file",
    ),
    Case(
        "output-dir-under-a-file",
        lambda t: (_write(t, "f", ""), C.parse_config(["--output_dir", str(t / "f" / "run")]))[-1],
        ValueError,
        "output_dir: expected a folder path",
        "is a file",
    ),
    Case(
        "dataset-mistyped-path",
        cfg("--dataset_name", "./data/trian.jsonl"),
        ValueError,
        "dataset_name: expected an existing local file",
        "not looked up on the Hub",
    ),
    Case(
        "dataset-missing-parquet",
        cfg("--dataset_name", "{tmp}/train.parquet"),
        ValueError,
        "dataset_name: expected an existing",
    ),
    Case(
        "eval-dataset-mistyped",
        cfg("--eval_dataset_name", "data/test.jsonl"),
        ValueError,
        "eval_dataset_name: expected an existing",
    ),
    Case(
        "model-mistyped-path",
        cfg("--model_name_or_path", "./out/sft/fianl"),
        ValueError,
        "model_name_or_path: expected an existing local file",
    ),
    Case(
        "tokenizer-mistyped-path",
        cfg("--tokenizer_name_or_path", "~/no-such-ncakit-tok"),
        ValueError,
        "tokenizer_name_or_path: expected an existing",
    ),
    Case(
        "dataset-empty-string",
        cfg("--dataset_name="),
        ValueError,
        "dataset_name: expected a hub id or a local path, got ''",
    ),
    Case(
        "resume-from-missing",
        cfg("--resume_from", "{tmp}/checkpoint-5x"),
        ValueError,
        "resume_from: expected 'latest' or an existing checkpoint folder",
    ),
    Case(
        "tiny-kit-dir-is-a-file",
        lambda t: (_write(t, "k", ""), C.parse_config(["--tiny_kit_dir", str(t / "k")]))[-1],
        ValueError,
        "tiny_kit_dir: expected a folder path",
    ),
    Case(
        "ref-cache-dir-is-a-file",
        lambda t: (_write(t, "c", ""), C.parse_config(["--ref_cache_dir", str(t / "c")]))[-1],
        ValueError,
        "ref_cache_dir: expected a folder path",
    ),
    Case(
        "dataset-schema-unknown",
        cfg("--dataset_schema", "ultrafedback"),
        ValueError,
        "dataset_schema: expected 'auto' or one of",
        "did you mean 'ultrafeedback'",
    ),
    Case(
        "lora-dropout", cfg("--lora_dropout", "1.0"), ValueError, "lora_dropout: expected a value in [0, 1)"
    ),
    Case(
        "grad-accum-0",
        cfg("--gradient_accumulation_steps", "0"),
        ValueError,
        "gradient_accumulation_steps: expected a value > 0",
    ),
    Case(
        "max-grad-norm-negative",
        cfg("--max_grad_norm", "-1"),
        ValueError,
        "max_grad_norm: expected a value >= 0",
    ),
    Case(
        "report-to",
        cfg("--report_to", "tensorbord"),
        ValueError,
        "report_to: unknown tracker",
        "allowed values",
    ),
    Case("save-total-limit", cfg("--save_total_limit", "0"), ValueError, "save_total_limit: expected >= 1"),
    Case(
        "qlora-without-peft", cfg("--load_in_4bit", "true"), ValueError, "load_in_4bit:", "set use_peft: true"
    ),
]

# ----------------------------------------------------------------------------------------------
# generate (nothing here loads a model: main() checks every argument first)
# ----------------------------------------------------------------------------------------------


def gen(*argv):
    def call(t):
        args = [str(a).replace("{tmp}", str(t)) for a in argv]
        if "--out" not in args:
            args += ["--out", str(t / "o.jsonl")]
        return G.main(args)

    return call


GENERATE = [
    Case("gen-k-1", gen("--k", "1"), ValueError, "k: expected an int >= 2"),
    Case("gen-max-prompts-0", gen("--max_prompts", "0"), ValueError, "max_prompts: expected an int >= 1"),
    Case("gen-batch-size-0", gen("--batch_size", "0"), ValueError, "batch_size: expected an int >= 1"),
    Case(
        "gen-rm-batch-size-0",
        gen("--reward_batch_size", "-1"),
        ValueError,
        "reward_batch_size: expected an int >= 1",
    ),
    Case(
        "gen-max-new-tokens-0",
        gen("--max_new_tokens", "0"),
        ValueError,
        "max_new_tokens: expected an int >= 1",
    ),
    Case(
        "gen-temperature-0", gen("--temperature", "0"), ValueError, "temperature: expected a finite value > 0"
    ),
    Case(
        "gen-temperature-inf",
        gen("--temperature", "inf"),
        ValueError,
        "temperature: expected a finite value > 0",
    ),
    Case("gen-top-p-0", gen("--top_p", "0"), ValueError, "top_p: expected a value in (0, 1]"),
    Case("gen-top-p-nan", gen("--top_p", "nan"), ValueError, "top_p: expected a value in (0, 1]"),
    Case(
        "gen-out-suffix",
        gen("--out", "{tmp}/o.txt"),
        ValueError,
        "out: expected a file name ending in .jsonl",
    ),
    Case(
        "gen-out-is-a-folder",
        gen("--out", "{tmp}"),
        ValueError,
        "out: expected a .jsonl, .json or .parquet file path, got the folder",
    ),
    Case(
        "gen-out-exists",
        lambda t: (_write(t, "o.jsonl", "x\n"), G.main(["--out", str(t / "o.jsonl")]))[-1],
        ValueError,
        "out: expected a new file",
        "--overwrite true",
    ),
    Case(
        "gen-out-under-a-file",
        lambda t: (_write(t, "f", ""), G.main(["--out", str(t / "f" / "o.jsonl")]))[-1],
        ValueError,
        "out: expected a folder to write into",
    ),
    Case("gen-out-empty", gen("--out", ""), ValueError, "out: expected a .jsonl"),
    Case(
        "gen-prompts-mistyped",
        gen("--prompts", "./prompts.jsonl"),
        ValueError,
        "prompts: expected an existing local file",
    ),
    Case(
        "gen-model-mistyped",
        gen("--model", "./out/final"),
        ValueError,
        "model: expected an existing local file",
    ),
    Case(
        "gen-tiny-kit-dir-file",
        lambda t: (_write(t, "k", ""), G.main(["--tiny_kit_dir", str(t / "k"), "--out", str(t / "o.jsonl")]))[
            -1
        ],
        ValueError,
        "tiny_kit_dir: expected a folder",
    ),
    Case(
        "gen-tiny-kit-dir-other-files",
        lambda t: (
            (t / "kit").mkdir(),
            _write(t / "kit", "notes.txt", "x"),
            G.main(["--tiny_kit_dir", str(t / "kit"), "--out", str(t / "o.jsonl")]),
        )[-1],
        ValueError,
        "tiny_kit_dir: expected an empty folder or a tiny kit",
    ),
    Case(
        "gen-reward-module-missing",
        gen("--reward", "no_such_module:f", "--max_prompts", "1"),
        ValueError,
        "reward: cannot import module",
        "no_such_module",
    ),
    Case(
        "gen-reward-wrong-signature",
        gen("--reward", "math:sqrt", "--max_prompts", "1"),
        ValueError,
        "reward: expected fn(prompt, response)",
    ),
    Case(
        "gen-reward-model-mistyped",
        gen("--reward", "./rm/fianl"),
        ValueError,
        "reward: expected 'module:function' or an existing reward-model folder",
    ),
    Case(
        "gen-reward-returns-text",
        lambda t: R.check_reward(R.load_reward(lambda p, r: "good"), "p"),
        ValueError,
        "reward: expected fn(prompt, response)",
        "expected a number per response",
    ),
    Case(
        "gen-reward-nan",
        lambda t: R.check_reward(R.load_reward(lambda p, r: math.nan), "p"),
        ValueError,
        "reward: expected fn(prompt, response) -> a finite float",
    ),
    Case(
        "gen-prompt-column",
        lambda t: G.load_prompts(_jsonl(t, "p.jsonl", [{"question": "q"}]), column="prompt"),
        ValueError,
        "column: 'prompt' is not a column",
        "columns",
    ),
    Case(
        "gen-prompts-empty-file",
        lambda t: G.load_prompts(_write(t, "p.jsonl", "")),
        ValueError,
        "name_or_path:",
        "expected K-response examples|expected at least one",
    ),
    Case(
        "gen-sample-batch-size",
        lambda t: G.sample_k_responses(None, None, ["p"], batch_size=0),
        ValueError,
        "batch_size: expected an int >= 1",
    ),
    Case(
        "gen-dataset-k-1",
        lambda t: G.generate_k_dataset(None, None, ["p"], "ncakit.scale.tinylm:reward", k=1),
        ValueError,
        "k: expected an int >= 2",
    ),
    Case(
        "gen-dataset-no-prompts",
        lambda t: G.generate_k_dataset(None, None, [], "ncakit.scale.tinylm:reward"),
        ValueError,
        "prompts: expected at least one prompt",
    ),
    Case("gen-bad-bool-flag", gen("--overwrite", "maybe"), SystemExit, "2"),
]

# ----------------------------------------------------------------------------------------------
# the losses (ncakit core)
# ----------------------------------------------------------------------------------------------

_g = torch.Generator().manual_seed(0)
POL = torch.randn(3, 4, generator=_g, dtype=torch.float64) - 20
REF = torch.randn(3, 4, generator=_g, dtype=torch.float64) - 20
REW = torch.randn(3, 4, generator=_g, dtype=torch.float64)
PAIR = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)


def nca(**kw):
    kw = {"policy_logps": POL, "ref_logps": REF, "rewards": REW, **kw}
    return lambda t: get_loss("nca")(kw.pop("policy_logps"), kw.pop("ref_logps"), kw.pop("rewards"), **kw)


def dpo(name="dpo", **kw):
    return lambda t: get_loss(name)(POL[:, :2], REF[:, :2], PAIR, **kw)


LOSSES = [
    Case(
        "loss-unknown-name",
        lambda t: get_loss("ncaa"),
        ValueError,
        "name: unknown loss 'ncaa'",
        "expected one of",
    ),
    Case("loss-name-int", lambda t: get_loss(3), TypeError, "name: expected a loss name"),
    Case("loss-beta-0", nca(beta=0.0), ValueError, "beta: expected a finite value > 0"),
    Case("loss-beta-nan", nca(beta=math.nan), ValueError, "beta: expected a finite value > 0"),
    Case("loss-beta-bool", nca(beta=True), TypeError, "beta: expected a float > 0"),
    Case("loss-beta-str", nca(beta="0.1"), TypeError, "beta: expected a float > 0"),
    Case("loss-alpha-0", nca(alpha=0.0), ValueError, "alpha: expected a finite value > 0"),
    Case(
        "loss-first-bonus-nan", nca(first_bonus=math.nan), ValueError, "first_bonus: expected a finite value"
    ),
    Case(
        "loss-1d",
        nca(policy_logps=POL[0], ref_logps=REF[0], rewards=REW[0]),
        ValueError,
        "policy_logps: expected shape [B, K]",
    ),
    Case("loss-list", nca(policy_logps=POL.tolist()), TypeError, "policy_logps: expected a torch.Tensor"),
    Case(
        "loss-int-tensor",
        nca(policy_logps=POL.long()),
        TypeError,
        "policy_logps: expected a floating-point tensor",
    ),
    Case(
        "loss-shape-mismatch",
        nca(ref_logps=REF[:, :3]),
        ValueError,
        "ref_logps: expected the same shape as policy_logps",
    ),
    Case(
        "loss-k-1",
        nca(policy_logps=POL[:, :1], ref_logps=REF[:, :1], rewards=REW[:, :1]),
        ValueError,
        "policy_logps: expected K >= 2",
    ),
    Case(
        "loss-empty-batch",
        nca(policy_logps=POL[:0], ref_logps=REF[:0], rewards=REW[:0]),
        ValueError,
        "policy_logps: empty batch",
        "expected at least one prompt",
    ),
    Case(
        "loss-nan-logps",
        nca(policy_logps=torch.full_like(POL, math.nan)),
        ValueError,
        "policy_logps: expected finite values",
    ),
    Case(
        "loss-inf-rewards",
        nca(rewards=torch.full_like(REW, math.inf)),
        ValueError,
        "rewards: expected finite values",
    ),
    Case(
        "loss-mask-shape",
        nca(mask=torch.ones(3, 3, dtype=torch.bool)),
        ValueError,
        "mask: expected shape [3, 4]",
    ),
    Case("loss-mask-dtype", nca(mask=torch.ones(3, 4)), TypeError, "mask: expected dtype torch.bool"),
    Case(
        "loss-mask-one-valid",
        nca(mask=torch.tensor([[True, False, False, False]] * 3)),
        ValueError,
        "mask: every prompt needs at least 2 valid responses",
        "needs at least 2",
    ),
    Case(
        "loss-pairwise-k4",
        lambda t: get_loss("dpo")(POL, REF, REW),
        ValueError,
        "policy_logps: pairwise losses expect K = 2",
        "expect K = 2",
    ),
    Case(
        "loss-pairwise-unsorted",
        lambda t: get_loss("dpo")(POL[:, :2], REF[:, :2], PAIR.flip(1)),
        ValueError,
        "rewards: pairwise losses expect the chosen response first",
        "expect the chosen response first",
    ),
    Case(
        "loss-label-smoothing",
        dpo("robust_dpo", label_smoothing=0.5),
        ValueError,
        "label_smoothing: expected a value in [0, 0.5)",
    ),
    Case("loss-hinge-beta-inf", dpo("hinge", beta=math.inf), ValueError, "beta: expected a finite value > 0"),
]

_LOGITS = torch.randn(2, 5, 7, generator=_g)
_LABELS = torch.randint(0, 7, (2, 5), generator=_g)


def seq(logits=_LOGITS, labels=_LABELS, **kw):
    from ncakit.logprobs import sequence_logps

    return lambda t: sequence_logps(logits, labels, **kw)


LOSSES += [
    Case("logps-chunk-size-negative", seq(chunk_size=-1), ValueError, "chunk_size: expected an int >= 1"),
    Case("logps-chunk-size-0", seq(chunk_size=0), ValueError, "chunk_size: expected an int >= 1"),
    Case("logps-labels-shape", seq(labels=_LABELS[:, :4]), ValueError, "labels: expected shape [N, T]"),
    Case(
        "logps-labels-float",
        seq(labels=_LABELS.float()),
        TypeError,
        "labels: expected an integer (int64) tensor",
    ),
    Case(
        "logps-logits-2d", seq(logits=_LOGITS[0]), ValueError, "logits: expected a tensor of shape [N, T, V]"
    ),
    Case(
        "logps-label-id-out-of-vocab",
        seq(labels=_LABELS + 10),
        ValueError,
        "labels:",
        "expected token ids in",
    ),
]

# ----------------------------------------------------------------------------------------------
# the toy demo's command line (toy/demo.py parse_args: argparse errors, exit status 2)
# ----------------------------------------------------------------------------------------------


def _demo():
    if "ncakit_toy_demo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ncakit_toy_demo", ROOT / "toy" / "demo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ncakit_toy_demo"] = module
        spec.loader.exec_module(module)
    return sys.modules["ncakit_toy_demo"]


def demo(*argv):
    return lambda t: _demo().parse_args(list(argv))


TOY = [
    Case(
        "toy-seeds-0",
        demo("--seeds", "0"),
        SystemExit,
        "argument --seeds:",
        "expected a positive integer, got 0",
    ),
    Case(
        "toy-seeds-word",
        demo("--seeds", "many"),
        SystemExit,
        "argument --seeds:",
        "expected a positive integer, got 'many'",
    ),
    Case(
        "toy-steps-negative",
        demo("--steps", "-5"),
        SystemExit,
        "argument --steps:",
        "expected a positive integer",
    ),
    Case(
        "toy-threads-0",
        demo("--threads", "0"),
        SystemExit,
        "argument --threads:",
        "expected a positive integer",
    ),
    Case(
        "toy-preset-unknown",
        demo("--preset", "clasic"),
        SystemExit,
        "argument --preset:",
        "invalid choice.*choose from",
    ),
    Case(
        "toy-loss-unknown",
        demo("--losses", "ncaa"),
        SystemExit,
        "--losses: unknown 'ncaa'",
        "expected any of",
    ),
    Case(
        "toy-loss-twice",
        demo("--losses", "nca", "nca"),
        SystemExit,
        "--losses: each loss once",
        "each loss once, got",
    ),
    Case(
        "toy-policy-unknown",
        demo("--policy", "transformer"),
        SystemExit,
        "--policy: unknown 'transformer'",
        "expected any of",
    ),
    Case(
        "toy-seed-offset-negative",
        demo("--seed-offset", "-1"),
        SystemExit,
        "--seed-offset: expected an integer >= 0",
    ),
    Case("toy-device-bad", demo("--device", "gpu0"), SystemExit, "--device", "expected a torch device"),
]

TABLE = DATA + CONFIG + GENERATE + LOSSES + TOY


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    from ncakit.scale import tinylm

    monkeypatch.setattr(tinylm, "ensure_tiny_kit", boom)
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", boom)


def test_the_table_has_at_least_80_cases():
    ids = [_id(c) for c in TABLE]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert len(TABLE) >= 80, len(TABLE)
    groups = {"data": DATA, "config": CONFIG, "generate": GENERATE, "losses": LOSSES, "toy": TOY}
    assert all(len(g) >= 5 for g in groups.values()), {k: len(v) for k, v in groups.items()}


def _id(c):
    return c.values[0].id if hasattr(c, "values") else c.id


@pytest.mark.parametrize("case", TABLE, ids=[_id(c) for c in TABLE])
def test_bad_input_names_the_argument_and_what_was_expected(
    case, tmp_path, capsys, no_model_loading, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative paths in the table resolve under an empty folder
    with pytest.raises(case.exc) as info:
        case.call(tmp_path)
    if case.exc is SystemExit:  # argparse: "<prog>: error: <message>" on stderr, exit status 2
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        if case.starts == "2":
            return
        message = err[-1].split(": error: ", 1)[1]
    else:
        message = str(info.value)
        if isinstance(info.value, KeyError):  # pragma: no cover - KeyError quotes its message
            message = message.strip("'\"")
    assert "\n" not in message, f"one line: {message!r}"
    assert message.startswith(case.starts), f"{message!r} should start with {case.starts!r}"
    assert re.search(case.expected, message), f"{message!r} should say what was expected ({case.expected!r})"
