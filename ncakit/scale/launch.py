"""The launch: the run's ``Accelerator`` (:func:`make_accelerator`), the mistakes in how a run was
launched that accelerate lets pass silently, caught when the Accelerator exists and before any data
is loaded (:func:`check_launch`), and the shims accelerate needs to run FSDP2 / ZeRO-3 on CPU
(:func:`sharded_on_cpu`) or to build a model outside ZeRO-3's ``zero.Init`` (:func:`outside_zero_init`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from ncakit.scale.config import TrainConfig
from ncakit.scale.tracking import LOGGING_DIR, make_trackers

__all__ = [
    "make_accelerator",
    "check_launch",
    "requested_num_processes",
    "sharded_on_cpu",
    "outside_zero_init",
    "SHARDED_ON_CPU_ENV",
]

#: ``NCAKIT_SHARDED_ON_CPU=true``: run an FSDP or DeepSpeed launch config on CPU over gloo (:func:`sharded_on_cpu`).
SHARDED_ON_CPU_ENV = "NCAKIT_SHARDED_ON_CPU"

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


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def sharded_on_cpu() -> bool:
    """The shims accelerate needs to run FSDP2 or DeepSpeed ZeRO-3 on CPU processes over gloo (for
    the tests, and to try a sharded launch on a laptop), with ``NCAKIT_SHARDED_ON_CPU=true`` and an
    FSDP or DeepSpeed launch config. Everything after them is accelerate's own code path.

    - FSDP: ``AcceleratorState`` turns FSDP on only for GPU-type backends (accelerate 1.15,
      ``state.py``) and otherwise drops it without a word; the process state is made over gloo on
      CPU (``PartialState(cpu=True)``, what ``ACCELERATE_USE_CPU`` does) and marked GPU-type.
      torch's ``fully_shard`` itself runs on CPU over gloo.
    - DeepSpeed: accelerate picks no backend on a machine without a GPU (so one process of a world
      of 2, and ``deepspeed.initialize`` fails its batch-size check); the process state is made with
      ``backend="gloo"``. DeepSpeed's torch comm backend JIT-compiles a shared-memory op with g++ at
      every start; it is skipped (gloo carries the collectives; the losses are the same with and without).

    Call before the ``Accelerator`` is built; returns whether a shim applied::

        NCAKIT_SHARDED_ON_CPU=true accelerate launch --config_file scale/accelerate/fsdp2.yaml \\
            --num_processes 2 --mixed_precision no scale/train.py --config scale/recipes/tiny-cpu.yaml ...
    """
    if not _flag(SHARDED_ON_CPU_ENV):
        return False
    fsdp, deepspeed = _flag("ACCELERATE_USE_FSDP"), _flag("ACCELERATE_USE_DEEPSPEED")
    if not (fsdp or deepspeed):
        raise ValueError(
            f"{SHARDED_ON_CPU_ENV}: set, but this launch asks for neither FSDP nor DeepSpeed; launch with "
            "--config_file scale/accelerate/fsdp2.yaml or zero3.yaml, or unset it"
        )
    if torch.cuda.is_available():
        raise ValueError(
            f"{SHARDED_ON_CPU_ENV}: set on a machine with CUDA; it is for CPU-only machines: unset it"
        )
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if deepspeed:
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        PartialState(backend="gloo")
        return True
    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # read by AcceleratorState: FSDP applies
    return True


def check_launch(cfg: TrainConfig, accelerator, launcher_argv: list[str] | None = None) -> None:
    """Launch mistakes that would otherwise pass silently, caught before any data is loaded: fewer or
    more processes running than the ``accelerate launch`` command asked for (e.g. ``--num_processes 2``
    with a one-process config), processes a launcher started that accelerate runs as independent
    one-process runs (``WORLD_SIZE``: ``--multi_gpu`` on CPU, torchrun without
    ``ACCELERATE_USE_CPU``), a sharding backend the launch config asked for but that is not
    active, and QLoRA off CUDA. ``launcher_argv``: the parent's command line (read from /proc)."""
    asked = requested_num_processes(_parent_argv() if launcher_argv is None else launcher_argv)
    if asked is not None and asked[0] != accelerator.num_processes:
        raise ValueError(
            f"accelerate launch: {asked[0]} processes were asked for ({asked[1]}) but {accelerator.num_processes} "
            f"is running ({accelerator.distributed_type.value}); the config's distributed_type decides: on CPU "
            "use ACCELERATE_USE_CPU=true accelerate launch --config_file scale/accelerate/ddp.yaml --num_processes N"
        )
    world = os.environ.get("WORLD_SIZE", "").strip()
    if world.isdigit() and int(world) != accelerator.num_processes:
        raise ValueError(
            f"WORLD_SIZE: the launcher started {world} processes but accelerate runs each as a "
            f"{accelerator.num_processes}-process {accelerator.distributed_type.value} run on {accelerator.device.type}: "
            "they would be independent runs writing the same output_dir; on CPU use "
            "ACCELERATE_USE_CPU=true accelerate launch --config_file scale/accelerate/ddp.yaml --num_processes N"
        )
    running = accelerator.distributed_type.value
    for var, backend in _REQUESTED_BACKENDS:
        if _flag(var) and running != backend:
            raise ValueError(
                f"accelerate config: {backend} was requested ({var}=true) but this run is {running} with "
                f"{accelerator.num_processes} process(es) on {accelerator.device.type}; accelerate drops "
                f"{backend} where it cannot apply (on CPU use scale/accelerate/ddp.yaml with ACCELERATE_USE_CPU=true)"
            )
    if cfg.load_in_8bit and accelerator.device.type != "cuda":
        raise ValueError(
            f"load_in_8bit: 8-bit weights load with bitsandbytes, which needs a CUDA GPU; this run is on "
            f"{accelerator.device.type} (use --load_in_8bit false, or run on a GPU)"
        )
    if cfg.load_in_4bit and accelerator.device.type != "cuda":
        raise ValueError(
            f"load_in_4bit: QLoRA loads 4-bit weights with bitsandbytes, which needs a CUDA GPU; this run is on "
            f"{accelerator.device.type} (use --load_in_4bit false for LoRA in full precision, or run on a GPU)"
        )


