"""Launch checks: mistakes in how a run was launched that accelerate lets pass silently, caught when
the Accelerator exists and before any data is loaded (:func:`check_launch`, called by
:func:`ncakit.scale.train.make_accelerator`)."""

from __future__ import annotations

import os
from pathlib import Path

from ncakit.scale.config import TrainConfig

__all__ = ["check_launch", "requested_num_processes"]

#: accelerate launch sets these when its config asks for FSDP / DeepSpeed; accelerate itself falls
#: back to a plain run without a word where they cannot apply (e.g. FSDP on CPU).
_REQUESTED_BACKENDS = (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED"))


def requested_num_processes(launcher_argv: list[str]) -> tuple[int, str] | None:
    """``(processes, where)`` an ``accelerate launch`` command line asks for (``--num_processes``, else
    its ``--config_file``'s ``num_processes``), read with accelerate's own parser; None for any other
    parent (torchrun, a shell) or when it cannot be read, so the check never guesses."""
    head = launcher_argv[:4]
    if "accelerate.commands.launch" in head:  # python -m accelerate.commands.launch ...
        start = head.index("accelerate.commands.launch") + 1
    elif "launch" in head[1:] and "accelerate" in head[head.index("launch") - 1]:  # accelerate launch ...
        start = head.index("launch") + 1
    else:
        return None
    try:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        args = launch_command_parser().parse_args(launcher_argv[start:])
        if args.num_processes is not None:
            return int(args.num_processes), f"--num_processes {args.num_processes}"
        n = load_config_from_file(args.config_file).num_processes if args.config_file else None
    except (SystemExit, Exception):  # argparse exits on what it cannot parse: no check rather than a guess
        return None
    return (int(n), f"num_processes: {n} in {args.config_file}") if n else None


def _parent_argv() -> list[str]:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def check_launch(cfg: TrainConfig, accelerator, launcher_argv: list[str] | None = None) -> None:
    """Launch mistakes that would otherwise pass silently, caught before any data is loaded: fewer or
    more processes running than the ``accelerate launch`` command asked for (e.g. ``--num_processes 2``
    with a one-process config), a sharding backend the launch config asked for but that is not
    active, and QLoRA off CUDA. ``launcher_argv``: the parent's command line (read from /proc)."""
    asked = requested_num_processes(_parent_argv() if launcher_argv is None else launcher_argv)
    if asked is not None and asked[0] != accelerator.num_processes:
        raise ValueError(
            f"accelerate launch: {asked[0]} processes were asked for ({asked[1]}) but {accelerator.num_processes} "
            f"is running ({accelerator.distributed_type.value}); the config's distributed_type decides: on CPU "
            "use ACCELERATE_USE_CPU=true accelerate launch --config_file scale/accelerate/ddp.yaml --num_processes N"
        )
    running = accelerator.distributed_type.value
    for var, backend in _REQUESTED_BACKENDS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes") and running != backend:
            raise ValueError(
                f"accelerate config: {backend} was requested ({var}=true) but this run is {running} with "
                f"{accelerator.num_processes} process(es) on {accelerator.device.type}; accelerate drops "
                f"{backend} where it cannot apply (on CPU use scale/accelerate/ddp.yaml with ACCELERATE_USE_CPU=true)"
            )
    if cfg.load_in_4bit and accelerator.device.type != "cuda":
        raise ValueError(
            f"load_in_4bit: QLoRA loads 4-bit weights with bitsandbytes, which needs a CUDA GPU; this run is on "
            f"{accelerator.device.type} (use --load_in_4bit false for LoRA in full precision, or run on a GPU)"
        )
