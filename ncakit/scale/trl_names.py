"""TRL's and transformers' names for ``scale/train.py``'s settings: what a ``DPOConfig``-style recipe
(TRL 1.16 ``DPOConfig`` / ``ModelConfig`` / ``ScriptArguments``, transformers ``TrainingArguments``)
means here, key by key. Read by :mod:`ncakit.scale.config` while it loads a recipe or the command line.

Three kinds of TRL key:

- the same name as ncakit's (``beta``, ``learning_rate``, ``per_device_train_batch_size``, ``lora_r``,
  ``use_peft``, ``load_in_4bit``, ``gradient_checkpointing``, ``eval_on_start``, ...): nothing to do;
- another name for an ncakit key (:data:`ALIASES`, e.g. ``loss_type`` for ``loss``): accepted in YAML
  and on the command line and stored under ncakit's name; giving both in one place is an error;
- a TRL / transformers setting that has no meaning here (:func:`no_meaning_here`): one line naming
  it and why, instead of "unknown key", so a TRL recipe either runs or says exactly which field to drop.

ncakit's own keys stay (``loss_kwargs``, the reference cache, K-way data). ``per_device_train_batch_size``
counts PROMPTS (each brings its K responses), as TRL's counts preference pairs.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ALIASES", "canonical_key", "no_meaning_here", "REFUSED", "field_table"]

#: TRL / transformers name -> ncakit key (the same meaning, the same values).
ALIASES: dict[str, str] = {
    "loss_type": "loss",  # DPOConfig.loss_type (ncakit: one loss per run, a name of ncakit.registry)
    "dtype": "torch_dtype",  # ModelConfig.dtype (transformers 5: `dtype`, formerly `torch_dtype`)
    "resume_from_checkpoint": "resume_from",  # TrainingArguments.resume_from_checkpoint
    "dataset_train_split": "dataset_split",  # ScriptArguments.dataset_train_split
    "dataset_test_split": "eval_split",  # ScriptArguments.dataset_test_split
    "use_bnb_nested_quant": "bnb_4bit_use_double_quant",  # ModelConfig.use_bnb_nested_quant
    "precompute_ref_batch_size": "ref_batch_size",  # DPOConfig.precompute_ref_batch_size
}

#: TRL / transformers keys that are refused with a reason (the ones a TRL user is likely to carry over).
REFUSED: dict[str, str] = {
    "padding_free": "ncakit pads each batch of B prompts x K responses; use group_by_length for less padding",
    "save_only_model": "checkpoints always hold the optimizer and RNG state, so every one resumes exactly",
    "rpo_alpha": "RPO's NLL term is not implemented; see `ncakit.zoo` for the losses there are",
    "f_divergence_type": "use loss: f_dpo and loss_kwargs: {divergence: ...} (ncakit.variants)",
    "label_smoothing": "use loss: cdpo (or robust) and loss_kwargs: {label_smoothing: ...}",
    "reference_free": "use a loss that has no reference in it by name (pro, asft, cpl: LossSpec.reference_free in ncakit.registry)",
    "sync_ref_model": "the reference is fixed for the whole run (reference: precompute | adapter | model)",
    "ref_model_init_kwargs": "the reference is the initial model itself (or its adapter disabled)",
    "model_init_kwargs": "use torch_dtype, attn_implementation, trust_remote_code, load_in_4bit / load_in_8bit",
    "use_liger_kernel": "ncakit's LogprobHead already avoids the [tokens, vocabulary] logits",
    "use_logits_to_keep": "ncakit's LogprobHead projects only the response positions already",
    "truncation_mode": "ncakit keeps the LAST max_prompt_length prompt tokens (the authors' rule)",
    "max_completion_length": "responses get max_length - (the prompt's length); set max_length and max_prompt_length",
    "deepspeed": "the accelerate config says where a run happens: scale/accelerate/zero3.yaml",
    "fsdp": "the accelerate config says where a run happens: scale/accelerate/fsdp2.yaml",
    "tf32": "not a recipe setting here (torch.backends.cuda.matmul.allow_tf32 in your launcher if wanted)",
}


def canonical_key(key: str) -> str:
    """ncakit's name for ``key`` (itself when it is not a TRL alias)."""
    return ALIASES.get(key, key)


def _trl_field_names() -> set[str]:
    """Every field of TRL's DPOConfig (which includes transformers' TrainingArguments) and ModelConfig
    that is installed; transformers' TrainingArguments alone when TRL is not."""
    names: set[str] = set()
    try:
        from trl import DPOConfig, ModelConfig, ScriptArguments

        for cls in (DPOConfig, ModelConfig, ScriptArguments):
            names |= {f.name for f in dataclasses.fields(cls)}
    except Exception:  # TRL not installed (or broken): transformers' own fields
        try:
            from transformers import TrainingArguments

            names |= {f.name for f in dataclasses.fields(TrainingArguments)}
        except Exception:  # pragma: no cover - no transformers either
            pass
    return names


def no_meaning_here(key: str, where: str) -> ValueError | None:
    """The one-line error for a TRL / transformers key that has no meaning here, or None when ``key``
    is no such key (then it is simply unknown)."""
    if key in REFUSED:
        return ValueError(f"{key}: a TRL setting with no meaning here, in {where}: {REFUSED[key]}; remove it")
    if key in _trl_field_names():
        return ValueError(
            f"{key}: a TRL / transformers setting that scale/train.py does not use, in {where}; remove it "
            "(`scale/train.py --help` lists the keys; ncakit.scale.trl_names the TRL names it accepts)"
        )
    return None


def field_table() -> list[tuple[str, str, str]]:
    """``(TRL name, ncakit name, status)`` rows: the aliases and the refused keys (docs and tests)."""
    rows = [(trl, ours, "alias") for trl, ours in ALIASES.items()]
    rows += [
        ("bf16 / fp16", "mixed_precision", "accepted: true sets mixed_precision bf16 / fp16"),
        (
            "precompute_ref_log_probs",
            "reference",
            "accepted: true = precompute, false = adapter (LoRA) / model",
        ),
        ("warmup_steps < 1", "warmup_ratio", "accepted: a fraction of the steps, as transformers 5"),
    ]
    rows += [(k, "-", f"refused: {why}") for k, why in REFUSED.items()]
    return rows
