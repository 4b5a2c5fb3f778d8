"""The configuration of ``scale/train.py``: one dataclass, :class:`TrainConfig`, with a default and a
help string per key, its cross-field checks (:meth:`TrainConfig.validate`) and the checks of the
paths a run reads and writes (:func:`check_inputs`), all before anything is loaded. The recipe says
WHAT a run trains, the accelerate config WHERE it runs (alignment-handbook style).

Parsing the command line and recipes into it is :mod:`ncakit.scale.cli` (``parse_config``);
``python scale/train.py --help`` lists every key with its default and meaning.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["TrainConfig", "torch_dtype", "check_inputs"]


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
    prompt_sharing: Literal["auto"] | bool = _f(
        "auto",
        "run each prompt once and reuse its keys/values for its K responses (ncakit.scale.prefix; the same "
        "log-probs to fp32 round-off, fewer tokens): auto = on for K >= 2 with eager/sdpa attention and "
        "no binding sliding window, off for the policy under reentrant gradient checkpointing (the reason goes to "
        "run.json); true = on or stop with the reason; false = off",
    )
    fused_loss_head: bool = _f(
        False,
        "compute the loss inside the LM head, chunked over prompts (ncakit.fused; 3 matmuls per token "
        "instead of 4, memory bounded): for a trainable head (full fine-tuning) in a single process; "
        "no token metrics (entropy, logits/*, mean_token_accuracy) with it",
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
    rendering: Literal["trl", "authors"] = _f(
        "trl",
        "how sequences are built: trl = TRL 1.16's rendering (prompt = the chat template with the "
        "generation prompt, response = the rest of the ids, plain text + one EOS, every token attended; "
        "the authors' truncation); authors = the NCA authors' code exactly (an empty system turn before "
        "the first user message, each response = its template text such as '{a}</s>\\n' plus a second "
        "EOS, all scored; EOS tokens inside the text hidden from attention; needs a chat template); "
        "see ncakit.scale.data.authors",
    )
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
    output_dir: str = _f("out/run", "metrics.jsonl, run.json, checkpoint-N/, final/ go here")
    save_strategy: Literal["no", "steps", "epoch"] = _f(
        "steps", "no: no periodic checkpoints; steps: every save_steps; epoch: after each epoch"
    )
    save_steps: int = _f(0, "checkpoint every N optimizer steps (0: no periodic checkpoints)")
    save_total_limit: int | None = _f(2, "keep only the newest N periodic checkpoints")
    resume_from: str | None = _f(
        None,
        "a checkpoint folder, or 'latest' (the newest <output_dir>/checkpoint-N); true means latest "
        "(TrainingArguments.resume_from_checkpoint)",
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
        if self.rendering == "authors" and self.apply_chat_template is False:
            raise ValueError(
                "rendering: 'authors' renders every row with the chat template (as the authors' code does), "
                "so apply_chat_template: false cannot apply; use apply_chat_template: auto or true"
            )
        if self.prompt_sharing not in ("auto", True, False):
            raise ValueError(f"prompt_sharing: expected auto, true or false, got {self.prompt_sharing!r}")
        if self.fused_loss_head:
            from ncakit.fused import check_per_prompt

            reason = check_per_prompt(self.loss, self.loss_kwargs, beta=self.beta, k=self.k)
            if reason is not None:
                raise ValueError(
                    f"fused_loss_head: the loss {self.loss!r} cannot be computed inside the head ({reason}); "
                    "use fused_loss_head: false"
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
        if isinstance(self.resume_from, str) and self.resume_from.strip().lower() in ("true", "false"):
            # TrainingArguments.resume_from_checkpoint: true = the newest checkpoint in output_dir
            self.resume_from = "latest" if self.resume_from.strip().lower() == "true" else None
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
