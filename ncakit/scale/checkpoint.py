"""Checkpoints of a ``scale/train.py`` run: save, find, verify, resume, the final model, stopping on a signal.

- :func:`save_checkpoint` -- HF-native: ``save_pretrained`` (the model, or the LoRA adapter alone) +
  tokenizer, then ``accelerator.save_state`` (optimizer, RNG, samplers; the model itself only under
  FSDP / DeepSpeed, whose sharded files exact resume needs) + ``trainer_state.json``
  (:class:`TrainState`: step, epoch, batches consumed) + ``ncakit_state.json`` (the run's fingerprint,
  the accepted changes, the lr scheduler's state, as JSON) into a temporary folder next to
  ``<output_dir>/checkpoint-N`` (the HF Trainer's layout: ``transformers.trainer_utils.get_last_checkpoint``
  finds the newest); every file is fsync-ed, the completion marker ``COMPLETE``
  (a manifest: size of every file, sha256 of the small ones) is written last, then the folder is
  renamed into place (:func:`commit_dir`; an existing checkpoint of the same step is swapped out by two
  renames that :func:`recover_checkpoints` completes after a crash). Periodic saves keep the newest
  ``save_total_limit``.
- :func:`list_checkpoints` / :func:`resolve_resume` -- complete checkpoints only (marker present,
  sizes as recorded); ``--resume_from latest`` or a folder.
- :func:`verify_checkpoint` -- before anything is loaded: the manifest's sizes and checksums, no
  pickle file the manifest does not list, and every small pickle loadable with ``weights_only=True``
  (accelerate loads the model from safetensors and the optimizer with ``weights_only=True``; its RNG
  load would swallow a refused file, hence the check). Nothing in a checkpoint can run code.
- :func:`load_checkpoint` -- the accelerator state, the :class:`TrainState` and the scheduler state.
- :func:`save_final` -- the model (or the LoRA adapter) + tokenizer + a model card
  (:func:`write_model_card`) to ``<output_dir>/final``, and with ``merge_lora`` the adapter merged
  into the base weights (``final/merged``); :func:`push_to_hub` uploads it.
- :class:`StopFlag` -- SIGTERM / SIGINT / SIGUSR1 set a flag; the loop finishes the optimizer step,
  saves a checkpoint and stops. :func:`follow_launcher` makes the death of ``accelerate launch`` /
  ``torchrun`` (killed by a signal it does not forward) a SIGTERM to the training process.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncakit.utils import write_atomic

if TYPE_CHECKING:
    from ncakit.scale.config import TrainConfig

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_name",
    "STATE_FILE",
    "NCAKIT_STATE_FILE",
    "COMPLETE_FILE",
    "TrainState",
    "list_checkpoints",
    "is_complete",
    "resolve_resume",
    "read_checkpoint_state",
    "verify_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "commit_dir",
    "recover_checkpoints",
    "save_final",
    "save_pretrained_folder",
    "load_pretrained_weights",
    "accelerate_writes_weights",
    "model_card_text",
    "write_model_card",
    "push_to_hub",
    "StopFlag",
    "follow_launcher",
    "is_launcher",
]

logger = logging.getLogger("ncakit.scale.checkpoint")
# transformers.trainer_utils.PREFIX_CHECKPOINT_DIR: checkpoints are <output_dir>/checkpoint-<step>, as the
# HF Trainer and TRL write them (not imported: that module pulls in the whole Trainer stack).
CHECKPOINT_PREFIX = "checkpoint"
_CHECKPOINT_RE = re.compile(rf"{CHECKPOINT_PREFIX}-(\d+)")
STATE_FILE = "trainer_state.json"
NCAKIT_STATE_FILE = "ncakit_state.json"
COMPLETE_FILE = "COMPLETE"
HASH_LIMIT = 64 << 20  # files up to 64 MiB get a sha256 in the manifest (RNG, scheduler, small models)
PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")


@dataclass
class TrainState:
    """Where the loop is. ``batches_in_epoch`` counts this process's micro-batches of the current
    epoch (the number to skip on resume); ``skipped_steps``: optimizer steps skipped as non-finite."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    max_steps: int = 0
    num_tokens: int = 0
    skipped_steps: int = 0


