"""The small tiny kit the scale tests train on, and its command line, in one place (imported by
test_run_safety, test_checkpoint_hf, test_tracking, test_trl_interface): 24 training prompts x K = 4,
6 held-out, hidden 32, 2 layers, a 40-step SFT warm-up (~10 s to build on 2 cores)."""

from __future__ import annotations

from pathlib import Path

SMALL = dict(n_train=24, n_test=6, k=4, hidden=32, layers=2, sft_steps=40, seed=0)


def build_small_kit(tmp_path_factory, name: str) -> Path:
    from ncakit.scale.tinylm import ensure_tiny_kit

    root = tmp_path_factory.mktemp(name)
    ensure_tiny_kit(root, **SMALL)
    return root


def small_args(kit_dir, out_dir, *extra: str, loss: bool = True) -> list[str]:
    """24 prompts, 4 per step: 6 optimizer steps per epoch; no eval; log every step; no final/.
    ``loss=False`` leaves the loss (and its warm-up) to a recipe. Later flags win, so ``extra``
    overrides any of these."""
    nca = ["--loss", "nca", "--loss_kwargs", "{alpha: 0.1}", "--warmup_steps", "1"] if loss else []
    return [
        "--tiny_kit_dir", str(kit_dir), "--tiny_n_train", "24", "--tiny_n_test", "6",
        "--tiny_hidden", "32", "--tiny_sft_steps", "40", "--max_length", "64", "--max_prompt_length", "48",
        *nca, "--beta", "0.1", "--learning_rate", "1e-3", "--eval_split", "null", "--logging_steps", "1",
        "--progress", "false", "--save_final", "false", "--per_device_train_batch_size", "4",
        "--output_dir", str(out_dir), *extra,
    ]  # fmt: skip


def run_train(argv, **kw):
    """``scale/train.py``'s config parse and train, in-process, accelerate's global state reset first."""
    from _accelerate import reset_accelerate

    from ncakit.scale import train as trainmod

    reset_accelerate()
    return trainmod.train(trainmod.parse_config(argv), **kw)
