"""ncakit.scale.cli / ncakit.scale.config: defaults < YAML recipe < command line, parsed by transformers'
HfArgumentParser with ncakit's checks on top; unknown keys and bad types fail with a message naming the
key, the expected type and the allowed values; every shipped recipe parses, and the authors' recipes
carry the settings MATH.md lists; the accelerate configs load in accelerate."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from ncakit.scale.cli import coerce_value, config_help, load_yaml_config, parse_config  # noqa: E402
from ncakit.scale.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "scale" / "recipes").glob("*.yaml"))
ACCELERATE = sorted((REPO / "scale" / "accelerate").glob("*.yaml"))


def test_precedence_defaults_recipe_cli(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: infonca\nbeta: 0.05\nlearning_rate: 5e-6\nlora_target_modules: [q_proj]\n")
    cfg = parse_config(["--config", str(recipe), "--beta", "0.2", "--loss_kwargs", "{alpha: 0.5}"])
    assert cfg.loss == "infonca"  # recipe over default
    assert cfg.beta == 0.2  # command line over recipe
    assert cfg.learning_rate == 5e-6  # YAML 1.1 reads 5e-6 as a string: accepted for a float key
    assert cfg.lora_target_modules == ["q_proj"]
    assert cfg.loss_kwargs == {"alpha": 0.5}
    assert cfg.seed == TrainConfig().seed  # untouched default


def test_cli_value_forms():
    cfg = parse_config(
        ["--gradient_checkpointing", "--use_peft=true", "--k", "null", "--report_to", "tensorboard,wandb",
         "--max-steps", "7", "--lora_target_modules", "[q_proj, v_proj]"]
    )  # fmt: skip
    assert cfg.gradient_checkpointing is True and cfg.use_peft is True  # bare flag = true
    assert cfg.k is None and cfg.max_steps == 7
    assert cfg.report_to == ["tensorboard", "wandb"] and cfg.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("argv", "exc", "pattern"),
    [
        (
            ["--lerning_rate", "1e-3"],
            ValueError,
            r"^lerning_rate: unknown key .*did you mean 'learning_rate'",
        ),
        (["--learning_rate", "fast"], TypeError, r"^learning_rate: expected float, got str 'fast'"),
        (["--max_steps", "2.5"], TypeError, r"^max_steps: expected int, got str '2.5'"),
        (["--use_peft", "maybe"], TypeError, r"^use_peft: expected bool"),
        (
            ["--prompt_sharing", "maybe"],
            TypeError,
            r"^prompt_sharing: expected one of 'auto' or bool, got str 'maybe'; allowed values: \['auto', True, False\]$",
        ),
        (
            ["--reference", "frozen"],
            TypeError,
            r"^reference: expected one of 'precompute', 'adapter', 'model'.*allowed values: \['precompute', 'adapter', 'model'\]",
        ),
        (["--torch_dtype", "fp32"], TypeError, r"^torch_dtype: expected one of .*allowed values"),
        (
            ["--pairwise_from_k", "best"],
            TypeError,
            r"^pairwise_from_k: .*allowed values: \['best_vs_random', 'best_vs_worst', None\]",
        ),
        (
            ["--loss", "ncaa"],
            ValueError,
            r"^loss: unknown loss 'ncaa' \(did you mean 'nca'\?\); allowed values",
        ),
        (
            ["--loss", "nca", "--loss_kwargs", "{alpa: 1}"],
            ValueError,
            r"^loss_kwargs: 'alpa' is not a keyword of loss 'nca'; allowed values: \['beta', 'alpha'",
        ),
        (
            ["--loss_kwargs", "{validate: false}"],
            ValueError,
            r"^loss_kwargs: 'validate' is passed by the trainer",
        ),
        (["--loss_kwargs", "[1, 2]"], TypeError, r"^loss_kwargs: expected mapping"),
        (["--beta", "0"], ValueError, r"^beta: expected a value > 0"),
        (["--max_prompt_length", "1024"], ValueError, r"^max_prompt_length: expected < max_length \(1024\)"),
        (["--reference", "adapter"], ValueError, r"^reference: 'adapter' .* needs use_peft: true"),
        (["--load_in_4bit", "true"], ValueError, r"^load_in_4bit: .*set use_peft: true"),
        (["--report_to", "tensorbord"], ValueError, r"^report_to: unknown tracker 'tensorbord'"),
        (["--max_steps"], TypeError, r"^max_steps: expected int after --max_steps, got nothing"),
        (["positional"], ValueError, r"^positional: expected --key value"),
        (["--warmup_ratio", "1.5"], ValueError, r"^warmup_ratio: expected a value in \[0, 1\)"),
    ],
)
def test_bad_configs_fail_with_clear_messages(argv, exc, pattern):
    with pytest.raises(exc, match=pattern):
        parse_config(argv)


def test_unknown_and_bad_keys_in_a_recipe_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: nca\nbetta: 0.1\n")
    with pytest.raises(ValueError, match=r"^betta: unknown key in .*bad\.yaml \(did you mean 'beta'\?\)"):
        parse_config(["--config", str(bad)])
    bad.write_text("per_device_train_batch_size: eight\n")
    with pytest.raises(TypeError, match=r"^per_device_train_batch_size: expected int, got str 'eight'"):
        load_yaml_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="^config: .* must hold a mapping"):
        load_yaml_config(bad)
    with pytest.raises(ValueError, match="^config: no such recipe file"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


def test_coerce_value_keeps_bools_out_of_numbers():
    with pytest.raises(TypeError, match="^x: expected int, got bool True"):
        coerce_value("x", True, int)
    with pytest.raises(TypeError, match="^x: expected float, got bool"):
        coerce_value("x", False, float)
    assert coerce_value("x", 3, float) == 3.0 and coerce_value("x", 4.0, int) == 4


def test_help_lists_every_key(capsys):
    text = config_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name} " in text, name
    with pytest.raises(SystemExit) as ex:
        parse_config(["--help"])
    assert ex.value.code == 0 and "--learning_rate" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses(recipe):
    cfg = parse_config(["--config", str(recipe)])
    assert isinstance(cfg, TrainConfig)
    # prompts per optimizer step; the -authors recipes are written for 8 processes (their README.md:47)
    processes = 8 if recipe.stem.endswith("-authors") else 1
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes >= 8


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {
        "tiny-cpu",
        "mistral-7b-nca-k4-qlora",
        "mistral-7b-infonca-k4-qlora",
        "mistral-7b-dpo-pair-qlora",
        "mistral-7b-nca-pair-qlora",
        "mistral-7b-nca-full-fsdp2",
        "mistral-7b-nca-full-zero3",
        "qwen2.5-0.5b-nca-k4",
    } <= names


@pytest.mark.parametrize("name", ["nca-k4", "infonca-k4", "dpo-pair", "nca-pair"])
def test_authors_recipes_match_math_md_facts(name):
    """MATH.md, "Facts about the authors' released setup"."""
    cfg = parse_config(["--config", str(REPO / "scale" / "recipes" / f"mistral-7b-{name}-qlora.yaml")])
    assert cfg.model_name_or_path == "HuggingFaceH4/mistral-7b-sft-beta"
    assert (cfg.use_peft, cfg.load_in_4bit, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (
        True,
        True,
        16,
        16,
        0.05,
    )
    assert cfg.lora_target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert (cfg.beta, cfg.learning_rate, cfg.lr_scheduler_type, cfg.warmup_ratio) == (
        0.01,
        5e-6,
        "cosine",
        0.1,
    )
    assert (cfg.num_train_epochs, cfg.max_length, cfg.max_prompt_length, cfg.seed) == (1, 1024, 512, 42)
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 32  # global batch on 1 GPU
    assert cfg.gradient_checkpointing and cfg.torch_dtype == "bfloat16"
    if name.endswith("k4"):
        assert cfg.dataset_name == "ChenDRAG/ultrafeedback_reward" and cfg.loss in ("nca", "infonca")
        # the authors' code: softmax(score / 1e-4) + 0.01 on the first answer = one-hot labels
        assert cfg.loss_kwargs == {"alpha": 1e-4, "first_bonus": 0.01}
    else:
        assert cfg.dataset_name == "HuggingFaceH4/ultrafeedback_binarized" and cfg.loss in ("dpo", "nca_pair")


@pytest.mark.parametrize("name", ["fsdp2", "zero3"])
def test_full_finetuning_recipes_are_zephyr_style(name):
    cfg = parse_config(["--config", str(REPO / "scale" / "recipes" / f"mistral-7b-nca-full-{name}.yaml")])
    assert not cfg.use_peft and cfg.beta == 0.01 and cfg.torch_dtype == "float32"
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8 == 128  # on 8 GPUs
    assert cfg.reference == "precompute" and cfg.ref_cache_dir


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_load_in_accelerate(path):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    expected = {
        "cpu": ("NO", "no"),
        "single_gpu": ("NO", "bf16"),
        "ddp": ("MULTI_GPU", "bf16"),
        "fsdp2": ("FSDP", "bf16"),
        "zero3": ("DEEPSPEED", "bf16"),
    }[path.stem]
    assert (str(cfg.distributed_type).split(".")[-1], str(cfg.mixed_precision).split(".")[-1]) == expected
    if path.stem == "fsdp2":
        assert cfg.fsdp_config["fsdp_version"] == 2 and not cfg.fsdp_config["fsdp_cpu_ram_efficient_loading"]
    if path.stem == "zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3
        # the recipe's gradient_accumulation_steps must win: the config must not set one
        assert "gradient_accumulation_steps" not in cfg.deepspeed_config
    assert cfg.use_cpu == (path.stem == "cpu")


# ----------------------------------------------------------------------------------------------
# Issue 14, item 9: every error names the input, in one line, before anything is loaded
# ----------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_recipe_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("loss: nca\nbeta: 0.1\nloss_kwargs: {alpha: 0.1\nseed: 1\n")
    with pytest.raises(ValueError) as info:
        parse_config(["--config", str(recipe)])
    msg = str(info.value)
    assert msg.startswith(f"config: expected a YAML mapping of key: value in {recipe}, line ")
    assert "<unicode string>" not in msg and "\n" not in msg


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_floats_are_refused(value):
    # nan passes every `< 0` check: --max_grad_norm nan silently turned clipping off
    with pytest.raises(ValueError, match=f"^max_grad_norm: expected a finite float, got '{value}'"):
        parse_config(["--max_grad_norm", value])


def test_debug_is_accepted_and_documented(monkeypatch, capsys):
    from ncakit.scale.cli import debug_requested

    assert parse_config(["--debug", "true", "--seed", "3"]).seed == 3
    assert parse_config(["--debug", "--seed", "3"]).seed == 3
    assert parse_config(["--debug=false"]).seed == TrainConfig().seed
    assert (
        debug_requested(["--debug"])
        and debug_requested(["--debug", "true"])
        and debug_requested(["--debug=1"])
    )
    assert not debug_requested(["--debug", "false"]) and not debug_requested([])
    monkeypatch.setenv("NCAKIT_DEBUG", "1")
    assert debug_requested([])
    assert "--debug" in config_help() and "NCAKIT_DEBUG" in config_help()


def test_train_entry_point_one_line_and_debug_traceback(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "scale" / "train.py"), "--max_grad_norm", "nan"]
    one = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert one.returncode == 2
    assert one.stderr.strip().splitlines() == [
        "scale/train.py: error: max_grad_norm: expected a finite float, got 'nan'"
    ]
    full = subprocess.run(
        [*cmd, "--debug", "true"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr


def test_paths_are_checked_before_loading(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="^output_dir: expected a folder path, got ''"):
        parse_config(["--output_dir", ""])
    with pytest.raises(ValueError, match="^output_dir: expected a folder, got the existing file"):
        parse_config(["--output_dir", str(tmp_path / "a-file")])
    with pytest.raises(
        ValueError, match="^dataset_name: expected an existing local file.*not looked up on the Hub"
    ):
        parse_config(["--dataset_name", str(tmp_path / "trian.jsonl")])
    with pytest.raises(ValueError, match="^max_train_samples: expected a positive int"):
        parse_config(["--max_train_samples", "0"])
    # hub ids and existing local files pass
    (tmp_path / "train.jsonl").write_text("")
    assert parse_config(["--dataset_name", str(tmp_path / "train.jsonl")]).dataset_name.endswith(
        "train.jsonl"
    )
    assert parse_config(["--dataset_name", "HuggingFaceH4/ultrafeedback_binarized"]).dataset_schema == "auto"


def test_the_parser_is_transformers_hfargumentparser_with_its_conventions(tmp_path):
    from transformers import HfArgumentParser

    from ncakit.scale.cli import config_parser

    assert isinstance(config_parser(), HfArgumentParser)
    base = TrainConfig()
    # HfArgumentParser's forms: --no_key for a boolean that defaults to true, a bare --flag, dashes,
    # several values after a list key; each equals the ncakit form of the same setting
    cfg = parse_config(
        [
            "--no_disable_dropout",
            "--use_peft",
            "--learning-rate",
            "3e-4",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
        ],
        validate=False,
    )
    assert (base.disable_dropout, cfg.disable_dropout) == (True, False)
    assert cfg.use_peft is True and cfg.learning_rate == 3e-4
    assert (
        cfg.lora_target_modules
        == parse_config(["--lora_target_modules", "q_proj,v_proj"]).lora_target_modules
    )
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    # a value that starts with "-" is a value (argparse alone would read "-1e-5" as an option)
    assert parse_config(["--learning_rate", "-1e-5"], validate=False).learning_rate == -1e-5
    # the recipe's values are the parser's defaults (TrlParser's rule); flags override them
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss_type: infonca\nbeta: 0.05\n")
    cfg = parse_config(["--config", str(recipe), "--beta", "0.2"])
    assert (cfg.loss, cfg.beta) == ("infonca", 0.2)
    assert parse_config([f"--config={recipe}"]).beta == 0.05
    # --help: TRL's names beside ncakit's, and the batch size that counts prompts
    text = config_help()
    assert "--loss STR, --loss_type STR" in text and "--no_disable_dropout" in text
    block = text[text.index("--per_device_train_batch_size") : text.index("--per_device_eval_batch_size")]
    assert "prompts per process" in block


def test_an_argparse_error_is_still_one_line_naming_the_key():
    # argparse would print its usage and exit 2; here each is the exception the key's check raises
    with pytest.raises(
        TypeError,
        match=r"^lora_target_modules: expected list of str after --lora_target_modules, got nothing$",
    ):
        parse_config(["--lora_target_modules"])
    with pytest.raises(TypeError, match=r"^torch_dtype: expected one of .*got str 'fp32'"):
        parse_config(["--dtype", "fp32"])
    with pytest.raises(ValueError, match=r"^max_grad_norm: expected a finite float"):
        parse_config(["--max_grad_norm=-inf"])
    with pytest.raises(ValueError, match=r"^lr: unknown key in the command line"):
        parse_config(["--lr", "1e-5"])  # no prefix matching: --lr is not --lr_scheduler_type


def test_every_ncakit_defaults_recipe_has_an_authors_twin():
    """Issue 19: each mistral-7b-<x>-qlora recipe (ncakit defaults) has mistral-7b-<x>-authors (the
    authors' release as run); tests/test_authors_recipes.py checks the twins against their code."""
    names = {p.stem for p in RECIPES}
    qlora = {n[: -len("-qlora")] for n in names if n.startswith("mistral-7b-") and n.endswith("-qlora")}
    authors = {n[: -len("-authors")] for n in names if n.startswith("mistral-7b-") and n.endswith("-authors")}
    assert (
        qlora
        == authors
        == {"mistral-7b-nca-k4", "mistral-7b-infonca-k4", "mistral-7b-dpo-pair", "mistral-7b-nca-pair"}
    )