# ----------------------------------------------------------------------------------------------
# Durable files and folders
# ----------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(payload, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != COMPLETE_FILE:
            entry: dict[str, Any] = {"size": p.stat().st_size}
            if entry["size"] <= HASH_LIMIT:
                entry["sha256"] = _sha256(p)
            files[str(p.relative_to(folder))] = entry
    return files


def commit_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final`` (same parent). An existing ``final`` is first
    renamed aside to ``.<name>.old`` and deleted after the swap; a crash in between leaves both
    complete folders, and :func:`recover_checkpoints` puts the new one in place."""
    parent = final.parent
    if final.exists():
        old = parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _fsync_path(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        _fsync_path(parent)


def recover_checkpoints(output_dir: Path) -> None:
    """After a crash inside :func:`save_checkpoint`: complete an interrupted swap (the new folder if
    it was finished, else the old one) and delete unfinished temporary folders. Main process only."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for hidden in sorted(root.glob(f".{CHECKPOINT_PREFIX}-*")):
        m = re.fullmatch(rf"\.({CHECKPOINT_PREFIX}-\d+)\.(tmp|old)", hidden.name)
        if m is None or not hidden.exists():
            continue
        final, tmp, old = root / m[1], root / f".{m[1]}.tmp", root / f".{m[1]}.old"
        if not final.exists():
            for candidate in (tmp, old):  # the newer first
                if candidate.exists() and is_complete(candidate):
                    logger.warning("checkpoint: completing the interrupted save of %s", final)
                    os.replace(candidate, final)
                    _fsync_path(root)
                    break
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Finding, verifying and loading checkpoints
# ----------------------------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    """The save finished: the completion marker (written last) is there and readable. Whether the
    files still match it is :func:`verify_checkpoint`'s check (a changed file is refused, naming it,
    not silently skipped)."""
    try:
        return isinstance(json.loads((path / COMPLETE_FILE).read_text())["files"], dict)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints ``<output_dir>/checkpoint-N``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT_RE.fullmatch(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.fullmatch(p.name)[1]))


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after optimizer step ``step``: ``checkpoint-<step>``."""
    return f"{CHECKPOINT_PREFIX}-{step}"


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint folder ``cfg.resume_from`` names (``"latest"``: the newest complete one), or None."""
    if cfg.resume_from is None:
        return None
    if cfg.resume_from == "latest":
        found = list_checkpoints(Path(cfg.output_dir))
        if not found:
            root = Path(cfg.output_dir)
            partial = sorted(p.name for p in root.glob(f"{CHECKPOINT_PREFIX}-*")) if root.is_dir() else []
            why = f"; incomplete (no {COMPLETE_FILE} marker): {', '.join(partial)}" if partial else ""
            raise ValueError(f"resume_from: 'latest' but no checkpoint under {root}{why}")
        return found[-1]
    path = Path(cfg.resume_from)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"resume_from: {path} is not a checkpoint folder (no {STATE_FILE})")
    if not is_complete(path):
        raise ValueError(
            f"resume_from: {path} is incomplete (no {COMPLETE_FILE} marker matching its files: a save that "
            f"did not finish, or a checkpoint of an older ncakit); use another checkpoint"
        )
    return path


def read_checkpoint_state(path: Path) -> tuple[dict, dict]:
    """``(trainer_state.json, ncakit_state.json)`` of a checkpoint (JSON only)."""
    saved = json.loads((path / STATE_FILE).read_text())
    extra_file = path / NCAKIT_STATE_FILE
    extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}
    return saved, extra


def verify_checkpoint(path: Path) -> None:
    """Refuse (ValueError, one line) a checkpoint whose files differ from its manifest, that holds a
    pickle the manifest does not list, or whose small pickles do not load with ``weights_only=True``.
    Nothing is unpickled with code execution allowed."""
    import pickle

    try:
        files = json.loads((path / COMPLETE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"resume_from: {path}: unreadable {COMPLETE_FILE} manifest ({err})") from None
    for name, entry in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != entry["size"]:
            raise ValueError(
                f"resume_from: {f} is missing or changed since the checkpoint was written (size)"
            )
        if "sha256" in entry and _sha256(f) != entry["sha256"]:
            raise ValueError(f"resume_from: {f} changed since the checkpoint was written (sha256 mismatch)")
    for f in sorted(path.rglob("*")):
        name = str(f.relative_to(path))
        if f.is_file() and f.suffix in PICKLE_SUFFIXES and name not in files:
            raise ValueError(
                f"resume_from: {f} is not part of the checkpoint (not in its manifest); refusing to load it"
            )
    from accelerate.utils import load as safe_load  # torch.load(weights_only=True) + numpy's safe globals

    for name, entry in files.items():
        f = path / name
        if f.suffix in PICKLE_SUFFIXES and entry["size"] <= HASH_LIMIT:
            try:
                safe_load(f, map_location="cpu")
            except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(
                    f"resume_from: {f} does not load as plain tensors/values (weights_only=True): {first}; refusing it"
                ) from None


def load_checkpoint(accelerator, path: Path, state: TrainState, lr_scheduler=None) -> dict:
    """Restore the accelerator state (model, optimizer, RNG), ``state`` and the scheduler from ``path``
    (verified first by :func:`verify_checkpoint`). Returns ``ncakit_state.json``."""
    import pickle

    saved, extra = read_checkpoint_state(path)
    handle = None
    if saved.get("weights") == "pretrained":  # the weights are the save_pretrained files only

        def load_weights(models, input_dir):
            for m in models:
                load_pretrained_weights(accelerator.unwrap_model(m), Path(input_dir))
            models.clear()  # accelerate has no model file of its own to load

        handle = accelerator.register_load_state_pre_hook(load_weights)
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"resume_from: {path}: a state file does not load with weights_only=True: {first}"
        ) from None
    finally:
        if handle is not None:
            handle.remove()
    for key in ("global_step", "epoch", "batches_in_epoch", "num_tokens", "skipped_steps"):
        setattr(state, key, int(saved.get(key, 0)))
    if lr_scheduler is not None:
        if "lr_scheduler" not in extra:
            raise ValueError(f"resume_from: {path} has no lr scheduler state in {NCAKIT_STATE_FILE}")
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
    accelerator.print(f"resumed from {path} at step {state.global_step}")
    return extra


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def accelerate_writes_weights(accelerator) -> bool:
    """True under FSDP / DeepSpeed / Megatron, where ``save_state`` writes the model itself (sharded
    files, which the optimizer state is keyed to): those checkpoints keep them beside the
    ``save_pretrained`` copy (exact resume of a sharded run matters more than its size)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
        DistributedType.MEGATRON_LM,
    )


