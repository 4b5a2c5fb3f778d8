"""One run per output folder: a lock file, and the check that a fresh run does not land on another run.

- :class:`RunLock` -- ``<output_dir>/run.lock``, JSON ``{pid, host, started, pid_start, argv}``
  created atomically (written to a temporary file, then hard-linked into place, which fails if the
  lock exists). A second writer fails at once naming the holder; the lock of a dead process on this
  host (or a reused pid: another process start time) is taken over with a warning; released on exit,
  exceptions included. Only the main process of a launch creates it (see ``ncakit.scale.train``).
- :func:`claim_output_dir` -- both, on the main process of a launch, before any model is loaded;
  the outcome is broadcast so that every process fails alike.
- :func:`check_output_dir` -- a fresh run (no ``resume_from``) into a folder holding another run's
  files stops with one line naming the choices; with ``overwrite_output_dir`` those files are deleted
  (the caches, ``tinylm-kit`` and ``ref_cache``, are kept: their keys describe their content).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "RunLock",
    "LockHeld",
    "check_output_dir",
    "run_files",
    "claim_output_dir",
]

logger = logging.getLogger("ncakit.scale.runlock")
LOCK_FILE = "run.lock"
# What a run writes into its output folder (the caches next to them are not listed).
# Checkpoints are the checkpoint-N folders (and a save's hidden .checkpoint-N.tmp / .old).
RUN_FILES = ("metrics.jsonl", "run.json", "summary.json", "final", "logs")


class LockHeld(ValueError):
    """The output folder is locked by another live run."""


def _pid_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """The lock of one output folder (see the module docstring). ``acquire`` / ``release``, or ``with``."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self.owned = False
        self.record: dict | None = None

    def _new_record(self) -> dict:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid_start": _pid_start(pid),
            "argv": sys.argv,
        }

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as held by an unknown writer

    def _stale(self, holder: dict) -> bool:
        """True when the holder is certainly dead: same host, and no process with its pid and start time."""
        if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        pid = holder["pid"]
        if not _alive(pid):
            return True
        start = holder.get("pid_start")
        return start is not None and _pid_start(pid) not in (None, start)

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = self._new_record()
        tmp = self.path.with_name(f".{LOCK_FILE}.{record['pid']}.tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            for _attempt in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if the lock exists
                    self.owned, self.record = True, record
                    return self
                except FileExistsError:
                    holder = self.read()
                    if holder is None:
                        continue  # released meanwhile
                    if holder.get("pid") == record["pid"] and holder.get("host") == record["host"]:
                        raise LockHeld(
                            f"output_dir: {self.path.parent} is already locked by this process "
                            f"(two runs in one process into the same folder)"
                        ) from None
                    if not self._stale(holder):
                        who = (
                            f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                            if holder
                            else "an unreadable lock"
                        )
                        raise LockHeld(
                            f"output_dir: {self.path.parent} is in use by another run ({who}; lock file "
                            f"{self.path}); wait for it, pick another --output_dir, or delete the lock file "
                            f"if that run is dead"
                        ) from None
                    logger.warning(
                        "output_dir: taking over the stale lock %s of pid %s on %s (started %s, no longer running)",
                        self.path,
                        holder.get("pid"),
                        holder.get("host"),
                        holder.get("started"),
                    )
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
            raise LockHeld(f"output_dir: could not take the lock {self.path} (contended)")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def release(self) -> None:
        """Remove the lock file if this object holds it (and it still names this process)."""
        if not self.owned:
            return
        self.owned = False
        holder = self.read()
        if holder and holder.get("pid") == os.getpid() and holder.get("started") == self.record["started"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def run_files(output_dir: Path) -> list[str]:
    """The names of another run's files in ``output_dir`` (empty folders / ``metrics`` don't count)."""
    from ncakit.scale.checkpoint import CHECKPOINT_PREFIX

    checkpoints = sorted(
        p.name
        for pattern in (f"{CHECKPOINT_PREFIX}-*", f".{CHECKPOINT_PREFIX}-*")
        for p in output_dir.glob(pattern)
        if p.is_dir()
    )
    found = []
    for name in (*checkpoints, *RUN_FILES):
        p = output_dir / name
        if p.is_dir() and any(p.iterdir()):
            found.append(name)
        elif p.is_file() and p.stat().st_size > 0:
            found.append(name)
    return found


def check_output_dir(output_dir: str | os.PathLike, *, resuming: bool, overwrite: bool) -> None:
    """A fresh run into a folder with another run's files: ValueError naming the choices, or, with
    ``overwrite``, delete those files (call it while holding the lock)."""
    out = Path(output_dir)
    if resuming or not out.is_dir():
        return
    found = run_files(out)
    if not found:
        return
    if not overwrite:
        raise ValueError(
            f"output_dir: {out} holds another run ({', '.join(found)}); continue it with --resume_from latest, "
            f"or start over with --overwrite_output_dir true (deletes its checkpoints, metrics and final model)"
        )
    logger.warning("overwrite_output_dir: deleting the previous run's %s in %s", ", ".join(found), out)
    for name in found:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def claim_output_dir(cfg, accelerator) -> RunLock:
    """Before any model is loaded: the main process takes ``<output_dir>/run.lock``, completes an
    interrupted checkpoint save
    (:func:`ncakit.scale.checkpoint.recover_checkpoints`), and refuses a fresh run into another run's folder (or clears it with
    ``overwrite_output_dir``); every process then resolves and verifies the checkpoint to resume.
    Any failure is raised on every process (the main process's message is broadcast)."""
    from ncakit.scale.checkpoint import recover_checkpoints

    lock = RunLock(cfg.output_dir)
    error = None
    if accelerator.is_main_process:
        try:
            lock.acquire()
            recover_checkpoints(Path(cfg.output_dir))
            check_output_dir(
                cfg.output_dir, resuming=cfg.resume_from is not None, overwrite=cfg.overwrite_output_dir
            )
        except (ValueError, OSError) as err:  # OSError: e.g. a read-only or full output folder
            lock.release()
            error = str(err) if isinstance(err, ValueError) else f"output_dir: {cfg.output_dir}: {err}"
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error is not None:
        raise ValueError(error)
    return lock
