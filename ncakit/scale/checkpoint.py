"""Checkpoints of a ``scale/train.py`` run: save, find, resume, the final model, and stopping on a signal.

- :func:`save_checkpoint` -- ``accelerator.save_state`` (model, optimizer, RNG, the registered
  scheduler) + ``trainer_state.json`` (:class:`TrainState`: step, epoch, batches consumed) under
  ``<output_dir>/checkpoints/step_NNNNNN``; periodic saves keep the newest ``save_total_limit``.
- :func:`resolve_resume` / :func:`load_checkpoint` -- ``--resume_from latest`` or a folder: restore
  the accelerator state and the :class:`TrainState` (the loop then skips the consumed batches with
  ``accelerator.skip_first_batches``).
- :func:`save_final` -- the model (or the LoRA adapter) + tokenizer to ``<output_dir>/final``, and
  with ``merge_lora`` the adapter merged into the base weights (``final/merged``).
- :class:`StopFlag` -- SIGTERM / SIGINT set a flag; the loop finishes the optimizer step, saves a
  checkpoint and stops.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ncakit.scale.config import TrainConfig

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "TrainState",
    "list_checkpoints",
    "resolve_resume",
    "load_checkpoint",
    "save_checkpoint",
    "save_final",
    "StopFlag",
]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where the loop is. ``batches_in_epoch`` counts this process's micro-batches of the current
    epoch (the number to skip on resume)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    max_steps: int = 0
    num_tokens: int = 0


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints under ``<output_dir>/checkpoints``, oldest first."""
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint folder ``cfg.resume_from`` names (``"latest"``: the newest one), or None."""
    if cfg.resume_from is None:
        return None
    if cfg.resume_from == "latest":
        found = list_checkpoints(Path(cfg.output_dir))
        if not found:
            raise ValueError(
                f"resume_from: 'latest' but no checkpoint under {Path(cfg.output_dir) / CHECKPOINT_DIR}"
            )
        return found[-1]
    path = Path(cfg.resume_from)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"resume_from: {path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator, path: Path, state: TrainState) -> None:
    """Restore the accelerator state (model, optimizer, RNG, scheduler) and ``state`` from ``path``."""
    accelerator.load_state(str(path))
    saved = json.loads((path / STATE_FILE).read_text())
    for key in ("global_step", "epoch", "batches_in_epoch", "num_tokens"):
        setattr(state, key, int(saved.get(key, 0)))
    accelerator.print(f"resumed from {path} at step {state.global_step}")


def save_checkpoint(accelerator, cfg: TrainConfig, state: TrainState, *, reason: str) -> Path:
    """Save the run at ``state.global_step`` (all processes call it); ``reason`` is recorded, and
    only ``"periodic"`` saves prune old checkpoints beyond ``cfg.save_total_limit``."""
    path = Path(cfg.output_dir) / CHECKPOINT_DIR / f"step_{state.global_step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        payload = {**state.__dict__, "reason": reason, "time": time.time()}
        (path / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        if cfg.save_total_limit is not None and reason == "periodic":
            old = [p for p in list_checkpoints(Path(cfg.output_dir)) if p != path]
            for p in old[: max(0, len(old) - (cfg.save_total_limit - 1))]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def save_final(accelerator, cfg: TrainConfig, model, tokenizer) -> Path:
    """``save_pretrained`` the model (full) or the adapter (LoRA) + tokenizer to ``<output_dir>/final``;
    with ``merge_lora``, also the adapter merged into a fresh copy of the base weights (``final/merged``)."""
    final = Path(cfg.output_dir) / "final"
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        final,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(final)
        if cfg.use_peft and cfg.merge_lora:
            _merge_adapter(cfg, final)
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


class StopFlag:
    """Set by SIGTERM/SIGINT while the ``with`` block runs (main thread only); the loop checks it
    after each optimizer step (all processes agree through a max-reduce), saves a checkpoint and
    stops. A second SIGINT interrupts at once."""

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
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
        return False
