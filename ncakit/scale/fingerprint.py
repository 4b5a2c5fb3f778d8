"""A run's fingerprint: what must be the same for a checkpoint to continue the run it came from.

Each checkpoint records :func:`run_fingerprint` (``fingerprint.json``); ``--resume_from`` compares it
with the resuming run's (:func:`check_resume`) and stops, listing every differing key, unless the key
is named in ``resume_allow_changes`` (then the change is logged and recorded in the next checkpoints).
Batch geometry (prompts per device x gradient accumulation x processes) can never change: the data
position saved in the checkpoint counts this geometry's micro-batches, so a new geometry would resume
at the wrong prompt. ``--max_steps`` below the checkpoint's step is an error naming both numbers.

Keys, flat (``name: JSON value``):

- loss: ``loss``, ``loss_kwargs``, ``beta``, ``average_logps``, ``reference``
- optimizer: ``optim``, ``learning_rate``, ``weight_decay``, ``adam_beta1``, ``adam_beta2``,
  ``adam_epsilon``, ``max_grad_norm``
- schedule: ``lr_scheduler_type``, ``warmup_steps`` (resolved), ``max_steps`` (resolved)
- geometry: ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``num_processes``,
  ``global_batch_prompts``
- data: ``dataset``, ``dataset_split``, ``dataset_schema``, ``max_train_samples``, ``train_rows``
  (rows in / kept, K counts), ``max_length``, ``max_prompt_length``, ``k``, ``pairwise_from_k``,
  ``pair_rewards``, ``group_by_length``, ``rendering`` (only when not ``trl``, so checkpoints
  written before the key existed resume unchanged)
- model: ``model``, ``model_revision``, ``torch_dtype``, ``peft`` (LoRA settings or null),
  ``trainable_params``
- ``seed``
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = [
    "FINGERPRINT_KEYS",
    "GEOMETRY_KEYS",
    "run_fingerprint",
    "diff_fingerprints",
    "check_allowed_changes",
    "check_resume",
    "resume_checked",
]

logger = logging.getLogger("ncakit.scale.train")
GEOMETRY_KEYS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_processes",
    "global_batch_prompts",
)
_CONFIG_KEYS = (
    "loss",
    "loss_kwargs",
    "beta",
    "average_logps",
    "reference",
    "optim",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "dataset_split",
    "dataset_schema",
    "max_train_samples",
    "max_length",
    "max_prompt_length",
    "k",
    "pairwise_from_k",
    "pair_rewards",
    "group_by_length",
    "model_revision",
    "torch_dtype",
    "seed",
)
_DERIVED_KEYS = (
    "warmup_steps", "max_steps", "dataset", "train_rows", "model", "peft", "trainable_params", "rendering",
)  # fmt: skip
FINGERPRINT_KEYS = (*_CONFIG_KEYS, *_DERIVED_KEYS, *GEOMETRY_KEYS)


def _identity(name: str, tiny: dict | None) -> Any:
    """The user's name of a model / dataset; ``tinylm`` with the kit's sizes (they define its content)."""
    return {"tinylm": tiny} if name == "tinylm" and tiny is not None else name


def run_fingerprint(
    cfg,
    *,
    original,
    num_processes: int,
    warmup_steps: int,
    max_steps: int,
    data_stats: dict,
    trainable_params: int,
) -> dict[str, Any]:
    """The fingerprint of a run (a flat JSON-ready dict, keys :data:`FINGERPRINT_KEYS`). ``original``
    is the configuration as the user gave it (``tinylm`` not yet resolved into local paths), so a
    moved output folder keeps its identity."""
    tiny = {k: getattr(original, k) for k in ("tiny_n_train", "tiny_n_test", "tiny_k", "tiny_hidden",
                                              "tiny_layers", "tiny_sft_steps", "tiny_seed")}  # fmt: skip
    fp: dict[str, Any] = {k: getattr(cfg, k) for k in _CONFIG_KEYS}
    train = data_stats.get("train", {})
    fp |= {
        "warmup_steps": int(warmup_steps),
        "max_steps": int(max_steps),
        "dataset": _identity(original.dataset_name, tiny),
        "train_rows": {k: train.get(k) for k in ("rows_in", "rows_kept", "k_counts")},
        "model": _identity(original.model_name_or_path, tiny),
        "peft": {
            "lora_r": cfg.lora_r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "lora_target_modules": sorted(cfg.lora_target_modules),
            "load_in_4bit": cfg.load_in_4bit,
        }
        if cfg.use_peft
        else None,
        "trainable_params": int(trainable_params),
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_processes": int(num_processes),
        "global_batch_prompts": cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps
        * num_processes,
    }
    if cfg.rendering != "trl":  # recorded only when not the default: older checkpoints still resume
        fp["rendering"] = cfg.rendering
    return fp


def diff_fingerprints(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for every key that differs (missing counts as None)."""
    return {
        k: (saved.get(k), current.get(k))
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    }


