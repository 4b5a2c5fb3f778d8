"""The model side of a ``scale/train.py`` run: the tokenizer, the causal LM (4 / 8-bit for QLoRA,
the ``LogprobHead`` swapped in, activation checkpointing, LoRA / DoRA / rsLoRA attached, dropout
disabled as TRL does) and the optimizer (AdamW, fused AdamW, SGD, Adafactor, bitsandbytes' 8-bit
and paged ones)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ncakit.scale.config import TrainConfig, torch_dtype
from ncakit.scale.forward import install_logprob_head

__all__ = ["load_tokenizer", "load_model", "enable_checkpointing", "disable_dropout", "build_optimizer"]

logger = logging.getLogger(__name__)


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    name = cfg.tokenizer_name_or_path or cfg.model_name_or_path
    tok = AutoTokenizer.from_pretrained(
        name, revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code
    )
    if tok.pad_token_id is None:  # Mistral/Llama: padding is masked everywhere, any id works
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def load_model(cfg: TrainConfig, accelerator):
    """The causal LM: loaded (4-bit for QLoRA), head swapped, checkpointing on, LoRA attached."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "revision": cfg.model_revision,
        "trust_remote_code": cfg.trust_remote_code,
        "dtype": torch_dtype(cfg.torch_dtype),
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_8bit:
        if not torch.cuda.is_available():
            raise ValueError("load_in_8bit: 8-bit weights need a CUDA GPU (bitsandbytes kernels)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": accelerator.local_process_index}
    if cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise ValueError("load_in_4bit: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels)")
        from transformers import BitsAndBytesConfig  # imports bitsandbytes lazily, only here

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=torch_dtype(cfg.bnb_4bit_compute_dtype),
            bnb_4bit_quant_storage=torch_dtype(cfg.bnb_4bit_compute_dtype),
        )
        kwargs["device_map"] = {"": accelerator.local_process_index}
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, **kwargs)
    model.config.use_cache = False
    # Swap the head before peft wraps the model, so the adapter-disabled reference uses it too.
    if install_logprob_head(model) is None:
        logger.warning("no LogprobHead for %s: using the chunked logits path", type(model).__name__)
    gc_kwargs = {"use_reentrant": False, **(cfg.gradient_checkpointing_kwargs or {})}
    quantised = cfg.load_in_4bit or cfg.load_in_8bit
    quantised_peft = cfg.use_peft and quantised  # peft's k-bit preparation turns it on itself
    if cfg.gradient_checkpointing and not quantised_peft:
        enable_checkpointing(model, gc_kwargs)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        if quantised:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs=gc_kwargs,
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            modules_to_save=list(cfg.lora_modules_to_save) if cfg.lora_modules_to_save else None,
            use_dora=cfg.use_dora,
            use_rslora=cfg.use_rslora,
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):  # adapter init from cfg.seed, whatever ran before
            torch.manual_seed(cfg.seed)
            model = get_peft_model(model, lora)
    if cfg.disable_dropout:
        disable_dropout(model)
    return model


def disable_dropout(model) -> int:
    """Every dropout of ``model`` set to p = 0: each ``torch.nn.Dropout`` (LoRA's ``lora_dropout``
    included), as TRL's ``disable_dropout_in_model`` does, and also the functional attention dropout
    transformers' attention modules keep as a float ``attention_dropout`` (which TRL's leaves on).
    trl is not a dependency of the scale track, hence these few lines. Returns how many were > 0."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p, n = 0.0, n + 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, n = 0.0, n + 1
    return n


def enable_checkpointing(model, kwargs: dict | None = None) -> None:
    """Activation (gradient) checkpointing under its transformers 5 name, or the older one."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_optimizer(cfg: TrainConfig, model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    if cfg.optim in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(groups, **kwargs, fused=cfg.optim == "adamw_torch_fused" or None)
    if cfg.optim == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate)
    if cfg.optim == "adafactor":  # transformers' (as TrainingArguments' optim="adafactor")
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=cfg.learning_rate, scale_parameter=False, relative_step=False)
    import bitsandbytes as bnb  # only when a bitsandbytes optimizer is asked for

    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
    }[cfg.optim]
    return cls(groups, **kwargs)
