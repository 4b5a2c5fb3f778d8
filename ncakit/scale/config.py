"""The configuration of ``scale/train.py``: one dataclass with defaults, loaded from a YAML recipe and
overridden by ``--key value`` flags (alignment-handbook style: the accelerate config says WHERE the
run happens, the recipe says WHAT it trains).

Precedence: the defaults below < the YAML recipe given with ``--config`` < command-line flags::

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \\
        --config scale/recipes/tiny-cpu.yaml --output_dir out/run --loss dpo --pairwise_from_k best_vs_random

Every key is checked: an unknown key (in the YAML or on the command line) raises ``ValueError``
naming it and the closest known key; a value of the wrong type raises ``TypeError`` naming the
key, the expected type and, for keys with a fixed set of values, the allowed values. Values from the
command line are parsed by the key's type (``true``/``false`` for booleans, ``none``/``null`` for
optional keys, ``a,b,c`` or ``[a, b]`` for lists, ``{alpha: 0.1}`` for mappings); numbers written as
``5e-6`` in YAML (a string for YAML 1.1) are accepted for float keys.

``python scale/train.py --help`` lists every key with its default and meaning.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "TrainConfig",
    "parse_config",
    "load_yaml_config",
    "config_help",
    "coerce_value",
    "torch_dtype",
    "debug_requested",
    "check_inputs",
]


def torch_dtype(name: str):
    """The ``torch.dtype`` of a dtype key's value (``"float32"``, ``"bfloat16"``, ``"float16"``);
    ``"auto"`` stays ``"auto"`` (transformers picks the checkpoint's dtype)."""
    import torch  # lazy: parsing a config needs no torch

    return (
        "auto"
        if name == "auto"
        else {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    )


def _f(default, help: str, **kw):
    """A dataclass field with a help string (mutable defaults through default_factory)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


LORA_TARGETS_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """Every setting of a ``scale/train.py`` run (see the field help strings, or ``--help``)."""

    # ---- model ------------------------------------------------------------------------------
    model_name_or_path: str = _f(
        "tinylm",
        "hub id or local folder of a causal LM; 'tinylm' builds the offline tiny kit (ncakit.scale.tinylm) "
        "under tiny_kit_dir",
    )
    model_revision: str | None = _f(None, "hub revision (branch, tag or commit) of the model")
    tokenizer_name_or_path: str | None = _f(None, "tokenizer to load (default: the model's)")
    torch_dtype: Literal["float32", "bfloat16", "float16", "auto"] = _f(
        "float32",
        "dtype the weights are loaded in; float32 master weights + mixed_precision bf16 is the "
        "full fine-tuning default",
    )
    attn_implementation: str | None = _f(
        None, "'sdpa', 'flash_attention_2', 'eager' (default: transformers')"
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (non-reentrant)")
    gradient_checkpointing_kwargs: dict[str, Any] | None = _f(
        None, "passed to gradient_checkpointing_enable (default {use_reentrant: false})"
    )
    disable_dropout: bool = _f(
        True, "zero every dropout of the model, LoRA's included, after loading it (TRL's default)"
    )
    trust_remote_code: bool = _f(False, "allow custom model code from the hub")
    # ---- the offline tiny kit (model_name_or_path / dataset_name == 'tinylm') ---------------------
    tiny_kit_dir: str | None = _f(None, "where the tiny kit is built once (default: <output_dir>/tinylm-kit)")
    tiny_n_train: int = _f(512, "tiny kit: training prompts (K responses each)")
    tiny_n_test: int = _f(64, "tiny kit: held-out prompts")
    tiny_k: int = _f(4, "tiny kit: responses per prompt")
    tiny_hidden: int = _f(64, "tiny kit: hidden size of the Llama-style model")
    tiny_layers: int = _f(2, "tiny kit: decoder layers")
    tiny_sft_steps: int = _f(300, "tiny kit: SFT warm-up steps on correct answers (0: random reference)")
    tiny_seed: int = _f(0, "tiny kit: seed of the tokenizer corpus, model init, warm-up and data")
    # ---- LoRA / QLoRA -------------------------------------------------------------------------------
    use_peft: bool = _f(False, "train a LoRA adapter instead of all weights (peft)")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha (scale alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_target_modules: list[str] = _f(LORA_TARGETS_LLAMA, "module names that get adapters")
    lora_modules_to_save: list[str] | None = _f(None, "modules trained in full beside the adapters (peft)")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (peft)")
    use_rslora: bool = _f(False, "rank-stabilised LoRA: scale alpha / sqrt(r) (peft)")
    load_in_8bit: bool = _f(False, "load the base weights in 8 bit with bitsandbytes (CUDA only)")
    load_in_4bit: bool = _f(False, "QLoRA: load the base weights in 4 bit with bitsandbytes (CUDA only)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = _f("nf4", "QLoRA: 4-bit data type")
    bnb_4bit_use_double_quant: bool = _f(True, "QLoRA: quantise the quantisation constants too")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = _f(
        "bfloat16", "QLoRA: dtype of the dequantised matmuls"
    )
    # ---- data ----------------------------------------------------------------------------------------
    dataset_name: str = _f(
        "tinylm",
        "hub dataset or local .jsonl/.json/.parquet (ncakit.scale.data schemas); 'tinylm' = the kit's synthetic K = 4 data",
    )
    dataset_schema: str = _f(
        "auto", "ncakit.scale.data schema: auto, canonical, ultrafeedback, nca_reward, binarized, trl"
    )
    dataset_split: str = _f("train", "training split (e.g. train_prefs)")
    eval_dataset_name: str | None = _f(
        None,
        "held-out dataset (default: dataset_name's eval_split for hub data, the kit's test set for tinylm)",
    )
    eval_split: str | None = _f("test", "held-out split (e.g. test_prefs); null disables evaluation")
    max_train_samples: int | None = _f(None, "keep the first N training prompts (smoke runs)")
    max_eval_samples: int | None = _f(None, "keep the first N held-out prompts")
    max_length: int = _f(1024, "prompt + response tokens (the authors' 1024)")
    max_prompt_length: int = _f(512, "prompt tokens kept (the LAST ones) when too long (the authors' 512)")
    k: int | None = _f(
        None, "responses per prompt in a batch (default: the data's largest K; fewer are masked)"
    )
    pair_rewards: Literal["binary", "scores"] = _f(
        "binary", "pairwise sources: rewards [1, 0] or the two scores (score_chosen, score_rejected)"
    )
    pairwise_from_k: Literal["best_vs_random", "best_vs_worst"] | None = _f(
        None, "turn K-response data into chosen/rejected pairs (the pairwise twin of a K-way run)"
    )
    group_by_length: bool = _f(False, "batch prompts of similar length together (less padding)")
    apply_chat_template: Literal["auto"] | bool = _f(
        "auto",
        "auto: the tokenizer's chat template for conversational rows only, plain text as is (TRL's rule); "
        "true: plain text too, as a user/assistant turn; false: never (the tiny kit: true, its SFT format)",
    )
    on_template_mismatch: Literal["warn", "error"] = _f(
        "warn",
        "a chat template whose generation prompt is not a prefix of the prompt + response: warn and "
        "split at the common prefix (TRL's fallback; the rows are counted), or stop with the fix",
    )
    dataset_num_proc: int | None = _f(None, "processes for datasets.map")
    # ---- loss ---------------------------------------------------------------------------------------
    loss: str = _f("nca", "a name in ncakit.losses.LOSSES (nca, infonca, dpo, nca_pair, ipo, ...)")
    beta: float = _f(0.1, "β: implicit reward scale / KL strength (the authors: 0.01)")
    loss_kwargs: dict[str, Any] = _f(
        {},
        "extra keyword arguments of the loss, e.g. {alpha: 0.01} (reward temperature), {first_bonus: 0.01}",
    )
    average_logps: bool = _f(False, "length-average the sequence log-probs (IPO-style) instead of summing")
    # ---- reference ----------------------------------------------------------------------------------
    reference: Literal["precompute", "adapter", "model"] = _f(
        "precompute",
        "precompute: one pass before training, cached on disk; adapter: the same LoRA model with its "
        "adapter disabled, per batch; model: a frozen copy (single device / DDP only)",
    )
    ref_cache_dir: str | None = _f(
        None, "reference cache folder (default: <output_dir>/ref_cache); share it between runs"
    )
    ref_batch_size: int | None = _f(
        None, "prompts per reference forward (default: per_device_eval_batch_size)"
    )
    precompute_ref_log_probs: bool | None = _f(
        None, "TRL's switch for the reference: true = reference precompute, false = adapter (LoRA) or model"
    )
    precompute_reference_only: bool = _f(
        False, "fill the reference cache and exit (any launch; a training run fills it itself)"
    )
    # ---- optimisation -------------------------------------------------------------------------------
    learning_rate: float = _f(5e-6, "peak learning rate")
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "cosine_with_min_lr",
        "cosine_warmup_with_min_lr",
        "warmup_stable_decay",
    ] = _f("cosine", "transformers.get_scheduler name")
    lr_scheduler_kwargs: dict[str, Any] = _f(
        {}, "extra arguments of the scheduler, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr"
    )
    warmup_ratio: float = _f(0.1, "warm-up steps as a fraction of the optimizer steps (ncakit's name)")
    warmup_steps: float = _f(
        0,
        "warm-up steps (overrides warmup_ratio when > 0); below 1, a fraction of the steps (transformers 5)",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay (not on biases and norms)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    optim: Literal[
        "adamw_torch",
        "adamw_torch_fused",
        "sgd",
        "adafactor",
        "adamw_8bit",
        "paged_adamw_32bit",
        "paged_adamw_8bit",
    ] = _f("adamw_torch", "optimizer (adamw_8bit and paged_* need bitsandbytes)")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables; ZeRO-3 clips in DeepSpeed)")
    num_train_epochs: int = _f(1, "passes over the training prompts")
    max_steps: int = _f(-1, "optimizer steps to run (overrides num_train_epochs when > 0)")
    per_device_train_batch_size: int = _f(
        8, "prompts per process per micro-batch (each brings its K responses)"
    )
    per_device_eval_batch_size: int = _f(8, "prompts per process per eval batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    seed: int = _f(42, "seed of everything (data order, init of adapters, dropout)")
    data_seed: int | None = _f(None, "seed of the data order alone (default: seed)")
    mixed_precision: Literal["no", "bf16", "fp16"] | None = _f(
        None, "override the accelerate config's mixed precision"
    )
    bf16: bool = _f(False, "TRL / transformers' switch: true = mixed_precision bf16")
    fp16: bool = _f(False, "TRL / transformers' switch: true = mixed_precision fp16")
    cpu_threads: int | None = _f(
        None, "torch threads on CPU (default 1: tiny tensors are faster on one thread)"
    )
    # ---- evaluation, logging, checkpoints -------------------------------------------------------------
    eval_strategy: Literal["no", "steps", "epoch"] = _f(
        "steps", "no: never evaluate; steps: every eval_steps (0: only at the end); epoch: after each epoch"
    )
    eval_steps: int = _f(0, "evaluate every N optimizer steps (0: only at the end)")
    eval_on_start: bool = _f(False, "evaluate before the first step too (policy = reference)")
    logging_steps: int = _f(10, "log train metrics every N optimizer steps (averaged over the window)")
    report_to: list[str] = _f(
        [], "trackers besides the jsonl log: all, none, or names (tensorboard, wandb, trackio, mlflow, ...)"
    )
    run_name: str | None = _f(None, "tracker run name (default: the output folder's name)")
    output_dir: str = _f("out/run", "metrics.jsonl, run.json, checkpoints/, final/ go here")
    save_strategy: Literal["no", "steps", "epoch"] = _f(
        "steps", "no: no periodic checkpoints; steps: every save_steps; epoch: after each epoch"
    )
    save_steps: int = _f(0, "checkpoint every N optimizer steps (0: no periodic checkpoints)")
    save_total_limit: int | None = _f(2, "keep only the newest N periodic checkpoints")
    resume_from: str | None = _f(
        None, "a checkpoint folder, or 'latest' (newest under <output_dir>/checkpoints)"
    )
    resume_allow_changes: list[str] = _f(
        [],
        "run-fingerprint keys allowed to differ from the checkpoint's on resume, e.g. [learning_rate] "
        "(logged and recorded in the next checkpoints); batch geometry can never change",
    )
    overwrite_output_dir: bool = _f(
        False,
        "start a fresh run in an output_dir that holds another run: its checkpoints, metrics and final "
        "model are deleted (caches such as tinylm-kit and ref_cache are kept)",
    )
    on_nonfinite: Literal["stop", "skip"] = _f(
        "stop",
        "a non-finite loss or gradient norm: stop (nothing is saved; the step, rows and values are named) "
        "or skip the optimizer step (weights unchanged; counted as skipped_steps in the metrics)",
    )
    save_final: bool = _f(True, "save_pretrained the model (or adapter) and tokenizer to <output_dir>/final")
    push_to_hub: bool = _f(False, "upload <output_dir>/final to the Hub (huggingface_hub) at the end")
    hub_model_id: str | None = _f(None, "the Hub repo to push to (default: the output folder's name)")
    hub_private_repo: bool | None = _f(None, "create the Hub repo private")
    merge_lora: bool = _f(
        False, "also write the adapter merged into the base weights to <output_dir>/final/merged"
    )
    progress: bool = _f(True, "tqdm progress bar on the main process")

    # ------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Cross-field checks (types were checked while loading). Returns self."""
        from ncakit.registry import check_loss_kwargs, loss_names

        names = loss_names(aliases=True)
        if self.loss not in names:
            close = difflib.get_close_matches(self.loss, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"loss: unknown loss {self.loss!r}{hint}; allowed values: {sorted(names)}")
        try:
            check_loss_kwargs(self.loss, self.loss_kwargs)
        except ValueError as err:
            raise ValueError(
                f"{err} (switching a recipe's loss? clear its loss_kwargs with --loss_kwargs '{{}}')"
            ) from None
        positive = {
            "beta": self.beta,
            "learning_rate": self.learning_rate,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_train_epochs": self.num_train_epochs,
            "logging_steps": self.logging_steps,
            "lora_r": self.lora_r,
        }
        for name, v in positive.items():
            if not v > 0:
                raise ValueError(f"{name}: expected a value > 0, got {v}")
        self._resolve_trl_switches()
        for name in ("eval_steps", "save_steps", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a value >= 0, got {getattr(self, name)}")
        if self.warmup_steps >= 1 and not float(self.warmup_steps).is_integer():
            raise ValueError(
                f"warmup_steps: expected a whole number of steps (or a fraction below 1), got {self.warmup_steps}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: expected a value in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout: expected a value in [0, 1), got {self.lora_dropout}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length: expected < max_length ({self.max_length}) so responses keep some tokens, "
                f"got {self.max_prompt_length}"
            )
        if self.k is not None and self.k < 2:
            raise ValueError(f"k: expected >= 2 responses per prompt (or null), got {self.k}")
        if self.load_in_4bit and not self.use_peft:
            raise ValueError(
                "load_in_4bit: QLoRA trains an adapter on frozen 4-bit weights; set use_peft: true"
            )
        if self.load_in_8bit and (self.load_in_4bit or not self.use_peft):
            raise ValueError(
                "load_in_8bit: 8-bit weights are frozen: set use_peft: true, and not load_in_4bit as well"
            )
        if (self.use_dora or self.use_rslora or self.lora_modules_to_save) and not self.use_peft:
            raise ValueError(
                "use_dora / use_rslora / lora_modules_to_save: LoRA settings need use_peft: true"
            )
        if self.reference == "adapter" and not self.use_peft:
            raise ValueError(
                "reference: 'adapter' disables the LoRA adapter to get the reference, so it needs use_peft: true; "
                "use 'precompute' (default) for full fine-tuning"
            )
        if self.merge_lora and not self.use_peft:
            raise ValueError("merge_lora: there is no adapter to merge without use_peft: true")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit: expected >= 1 or null, got {self.save_total_limit}")
        if self.resume_allow_changes:
            from ncakit.scale.fingerprint import check_allowed_changes

            check_allowed_changes(self.resume_allow_changes)
        from ncakit.scale.tracking import resolve_report_to

        resolve_report_to(self.report_to, require_installed=False)  # names now; installs at start-up
        if self.push_to_hub and not self.save_final:
            raise ValueError("push_to_hub: uploads <output_dir>/final, so it needs save_final: true")
        check_inputs(self)  # paths and sample counts: before any model or data is loaded
        return self

    def _resolve_trl_switches(self) -> None:
        """TRL's boolean switches folded into ncakit's keys (bf16 / fp16 -> mixed_precision,
        precompute_ref_log_probs -> reference); a contradiction is one line naming both keys."""
        if self.bf16 and self.fp16:
            raise ValueError("bf16: and fp16: both true; choose one mixed precision")
        for flag in ("bf16", "fp16"):
            if getattr(self, flag):
                if self.mixed_precision not in (None, flag):
                    raise ValueError(f"{flag}: true contradicts mixed_precision: {self.mixed_precision}")
                self.mixed_precision = flag
        if self.precompute_ref_log_probs is not None:
            wanted = (
                "precompute" if self.precompute_ref_log_probs else ("adapter" if self.use_peft else "model")
            )
            if self.reference not in ("precompute", wanted):
                raise ValueError(
                    f"precompute_ref_log_probs: {str(self.precompute_ref_log_probs).lower()} contradicts "
                    f"reference: {self.reference}; set one of them"
                )
            self.reference = wanted

    @property
    def data_order_seed(self) -> int:
        """The seed of the data order: ``data_seed``, else ``seed`` (transformers' rule)."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Typed coercion: one function for YAML values and command-line strings
# ----------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", "~", ""}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _allowed(tp) -> str:
    args = []
    for a in typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,):
        if typing.get_origin(a) is Literal:
            args += list(typing.get_args(a))
        elif a is type(None):
            args.append(None)
    return f"; allowed values: {args}" if args else ""


def coerce_value(name: str, value: Any, tp, *, from_cli: bool = False) -> Any:
    """``value`` converted to the annotated type ``tp`` of key ``name``, or TypeError naming the key,
    the expected type and the allowed values. Command-line strings are parsed by type."""

    def fail():
        shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
        raise TypeError(
            f"{name}: expected {_type_name(tp)}, got {type(value).__name__} {shown}{_allowed(tp)}"
        ) from None

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(name, value, a, from_cli=from_cli)
            except TypeError:
                continue
        fail()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        fail()
    if tp is int:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    fail()
                if f.is_integer():
                    return int(f)
        fail()
    if tp is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "5e-6" as a string; the CLI gives strings
            try:
                out = float(value.strip())
            except ValueError:
                fail()
        else:
            fail()
        if not math.isfinite(out):  # nan compares False with everything: it would pass every range check
            raise ValueError(f"{name}: expected a finite float, got {value!r}") from None
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        fail()
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import yaml

                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    fail()
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            fail()
        return [coerce_value(f"{name}[{i}]", v, item, from_cli=from_cli) for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                fail()
            if value is None:
                value = {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail()
        return dict(value)
    raise TypeError(f"{name}: unsupported annotation {tp!r}")  # pragma: no cover - a bug in TrainConfig


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _unknown_key(key: str, where: str) -> ValueError:
    from ncakit.scale.trl_names import no_meaning_here

    trl = no_meaning_here(key, where)
    if trl is not None:
        return trl
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{key}: unknown key in {where}{hint}; `scale/train.py --help` lists the keys")


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """A recipe file -> ``{key: typed value}`` (unknown keys and bad types raise, naming the key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no such recipe file {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:  # name the recipe and the line, not "<unicode string>"
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"config: expected a YAML mapping of key: value in {where}, got a syntax error ({problem})"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"config: expected a UTF-8 text recipe in {path}, got undecodable bytes ({err.reason})"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"config: {path} must hold a mapping of key: value, got {type(raw).__name__}")
    types_ = _field_types()
    out = {}
    names: dict[str, str] = {}
    for given, value in raw.items():
        key = _canonical(str(given), names, str(path))
        if key not in types_:
            raise _unknown_key(str(given), str(path))
        out[key] = coerce_value(key, value, types_[key])
    return out


def _canonical(given: str, seen: dict, where: str) -> str:
    """ncakit's key for ``given`` (a TRL alias maps to its ncakit key); the same setting given twice
    in one place, under both names, is an error."""
    from ncakit.scale.trl_names import canonical_key

    key = canonical_key(given)
    first = seen.get(key)
    if first is not None and first != given:
        trl, ours = (given, first) if key != given else (first, given)
        raise ValueError(f"{trl}: TRL's name for {ours}, which {where} sets too; keep one of them")
    seen[key] = given
    return key


def _split_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, str | None]], bool]:
    """argv -> (the --config path, [(key, raw value or None for a bare flag)], help asked)."""
    config = None
    pairs: list[tuple[str, str | None]] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
            i += 1
            continue
        if not arg.startswith("--") or arg == "--":
            raise ValueError(
                f"{arg}: expected --key value (or --key=value); positional arguments are not used"
            )
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "debug":  # --debug [true|false]: read by debug_requested(), not a config key
            if not eq and i + 1 < len(argv) and argv[i + 1].strip().lower() in _TRUE | _FALSE:
                i += 1
            i += 1
            continue
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = None  # a bare flag: --gradient_checkpointing means true
        i += 1
        if key == "config":
            if value is None:
                raise ValueError("config: expected a recipe path after --config")
            config = value
        else:
            pairs.append((key, value))
    return config, pairs, want_help


def config_help() -> str:
    """The ``--help`` text: every key, its type, default and meaning."""
    types_ = _field_types()
    lines = [
        "usage: accelerate launch [--config_file scale/accelerate/<cfg>.yaml] scale/train.py "
        "[--config RECIPE.yaml] [--key value ...]",
        "",
        "Keys (defaults < recipe < command line):",
        "  --debug [true|false]  (or the environment variable NCAKIT_DEBUG=1)",
        "        show the full traceback of a configuration or data error instead of one line",
    ]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name} ({_type_name(types_[f.name])}, default {default!r})")
        lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when ``--debug`` (bare, ``true``, ``--debug=1``...) is on the command line or the
    environment variable ``NCAKIT_DEBUG`` is set to a true value: the entry points then re-raise
    errors with their traceback instead of printing one line."""
    if os.environ.get("NCAKIT_DEBUG", "").strip().lower() in _TRUE:
        return True
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key.replace("-", "_") != "__debug":
            continue
        if eq:
            return value.strip().lower() in _TRUE
        nxt = argv[i + 1].strip().lower() if i + 1 < len(argv) else ""
        return nxt not in _FALSE
    return False


def _looks_like_path(name: str) -> bool:
    """A string meant as a local path (never a hub id): ./ ../ / ~ or a data-file suffix."""
    return name.startswith(("./", "../", "/", "~")) or Path(name).suffix.lower() in (
        ".json",
        ".jsonl",
        ".parquet",
        ".pq",
    )


def check_inputs(cfg: TrainConfig) -> None:
    """Paths and counts a run reads or writes, checked before anything is loaded: one line each."""
    out = cfg.output_dir
    if not str(out).strip():
        raise ValueError(
            "output_dir: expected a folder path, got '' (it would write into the current folder)"
        )
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"output_dir: expected a folder, got the existing file {out!r}")
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(
            f"output_dir: expected a folder path, got {out!r} whose parent {str(parent)!r} is a file"
        )
    for name in ("max_train_samples", "max_eval_samples"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ValueError(f"{name}: expected a positive int (or null for all), got {v}")
    for name in ("dataset_name", "eval_dataset_name", "model_name_or_path", "tokenizer_name_or_path"):
        v = getattr(cfg, name)
        if v is None or v == "tinylm":
            continue
        if not str(v).strip():
            raise ValueError(f"{name}: expected a hub id or a local path, got ''")
        if (
            _looks_like_path(str(v))
            and not any(ch in str(v) for ch in "*?[")
            and not Path(v).expanduser().exists()
        ):
            raise ValueError(
                f"{name}: expected an existing local file or folder, got {v!r} "
                "(no such path; a local path is not looked up on the Hub)"
            )
    if cfg.resume_from not in (None, "latest") and not Path(cfg.resume_from).expanduser().is_dir():
        raise ValueError(
            f"resume_from: expected 'latest' or an existing checkpoint folder, got {cfg.resume_from!r}"
        )
    if cfg.dataset_schema != "auto":  # checked here, not after the model has loaded
        from ncakit.scale.data.schemas import SCHEMA_ALIASES, SCHEMAS

        if cfg.dataset_schema not in SCHEMAS and cfg.dataset_schema.lower() not in SCHEMA_ALIASES:
            close = difflib.get_close_matches(cfg.dataset_schema, list(SCHEMAS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"dataset_schema: expected 'auto' or one of {sorted(SCHEMAS)}, got {cfg.dataset_schema!r}{hint}"
            )
    for name in ("tiny_kit_dir", "ref_cache_dir"):
        v = getattr(cfg, name)
        if v is not None and (not str(v).strip() or (Path(v).exists() and not Path(v).is_dir())):
            raise ValueError(f"{name}: expected a folder path, got {v!r}")


def parse_config(argv: list[str] | None = None, *, validate: bool = True) -> TrainConfig:
    """``[--config recipe.yaml] [--key value ...]`` -> a checked :class:`TrainConfig`.

    ``--help`` prints :func:`config_help` and exits. Unknown keys -> ValueError; bad values ->
    TypeError; cross-field problems (:meth:`TrainConfig.validate`) -> ValueError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, pairs, want_help = _split_cli(argv)
    if want_help:
        print(config_help())
        raise SystemExit(0)
    values = load_yaml_config(config_path) if config_path else {}
    types_ = _field_types()
    given_here: dict[str, Any] = {}
    for given, raw in pairs:
        key = _canonical(given, given_here, "the command line")
        if key not in types_:
            raise _unknown_key(given, "the command line")
        if raw is None:
            if types_[key] is not bool:
                raise TypeError(f"{key}: expected {_type_name(types_[key])} after --{key}, got nothing")
            raw = "true"
        values[key] = coerce_value(key, raw, types_[key], from_cli=True)
    cfg = TrainConfig(**values)
    return cfg.validate() if validate else cfg
