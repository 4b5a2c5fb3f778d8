"""The ``scale/recipes/mistral-7b-*-authors.yaml`` recipes (issue 19): each one carries the settings of
the NCA authors' release as they ran it, checked here against the authors' own yamls and code read
from the mirror of thu-ml/Noise-Contrastive-Alignment (skipped, with the reason, where the mirror is
absent), and each one runs on the tiny model with only the CPU swaps listed in ``CPU_SWAPS``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from ncakit.scale.cli import parse_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "scale" / "recipes"
AUTHORS = ["nca-k4", "infonca-k4", "dpo-pair", "nca-pair"]

# The authors' code, mirrored as bare git repositories (thu-ml/Noise-Contrastive-Alignment @ cbb9248 and
# its alignment-handbook submodule pin 43f5222).
NCA_MIRROR = Path("/work/.mirror/thu-ml+Noise-Contrastive-Alignment/repo")
AH_MIRROR = Path("/work/.mirror/huggingface+alignment-handbook/repo")
AH_PIN = "43f52224dbf741d3d099290a59b6934e8bbd6110"  # `git ls-tree HEAD alignment-handbook` in NCA_MIRROR
TRL_MIRROR = Path("/work/.mirror/huggingface+trl/repo")
TRL_PIN = "2f726ce4e88a99b5d20eca3b5482954851d91ef6"  # `git ls-tree HEAD trl-lib` in NCA_MIRROR

# which of their yamls each recipe runs, and the --loss_type their README passes (README.md:47, :52)
THEIR_YAML = {
    "nca-k4": ("yamls/reward_qlora.yaml", "NCA"),
    "infonca-k4": ("yamls/reward_qlora.yaml", "InfoNCA"),
    "dpo-pair": ("yamls/preference_qlora.yaml", "DPO"),
    "nca-pair": ("yamls/preference_qlora.yaml", "NCA"),
}
# their loss_type -> ncakit's loss: reward_trainer.py:460-464 (K-way), preference_trainer.py:42-47 (pairs)
LOSS = {
    ("yamls/reward_qlora.yaml", "NCA"): "nca",
    ("yamls/reward_qlora.yaml", "InfoNCA"): "infonca",
    ("yamls/preference_qlora.yaml", "DPO"): "dpo",
    ("yamls/preference_qlora.yaml", "NCA"): "nca_pair",
}
# keys of their yamls that set nothing a run computes (each with the reason), so no ncakit key matches
NOT_A_SETTING = {
    "preprocessing_num_workers": "datasets.map worker count",
    "do_eval": "the final evaluate(); ncakit always evaluates at the end when eval_split is set",
    "hub_model_id": "upload target; push_to_hub is false",
    "push_to_hub": "false, ncakit's default",
    "log_level": "console verbosity",
    "output_dir": "where files go",
    "loss_type": "overridden on the command line (README.md:47, :52); checked through LOSS",
}

# What the tiny-model run swaps, and nothing else: the model and data (tinylm, in the small kit the
# other scale tests build), what needs CUDA (bitsandbytes 4-bit weights and its paged optimizer, bf16
# autocast on CPU), the length of the run, the sequence lengths of the tiny kit, where it writes.
CPU_SWAPS = [
    "--model_name_or_path", "tinylm", "--dataset_name", "tinylm",
    "--load_in_4bit", "false",            # bitsandbytes 4-bit needs CUDA
    "--optim", "adamw_torch",             # paged_adamw_32bit is bitsandbytes' (CUDA)
    "--mixed_precision", "no",            # no bf16 autocast on the CPU test machine
    "--max_steps", "2",
    "--max_length", "64", "--max_prompt_length", "48",   # the tiny kit's lengths
]  # fmt: skip
# and for the pairwise recipes: the tiny kit's data has K = 4 graded responses, their data is pairs
PAIRWISE_SWAPS = ["--pairwise_from_k", "best_vs_random"]


def _git_show(mirror: Path, rev_path: str) -> str:
    if not mirror.is_dir() or shutil.which("git") is None:
        pytest.skip(f"the authors' code is not mirrored here ({mirror} missing, or no git)")
    out = subprocess.run(
        ["git", f"--git-dir={mirror}", "show", rev_path], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        pytest.skip(f"{rev_path} is not in the mirror {mirror}: {out.stderr.strip()}")
    return out.stdout


def _line(text: str, n: int) -> str:
    return text.splitlines()[n - 1]


def _authors_cfg(name):
    return parse_config(["--config", str(RECIPES / f"mistral-7b-{name}-authors.yaml")])


@pytest.mark.parametrize("name", AUTHORS)
def test_authors_recipe_equals_their_yaml(name):
    """Every key of their yaml is either the same setting in the recipe or in NOT_A_SETTING."""
    path, loss_type = THEIR_YAML[name]
    theirs = yaml.safe_load(_git_show(NCA_MIRROR, f"HEAD:{path}"))
    cfg = _authors_cfg(name)
    same = {  # their key -> (their value as ncakit spells it, ncakit's value)
        "model_name_or_path": (theirs["model_name_or_path"].lower(), cfg.model_name_or_path.lower()),
        "torch_dtype": (theirs["torch_dtype"], cfg.torch_dtype),
        "use_peft": (theirs["use_peft"], cfg.use_peft),
        "load_in_4bit": (theirs["load_in_4bit"], cfg.load_in_4bit),
        "lora_r": (theirs["lora_r"], cfg.lora_r),
        "lora_alpha": (theirs["lora_alpha"], cfg.lora_alpha),
        "lora_dropout": (theirs["lora_dropout"], cfg.lora_dropout),  # written, then zeroed (below)
        "lora_target_modules": (theirs["lora_target_modules"], cfg.lora_target_modules),
        "dataset_mixer": (theirs["dataset_mixer"], {cfg.dataset_name: 1.0}),
        "dataset_splits": (theirs["dataset_splits"], [cfg.dataset_split, cfg.eval_split]),
        "bf16": ("bf16" if theirs["bf16"] else "no", cfg.mixed_precision),
        "beta": (theirs["beta"], cfg.beta),
        "evaluation_strategy": (theirs["evaluation_strategy"], cfg.eval_strategy),
        "eval_steps": (theirs["eval_steps"], cfg.eval_steps),
        "gradient_accumulation_steps": (theirs["gradient_accumulation_steps"], cfg.gradient_accumulation_steps),
        "gradient_checkpointing": (theirs["gradient_checkpointing"], cfg.gradient_checkpointing),
        "gradient_checkpointing_kwargs": (theirs["gradient_checkpointing_kwargs"], cfg.gradient_checkpointing_kwargs),
        "learning_rate": (float(theirs["learning_rate"]), cfg.learning_rate),
        "logging_steps": (theirs["logging_steps"], cfg.logging_steps),
        "lr_scheduler_type": (theirs["lr_scheduler_type"], cfg.lr_scheduler_type),
        "max_length": (theirs["max_length"], cfg.max_length),
        "max_prompt_length": (theirs["max_prompt_length"], cfg.max_prompt_length),
        "num_train_epochs": (theirs["num_train_epochs"], cfg.num_train_epochs),
        "optim": (theirs["optim"], cfg.optim),
        "per_device_train_batch_size": (theirs["per_device_train_batch_size"], cfg.per_device_train_batch_size),
        "per_device_eval_batch_size": (theirs["per_device_eval_batch_size"], cfg.per_device_eval_batch_size),
        "save_strategy": (theirs["save_strategy"], cfg.save_strategy),
        "save_total_limit": (theirs["save_total_limit"], cfg.save_total_limit),
        "seed": (theirs["seed"], cfg.seed),
        "warmup_ratio": (theirs["warmup_ratio"], cfg.warmup_ratio),
    }  # fmt: skip
    if "temperature_alpha" in theirs:  # reward_qlora.yaml:32; both divide the scores (reward_trainer.py:456)
        same["temperature_alpha"] = (theirs["temperature_alpha"], cfg.loss_kwargs.get("alpha"))
    unmatched = set(theirs) - set(same) - set(NOT_A_SETTING)
    assert not unmatched, f"keys of {path} with no counterpart in the recipe: {sorted(unmatched)}"
    diffs = {k: v for k, v in same.items() if v[0] != v[1]}
    assert not diffs, f"{name}: (theirs, recipe) differ: {diffs}"
    assert cfg.loss == LOSS[(path, loss_type)]
    # the 8-GPU launch of their README: 1 prompt x GA 4 x 8 processes = global batch 32 (README.md:43)
    readme = _git_show(NCA_MIRROR, "HEAD:README.md")
    launch = _line(readme, 47 if "reward" in path else 52)
    assert "--num_processes=8" in launch and "--gradient_accumulation_steps=4" in launch
    assert f"{path}" in launch and "--beta=0.01" in launch
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8 == 32


@pytest.mark.parametrize("name", AUTHORS)
def test_authors_recipe_equals_their_code(name):
    """The settings their yaml does not show, read from the lines the recipe cites."""
    cfg = _authors_cfg(name)
    pairwise = name.endswith("pair")
    # dropout: zeroed after LoRA is attached (reward_trainer.py:150, :307-308; the pairwise trainer is
    # trl@2f726ce's DPOTrainer: test_pairwise_recipes_equal_their_trl_pin)
    trainer = _git_show(NCA_MIRROR, "HEAD:reward_trainer.py")
    assert "disable_dropout: bool = True" in _line(trainer, 150)
    assert "disable_dropout_in_model(model)" in _line(trainer, 308)
    assert cfg.disable_dropout is True
    # reference = the model with its adapter disabled, every batch (reward_trainer.py:557)
    assert "disable_adapter()" in _line(trainer, 557) and cfg.reference == "adapter"
    assert cfg.rendering == "authors"
    if pairwise:
        assert cfg.loss_kwargs == {}  # preference_trainer.py: no temperature, no bonus
    else:
        # reward_trainer.py:456: (score + 0.01 on A0) / temperature_alpha, then softmax (:457)
        assert "+0.01" in _line(trainer, 456) and "/ self.temperature_alpha" in _line(trainer, 456)
        assert "temperature_alpha = 1 / paper_alpha" in _line(trainer, 453)
        assert cfg.loss_kwargs == {"alpha": 1e-4, "first_bonus": 0.01}


@pytest.mark.parametrize("name", AUTHORS)
def test_authors_recipe_quantisation_equals_their_handbook_pin(name):
    """bitsandbytes settings come from the alignment-handbook commit their repo pins as a submodule."""
    cfg = _authors_cfg(name)
    _git_show(NCA_MIRROR, "HEAD:README.md")  # skips where their repository is not mirrored
    sub = subprocess.run(
        ["git", f"--git-dir={NCA_MIRROR}", "ls-tree", "HEAD", "alignment-handbook"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert AH_PIN in sub.stdout
    utils = _git_show(AH_MIRROR, f"{AH_PIN}:src/alignment/model_utils.py")
    configs = _git_show(AH_MIRROR, f"{AH_PIN}:src/alignment/configs.py")
    assert "bnb_4bit_compute_dtype=torch.float16" in _line(utils, 44)
    assert "use_bnb_nested_quant: bool = field(default=False" in _line(configs, 179)
    assert 'default="nf4"' in _line(configs, 177)
    assert (cfg.bnb_4bit_compute_dtype, cfg.bnb_4bit_use_double_quant, cfg.bnb_4bit_quant_type) == (
        "float16",
        False,
        "nf4",
    )


@pytest.mark.parametrize("name", AUTHORS)
def test_qlora_recipe_lists_its_differences_from_the_authors(name):
    """Each ncakit-defaults recipe says, in its header, where it departs from the authors' run."""
    lines = (RECIPES / f"mistral-7b-{name}-qlora.yaml").read_text().splitlines()
    text = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert "ncakit defaults: differences from the authors' release:" in text
    for key in ("disable_dropout", "rendering", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant",
                "optim", "per_device_train_batch_size", "reference", "attn_implementation",
                "eval_steps", "dataset_name"):  # fmt: skip
        assert key in text, key
    ours, theirs = (
        parse_config(["--config", str(RECIPES / f"mistral-7b-{name}-qlora.yaml")]),
        _authors_cfg(name),
    )
    # the two recipes agree on everything that is not one of the listed differences
    listed = {
        "rendering", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant", "optim",
        "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
        "reference", "ref_cache_dir", "attn_implementation", "mixed_precision", "dataset_name",
        "eval_steps", "save_steps", "save_strategy", "save_total_limit", "output_dir",
        "gradient_checkpointing_kwargs",
    }  # fmt: skip
    a, b = ours.to_dict(), theirs.to_dict()
    other = {k: (a[k], b[k]) for k in a if k not in listed and a[k] != b[k]}
    assert not other, f"unlisted differences between -qlora and -authors: {other}"