def check_allowed_changes(keys: list[str]) -> None:
    """``resume_allow_changes`` names fingerprint keys, and no batch-geometry key (ValueError otherwise)."""
    for key in keys:
        if key in GEOMETRY_KEYS:
            raise ValueError(
                f"resume_allow_changes: {key!r} is batch geometry, which cannot change on resume (the saved "
                f"data position counts its micro-batches); start a new run instead"
            )
        if key not in FINGERPRINT_KEYS:
            raise ValueError(
                f"resume_allow_changes: unknown fingerprint key {key!r}; allowed values: {sorted(set(FINGERPRINT_KEYS) - set(GEOMETRY_KEYS))}"
            )


def _show(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in diff.items())


def check_resume(
    saved: dict, current: dict, *, allow: list[str], checkpoint: str, checkpoint_step: int
) -> dict[str, tuple[Any, Any]]:
    """Compare the checkpoint's fingerprint with the resuming run's: ValueError (one line) for
    ``max_steps`` below the checkpoint's step, a batch-geometry change, or any other difference not
    in ``allow``. Returns the allowed differences (the caller logs and records them)."""
    if current["max_steps"] < checkpoint_step:
        raise ValueError(
            f"max_steps: {current['max_steps']} is below the step of the checkpoint being resumed "
            f"({checkpoint}, step {checkpoint_step}); use --max_steps >= {checkpoint_step}"
        )
    diff = diff_fingerprints(saved, current)
    geometry = {k: v for k, v in diff.items() if k in GEOMETRY_KEYS}
    if geometry:
        raise ValueError(
            f"resume_from: {checkpoint} was trained with another batch geometry: {_show(geometry)}; the saved "
            f"data position would point at the wrong prompts, so resume with the same "
            f"per_device_train_batch_size, gradient_accumulation_steps and number of processes"
        )
    refused = {k: v for k, v in diff.items() if k not in allow}
    if refused:
        raise ValueError(
            f"resume_from: {checkpoint} belongs to a different run; differing keys: {_show(refused)}; "
            f"resume with the checkpoint's settings, or allow a deliberate change with "
            f"--resume_allow_changes {','.join(refused)}"
        )
    return diff


def resume_checked(run, path: Path) -> None:
    """Compare the checkpoint's fingerprint with ``run.fingerprint`` (:func:`check_resume`);
    log the allowed changes and keep them in ``run.changes`` (recorded in the next checkpoints)."""
    saved = json.loads((path / "trainer_state.json").read_text())
    extra_file = path / "ncakit_state.json"
    extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}
    if "fingerprint" not in extra:
        raise ValueError(
            f"resume_from: {path} records no run fingerprint (ncakit_state.json); cannot check it"
        )
    allowed = check_resume(
        extra["fingerprint"],
        run.fingerprint,
        allow=list(run.cfg.resume_allow_changes),
        checkpoint=str(path),
        checkpoint_step=int(saved.get("global_step", 0)),
    )
    for key, (before, after) in allowed.items():
        msg = f"resume_allow_changes: {key} changes from {before!r} to {after!r} at step {saved.get('global_step')}"
        if run.accelerator.is_main_process:
            logger.warning(msg)
        run.accelerator.print(msg)
        run.changes.append(
            {"step": int(saved.get("global_step", 0)), "key": key, "from": before, "to": after}
        )