def save_pretrained_folder(accelerator, model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` the PREPARED ``model`` (all processes call it: the state dict is gathered
    under FSDP2 / ZeRO-3) into ``folder``, the main process writing: a full model loads with
    ``AutoModelForCausalLM.from_pretrained(folder)``, a LoRA / QLoRA run holds the adapter alone
    (``adapter_model.safetensors`` + ``adapter_config.json``: ``PeftModel.from_pretrained(base, folder)``).
    The LM head swapped in by :func:`ncakit.scale.forward.install_logprob_head` keeps the name and the
    Parameter of the original head, so the files are the model's own. Safetensors only."""
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        folder,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
        safe_serialization=True,
    )
    if accelerator.is_main_process and tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def load_pretrained_weights(model, folder: Path) -> None:
    """Copy the weights :func:`save_pretrained_folder` wrote into the (unwrapped) ``model`` in place
    (the optimizer keeps its parameters): the adapter of a PEFT model, else every weight (sharded
    ``model.safetensors.index.json`` too); ValueError (one line) if the files do not fit the model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(
                f"resume_from: {folder}: adapter weights the model does not have: "
                f"{', '.join(sorted(result.unexpected_keys)[:5])}"
            )
        return
    index = folder / "model.safetensors.index.json"
    names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    state: dict = {}
    for name in names or ["model.safetensors"]:
        state.update(load_file(folder / name))
    result = model.load_state_dict(state, strict=False)
    tied = {k for k in result.missing_keys if k.endswith("lm_head.weight")}  # tied to the embeddings
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ValueError(
            f"resume_from: {folder}: the saved weights do not fit the model (missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]})"
        )


def save_checkpoint(
    accelerator,
    cfg: TrainConfig,
    state: TrainState,
    *,
    reason: str,
    extra: dict | None = None,
    model=None,
    tokenizer=None,
) -> Path:
    """Save the run at ``state.global_step`` atomically (all processes call it); ``reason`` is
    recorded, ``extra`` goes to ``ncakit_state.json`` (JSON), and only ``"periodic"`` saves prune
    old checkpoints beyond ``cfg.save_total_limit``.

    With ``model`` (the PREPARED model) the folder is HF-native: :func:`save_pretrained_folder`
    (config + ``model.safetensors``, or the LoRA adapter alone) + tokenizer, and ``save_state`` adds
    the optimizer, RNG and sampler states; a pre-save hook keeps accelerate from writing the weights a
    second time on one process / DDP (and the whole base model under LoRA); on resume
    :func:`load_checkpoint` reads them back from the ``save_pretrained`` files. Under FSDP / DeepSpeed
    accelerate's sharded model files are kept too (:func:`accelerate_writes_weights`)."""
    root = Path(cfg.output_dir)
    final = root / checkpoint_name(state.global_step)
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    handle = None
    if model is not None:
        save_pretrained_folder(accelerator, model, tokenizer, tmp)
        accelerator.wait_for_everyone()
        if not accelerate_writes_weights(accelerator):
            handle = accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
    try:
        accelerator.save_state(str(tmp))
    finally:
        if handle is not None:
            handle.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = "accelerate" if model is None else ("both" if handle is None else "pretrained")
        record = {**state.__dict__, "reason": reason, "time": time.time(), "weights": weights}
        _write_json(tmp / STATE_FILE, record)
        _write_json(tmp / NCAKIT_STATE_FILE, extra or {})
        for p in tmp.rglob("*"):  # every byte on disk before the marker says the folder is complete
            if p.is_file():
                _fsync_path(p)
        _write_json(tmp / COMPLETE_FILE, {"step": state.global_step, "files": _manifest(tmp)})
        _fsync_path(tmp)
        commit_dir(tmp, final)
        if cfg.save_total_limit is not None and reason == "periodic":
            old = [p for p in list_checkpoints(Path(cfg.output_dir)) if p != final]
            for p in old[: max(0, len(old) - (cfg.save_total_limit - 1))]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_final(accelerator, cfg: TrainConfig, model, tokenizer, metrics: dict | None = None) -> Path:
    """:func:`save_pretrained_folder` to ``<output_dir>/final`` + a model card (:func:`write_model_card`,
    with ``metrics``); with ``merge_lora``, also the adapter merged into a fresh copy of the base
    weights (``final/merged``)."""
    final = Path(cfg.output_dir) / "final"
    accelerator.wait_for_everyone()
    save_pretrained_folder(accelerator, model, tokenizer, final)
    if accelerator.is_main_process:
        if cfg.use_peft and cfg.merge_lora:
            _merge_adapter(cfg, final)
        write_model_card(final, cfg, metrics)
    accelerator.wait_for_everyone()
    return final


def _merge_adapter(cfg: TrainConfig, adapter_dir: Path) -> None:
    """Reload the base (non-quantised, on CPU), load the saved adapter, merge, save to ``merged/``.
    Works the same after single-GPU, FSDP2 or ZeRO-3 runs, and for QLoRA (merged into bf16 weights)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ncakit.scale.config import torch_dtype

    dtype = torch.bfloat16 if cfg.load_in_4bit else torch_dtype(cfg.torch_dtype)
    base = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, revision=cfg.model_revision, dtype=dtype
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(adapter_dir / "merged")


CARD_SETTINGS = (
    "loss", "beta", "loss_kwargs", "average_logps", "reference", "use_peft", "lora_r", "lora_alpha",
    "lora_dropout", "load_in_4bit", "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps",
    "weight_decay", "optim", "max_grad_norm", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "max_prompt_length", "k", "mixed_precision", "torch_dtype", "seed",
)  # fmt: skip


def _yaml_str(value: Any) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML scalar


def model_card_text(cfg: TrainConfig, metrics: dict | None = None) -> str:
    """The README.md of a trained model: YAML front matter (``library_name``, ``base_model``, ``tags``
    ``[ncakit, <loss>]``, ``datasets``), the recipe's settings, the data, the final metrics."""
    settings = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    datasets = [d for d in (settings.get("dataset_name"), settings.get("eval_dataset_name")) if d]
    lines = ["---", f"library_name: {'peft' if settings.get('use_peft') else 'transformers'}"]
    lines.append(f"base_model: {_yaml_str(settings.get('model_name_or_path'))}")
    lines.append("tags:")
    lines += [f"- {_yaml_str(t)}" for t in ("ncakit", settings.get("loss"), "alignment")]
    if datasets:
        lines.append("datasets:")
        lines += [f"- {_yaml_str(d)}" for d in dict.fromkeys(datasets)]
    lines += ["---", "", f"# {Path(settings.get('output_dir') or 'model').name}", ""]
    kind = "A LoRA adapter for" if settings.get("use_peft") else "A fine-tune of"
    lines += [
        f"{kind} `{settings.get('model_name_or_path')}`, trained with ncakit's `{settings.get('loss')}` "
        f"loss (scale track, `scale/train.py`).",
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | `{json.dumps(settings[k], default=str)}` |" for k in CARD_SETTINGS if k in settings]
    lines += ["", "## Data", ""]
    for key in ("dataset_name", "dataset_schema", "dataset_split", "eval_dataset_name", "eval_split",
                "max_train_samples", "max_eval_samples"):  # fmt: skip
        if settings.get(key) is not None:
            lines.append(f"- `{key}`: `{settings[key]}`")
    lines += ["", "## Metrics", ""]
    flat = {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float | str | bool) or v is None}
    if flat:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |" for k, v in flat.items()
        ]
    else:
        lines.append("No evaluation metrics were recorded.")
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, cfg: TrainConfig, metrics: dict | None = None) -> Path:
    """Write :func:`model_card_text` to ``folder/README.md`` atomically (a fsync-ed temporary file
    renamed into place; it replaces peft's generic card). ``metrics=None``: the eval metrics of
    ``<output_dir>/summary.json`` when that file is there."""
    if metrics is None:
        summary = Path(cfg.output_dir) / "summary.json"
        try:
            metrics = json.loads(summary.read_text()).get("eval") or None
        except (OSError, ValueError, AttributeError):
            metrics = None
    folder = Path(folder)
    target = folder / "README.md"
    write_atomic(target, model_card_text(cfg, metrics))
    _fsync_path(folder)  # the rename itself on disk
    return target


def push_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload model trained with ncakit",
) -> str:
    """Upload ``folder`` (``final/``: weights or adapter, tokenizer, model card) to the hub repo
    ``repo_id`` (created if missing) through ``huggingface_hub``. Returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"push_to_hub: {folder} is not a folder")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=getattr(repo, "repo_id", repo_id),
        folder_path=str(folder),
        commit_message=commit_message,
        repo_type="model",
        ignore_patterns=[".*"],
    )
    return str(getattr(info, "commit_url", info))


class StopFlag:
    """Set by SIGTERM / SIGINT / SIGUSR1 while the ``with`` block runs (main thread only); the loop
    reads it once per optimizer step (all processes agree through a max-reduce), saves a checkpoint
    after the step and stops. A second SIGINT interrupts at once."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts for real
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        return False


_LAUNCHER_MODULES = ("accelerate.commands.launch", "torch.distributed.run", "torch.distributed.launch")
PR_SET_PDEATHSIG = 1


def is_launcher(argv: list[str]) -> bool:
    """``accelerate launch ...``, ``torchrun ...`` or ``python -m`` one of their modules."""
    head = [os.path.basename(a) for a in argv[:3]]
    return (
        ("accelerate" in head and "launch" in argv[:4])
        or "torchrun" in head
        or any(a in _LAUNCHER_MODULES for a in argv[:4])
    )


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def follow_launcher() -> bool:
    """If this process was started by ``accelerate launch`` or ``torchrun`` (its parent's command
    line says so; Linux only), ask the kernel for a SIGTERM when that parent dies
    (``prctl(PR_SET_PDEATHSIG)``). ``accelerate launch`` with one process does not forward signals:
    SIGTERM kills it and the trainer ran on; torchrun forwards SIGTERM / SIGINT / SIGHUP / SIGQUIT but
    dies on others (SIGUSR1). With this, any signal that kills the launcher reaches the training
    process as SIGTERM, which checkpoints and exits (:class:`StopFlag`). Returns True when set."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not is_launcher(_cmdline(parent)):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False
    if os.getppid() != parent:  # the launcher died before the request: act on it now
        os.kill(os.getpid(), signal.SIGTERM)
    return True
