"""A TRL user's recipe (issue 16, items 1 and 8): TRL's names accepted for ncakit's keys, TRL's
switches folded in, a TRL setting with no meaning here refused in one line that names it; TRL's
defaults where they change training (disable_dropout); eval/save strategies; the learning rate
logged is the step's own; TrainerCallback-style hooks; HF's end-of-run summary names."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402
from _tinykit import build_small_kit, run_train, small_args  # noqa: E402

from ncakit.scale import train as trainmod  # noqa: E402
from ncakit.scale.callbacks import TrainerCallback  # noqa: E402
from ncakit.scale.cli import parse_config  # noqa: E402
from ncakit.scale.model import disable_dropout  # noqa: E402
from ncakit.scale.trl_names import ALIASES, REFUSED, field_table  # noqa: E402

datasets.disable_progress_bars()
pytestmark = pytest.mark.usefixtures("clean_accelerate_state")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_small_kit(tmp_path_factory, "kit-trl")


def args(kit_dir, out_dir, *extra, loss: bool = True) -> list[str]:
    """24 prompts, 4 per step: 6 optimizer steps per epoch; eval on the kit's 6 test prompts."""
    return small_args(kit_dir, out_dir, "--eval_split", "test", *extra, loss=loss)


run = run_train


@pytest.mark.parametrize("trl, ours", sorted(ALIASES.items()))
def test_every_trl_alias_sets_ncakits_key(trl, ours, tmp_path):
    values = {
        "loss": ("dpo", "dpo"),
        "torch_dtype": ("bfloat16", "bfloat16"),
        "resume_from": ("latest", "latest"),
        "dataset_split": ("train_prefs", "train_prefs"),
        "eval_split": ("test_prefs", "test_prefs"),
        "bnb_4bit_use_double_quant": ("false", False),
        "ref_batch_size": ("3", 3),
    }
    raw, expected = values[ours]
    cli = parse_config([f"--{trl}", raw, "--output_dir", str(tmp_path)], validate=False)
    assert getattr(cli, ours) == expected
    recipe = tmp_path / "trl.yaml"
    recipe.write_text(f"{trl}: {raw}\noutput_dir: {tmp_path}\n")
    assert getattr(parse_config(["--config", str(recipe)], validate=False), ours) == expected
    recipe.write_text(f"{trl}: {raw}\n{ours}: {raw}\n")  # both names in one place: ambiguous
    with pytest.raises(ValueError, match=rf"^{trl}: TRL's name for {ours}, which .* sets too"):
        parse_config(["--config", str(recipe)], validate=False)


def test_a_dpoconfig_style_recipe_runs_unchanged(kit, tmp_path):
    """The fields a TRL DPOConfig / ModelConfig / ScriptArguments recipe carries, under TRL's names."""
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(
        "\n".join(
            [
                "loss_type: sigmoid",  # TRL's DPO loss name (an ncakit alias of dpo)
                "dtype: float32",
                "bf16: false",
                "precompute_ref_log_probs: true",
                "precompute_ref_batch_size: 4",
                "disable_dropout: true",
                "warmup_steps: 0.2",  # transformers 5: below 1 is a fraction
                "lr_scheduler_type: cosine_with_min_lr",
                "lr_scheduler_kwargs: {min_lr_rate: 0.1}",
                "eval_strategy: steps",
                "eval_steps: 3",
                "save_strategy: 'no'",
                "dataset_test_split: test",
                "pairwise_from_k: best_vs_random",  # the kit is K = 4: pairs for a pairwise loss
            ]
        )
        + "\n"
    )
    res = run(["--config", str(recipe), *args(kit, tmp_path / "out", "--max_steps", "6", loss=False)])
    assert res.state.global_step == 6
    cfg = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert cfg["loss"] == "sigmoid" and cfg["reference"] == "precompute" and cfg["mixed_precision"] is None
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    assert not list((tmp_path / "out").glob("*checkpoint-*"))
    # warm-up 0.2 x 6 steps = 2 (ceil(1.2)): transformers' linear warm-up gives steps 1, 2, 3 the rates
    # 0, 1/2 and 1 x the peak (each step logs its own); the cosine floor is min_lr_rate x the peak
    lrs = [r["learning_rate"] for r in records if "loss" in r]
    assert lrs[:3] == pytest.approx([0.0, 1e-3 / 2, 1e-3])
    assert min(lrs[2:]) >= 1e-4 - 1e-12