@pytest.fixture(scope="module")
def small_kit(tmp_path_factory):
    from _tinykit import build_small_kit

    return build_small_kit(tmp_path_factory, "kit-authors-recipes")


@pytest.mark.parametrize("name", AUTHORS)
def test_authors_recipe_runs_on_the_tiny_model(name, small_kit, tmp_path):
    """The recipe itself, with CPU_SWAPS and the small kit's location/size (tests/_tinykit.py SMALL)."""
    from _tinykit import run_train

    kit = ["--tiny_kit_dir", str(small_kit), "--tiny_n_train", "24", "--tiny_n_test", "6",
           "--tiny_hidden", "32", "--tiny_sft_steps", "40"]  # fmt: skip
    recipe = str(RECIPES / f"mistral-7b-{name}-authors.yaml")
    pair = PAIRWISE_SWAPS if name.endswith("pair") else []
    argv = [
        "--config",
        recipe,
        *CPU_SWAPS,
        *pair,
        *kit,
        "--output_dir",
        str(tmp_path / "out"),
        "--progress",
        "false",
    ]
    cfg = parse_config(argv)
    # nothing but the swaps changed: the recipe's LoRA, dropout, loss, reference, rendering, batch stand
    full = _authors_cfg(name)
    assert (cfg.use_peft, cfg.disable_dropout, cfg.reference, cfg.rendering) == (
        True,
        True,
        "adapter",
        "authors",
    )
    assert (cfg.loss, cfg.loss_kwargs, cfg.beta) == (full.loss, full.loss_kwargs, full.beta)
    swapped = {a[2:] for a in argv if a.startswith("--")} - {"config"}
    a, b = cfg.to_dict(), full.to_dict()
    assert {k for k in a if a[k] != b[k]} <= swapped
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1, 4)
    result = run_train(argv)
    assert result is not None
    metrics = [line for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert metrics, "no metrics written"


@pytest.mark.parametrize("name", ["dpo-pair", "nca-pair"])
def test_pairwise_recipes_equal_their_trl_pin(name):
    """preference_trainer.py subclasses the DPOTrainer of the trl-lib submodule pin: dropout zeroed after
    LoRA is attached, the reference = the adapter disabled, the prompt truncated keeping its end."""
    cfg = _authors_cfg(name)
    sub = subprocess.run(
        ["git", f"--git-dir={NCA_MIRROR}", "ls-tree", "HEAD", "trl-lib"], capture_output=True, text=True, timeout=60
    ) if NCA_MIRROR.is_dir() else None  # fmt: skip
    if sub is None or TRL_PIN not in sub.stdout:
        pytest.skip(f"the authors' repository is not mirrored at {NCA_MIRROR}")
    dpo = _git_show(TRL_MIRROR, f"{TRL_PIN}:trl/trainer/dpo_trainer.py")
    assert "disable_dropout: bool = True" in _line(dpo, 144)
    assert "disable_dropout_in_model(model)" in _line(dpo, 302)
    assert "disable_adapter()" in _line(dpo, 548)
    assert 'truncation_mode: str = "keep_end"' in _line(dpo, 128)
    assert (cfg.disable_dropout, cfg.reference) == (True, "adapter")
