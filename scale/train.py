"""Train a policy with any ncakit loss: a thin entry point to :func:`ncakit.scale.train.main`.

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \
        --config scale/recipes/tiny-cpu.yaml --output_dir out/scale-demo

`python scale/train.py --help` lists every key; see scale/README.md for the recipes and the launch matrix.
A bad configuration, bad data or a full disk stops with one line; `--debug true` (or the environment
variable NCAKIT_DEBUG=1) shows the full traceback instead.
"""

import errno
import sys

from ncakit.scale.cli import debug_requested
from ncakit.scale.data.load import disk_error
from ncakit.scale.train import main


def wait_for_the_others(seconds: float = 60.0) -> None:
    """In a multi-process CPU (gloo) launch, wait up to ``seconds`` for the other processes to reach
    this point too: an error raised on every process (e.g. the output folder's lock, broadcast by the
    main process) is then printed by every process before the first exit makes the launcher
    terminate the rest. A process that never comes (its own, other error) only costs the timeout,
    after its error is printed. 60 s, not less: with 10 s, one CI run on a loaded 2-core machine lost
    the second process's line (a 15 s lag injected on rank 1 reproduces it: the launcher SIGTERMs it)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
            from datetime import timedelta

            dist.monitored_barrier(timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    except Exception:  # noqa: BLE001 - exiting with the error already printed is what matters
        pass


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, OSError) as err:  # configuration, data and disk errors: one line
        if debug_requested() or (isinstance(err, OSError) and err.errno != errno.ENOSPC):
            raise  # --debug true / NCAKIT_DEBUG=1 show the traceback; other OS errors keep theirs
        message = str(err)
        if isinstance(err, OSError):  # the data package's wording of a full disk
            message = str(disk_error(err, err.filename)) if err.filename else "no space left on device"
        print(f"scale/train.py: error: {message}", file=sys.stderr, flush=True)
        wait_for_the_others()
        sys.exit(2)