@pytest.mark.parametrize(
    "key, value",
    [
        ("padding_free", "true"),
        ("save_only_model", "true"),
        ("dataloader_num_workers", "2"),
        ("rpo_alpha", "1"),
    ],
)
def test_a_trl_setting_with_no_meaning_here_is_one_line_naming_it(key, value, tmp_path):
    for where in ("cli", "yaml"):
        if where == "cli":
            argv = [f"--{key}", value]
        else:
            (tmp_path / "r.yaml").write_text(f"{key}: {value}\n")
            argv = ["--config", str(tmp_path / "r.yaml")]
        with pytest.raises(ValueError) as e:
            parse_config(argv)
        msg = str(e.value)
        assert msg.startswith(f"{key}: a TRL") and "\n" not in msg and "remove it" in msg
        if key in REFUSED:
            assert REFUSED[key] in msg


def test_the_field_table_covers_every_alias_and_refusal():
    rows = field_table()
    names = {r[0] for r in rows}
    assert set(ALIASES) <= names and set(REFUSED) <= names
    assert all(status for _, _, status in rows)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--bf16", "--fp16"], r"^bf16: and fp16: both true"),
        (["--bf16", "--mixed_precision", "fp16"], r"^bf16: true contradicts mixed_precision: fp16"),
        (
            ["--precompute_ref_log_probs", "true", "--reference", "model"],
            r"^precompute_ref_log_probs: true contradicts",
        ),
        (["--warmup_steps", "2.5"], r"^warmup_steps: expected a whole number"),
        (["--load_in_8bit", "true"], r"^load_in_8bit: 8-bit weights are frozen"),
        (
            ["--use_dora", "true"],
            r"^use_dora / use_rslora / lora_modules_to_save: LoRA settings need use_peft",
        ),
    ],
)
def test_trl_switches_that_contradict_are_one_line(argv, expected):
    with pytest.raises(ValueError, match=expected):
        parse_config(argv)


def test_trl_switches_fold_into_ncakits_keys():
    cfg = parse_config(["--bf16", "--precompute_ref_log_probs", "false", "--use_peft", "true"])
    assert cfg.mixed_precision == "bf16" and cfg.reference == "adapter"
    assert parse_config(["--precompute_ref_log_probs", "false"]).reference == "model"