def make_accelerator(cfg: TrainConfig):
    """The run's ``Accelerator`` (trackers, seedable sampler, mixed precision), launch-checked before any
    data is loaded; CPU runs use ``cfg.cpu_threads`` threads (1 by default)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    # metrics.jsonl, then every report_to tracker (HF Trainer tags: train/loss, eval/loss)
    log_with: list[Any] = make_trackers(cfg)
    kwargs = {}
    if cfg.mixed_precision is not None:
        kwargs["mixed_precision"] = cfg.mixed_precision
    sharded_on_cpu()  # NCAKIT_SHARDED_ON_CPU=true only: FSDP2 / ZeRO-3 over gloo on CPU
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / LOGGING_DIR)
        ),
        # the shuffling order depends on (data seed, epoch) alone: identical on every process and on resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.data_order_seed),
        **kwargs,
    )
    check_launch(cfg, accelerator)  # before any data is loaded
    if accelerator.device.type == "cpu":
        # 2 threads on these tiny tensors are far slower than 1 on a shared 2-core machine
        torch.set_num_threads(cfg.cpu_threads or 1)
    elif cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    return accelerator


@contextlib.contextmanager
def outside_zero_init(accelerator):
    """Models created here are not partitioned by DeepSpeed's ``zero.Init``: the tiny kit is built by
    the main process alone, and under ZeRO-3 each parameter's creation would be a collective that the
    other processes (waiting in ``main_process_first``) never join. transformers decides by the
    global ``HfDeepSpeedConfig`` (accelerate's ``zero3_init_context_manager(enable=False)`` keeps it
    at stage 3 in accelerate 1.15), so it is unset here and accelerate's restored on exit."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