def test_disable_dropout_zeroes_every_dropout_lora_included():
    """TRL's default: a dropout mask would make policy != reference at step 0 and the loss noisy."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.1)  # fmt: skip
    model = get_peft_model(
        LlamaForCausalLM(cfg), LoraConfig(r=2, lora_dropout=0.3, target_modules=["q_proj"])
    )
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.3 for m in drops)  # peft's lora_dropout modules
    attention = [m for m in model.modules() if getattr(m, "attention_dropout", 0) == 0.1]
    assert len(attention) == 2  # functional dropout inside each layer's attention (no nn.Dropout)
    assert disable_dropout(model) == len(drops) + len(attention)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(m.attention_dropout == 0.0 for m in attention)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    model.train()
    a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b), "train mode is now deterministic"


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_step_end(self, run, state):
        self.events.append(("step", state.global_step))

    def on_log(self, run, logs, step):
        self.events.append(("log", step, logs["learning_rate"]))

    def on_evaluate(self, run, metrics, step):
        self.events.append(("eval", step, metrics["eval_loss"]))

    def on_save(self, run, path):
        self.events.append(("save", run.state.global_step, path.exists()))


def test_callbacks_hear_every_event_and_the_logged_lr_is_the_steps_own(kit, tmp_path):
    rec = Recorder()
    res = run(
        args(kit, tmp_path / "cb", "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2",
             "--lr_scheduler_type", "linear", "--warmup_steps", "0", "--warmup_ratio", "0"),
        callbacks=[rec, lambda state: rec.events.append(("fn", state.global_step))],
    )  # fmt: skip
    assert res.state.global_step == 4
    kinds = [e[0] for e in rec.events]
    assert kinds.count("step") == 4 and kinds.count("fn") == 4 and kinds.count("log") == 4
    assert [e[1] for e in rec.events if e[0] == "eval"] == [2, 4]
    assert [e[1:] for e in rec.events if e[0] == "save"] == [
        (2, True)
    ]  # the last step: final/, not a checkpoint
    # linear decay from 1e-3 over 4 steps, no warm-up: step s used 1e-3 * (1 - (s - 1) / 4)
    lrs = [e[2] for e in rec.events if e[0] == "log"]
    assert lrs == pytest.approx([1e-3 * (1 - s / 4) for s in range(4)])
    summary = json.loads((tmp_path / "cb" / "summary.json").read_text())
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert summary["train_loss"] == pytest.approx(sum(losses) / len(losses))
    assert summary["train_runtime"] > 0 and summary["train_steps_per_second"] > 0
    assert summary["train_steps_per_second"] == pytest.approx(4 / summary["train_runtime"])
    assert summary["resumed_from_step"] == 0
    assert math.isfinite(summary["train_loss"])
    # resumed at step 2: this session made 2 steps, not 4 (the steps/s of this session's runtime)
    run(
        args(kit, tmp_path / "cb", "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2",
             "--lr_scheduler_type", "linear", "--warmup_steps", "0", "--warmup_ratio", "0",
             "--resume_from", str(tmp_path / "cb" / "checkpoint-2"))
    )  # fmt: skip
    summary = json.loads((tmp_path / "cb" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 4
    assert summary["train_steps_per_second"] == pytest.approx(2 / summary["train_runtime"])


def test_a_wrong_callback_fails_before_anything_loads(tmp_path):
    with pytest.raises(TypeError, match=r"^callbacks: expected TrainerCallback instances or functions"):
        trainmod.train(parse_config(["--output_dir", str(tmp_path / "x")]), callbacks=[3])
    assert not (tmp_path / "x").exists()


def test_epoch_strategies_evaluate_and_save_after_each_epoch(kit, tmp_path):
    res = run(args(kit, tmp_path / "ep", "--num_train_epochs", "2", "--eval_strategy", "epoch",
                   "--save_strategy", "epoch", "--save_total_limit", "3"))  # fmt: skip
    assert res.state.global_step == 12
    evals = [h["step"] for h in res.history if "eval_loss" in h]
    assert evals == [6, 12]  # after epoch 1, and at the end
    saved = sorted(p.name for p in (tmp_path / "ep").glob("checkpoint-*"))
    assert len(saved) == 1 and saved[0].endswith("6")  # after epoch 1 (the end of epoch 2 is final/)


def test_eval_strategy_no_never_evaluates(kit, tmp_path):
    res = run(args(kit, tmp_path / "no", "--max_steps", "2", "--eval_strategy", "no", "--eval_steps", "1"))
    assert not any("eval_loss" in h for h in res.history)


def test_data_seed_alone_decides_the_data_order(kit, tmp_path):
    """Full fine-tuning with dropout off: the seed touches nothing but the data order, so two runs
    with other seeds and the same data_seed train identically, and another data_seed differs (from
    step 2 on: step 1 starts at policy = reference, loss 2 ln 2, whatever its batch)."""
    common = ("--max_steps", "3", "--warmup_steps", "0", "--warmup_ratio", "0", "--eval_split", "null")
    a = run(args(kit, tmp_path / "a", *common, "--seed", "1", "--data_seed", "7"))
    b = run(args(kit, tmp_path / "b", *common, "--seed", "2", "--data_seed", "7"))
    c = run(args(kit, tmp_path / "c", *common, "--seed", "1", "--data_seed", "8"))
    la, lb, lc = ([h["loss"] for h in r.history if "loss" in h] for r in (a, b, c))
    assert la == lb and la[1:] != lc[1:]
