"""Which rank am I, and the process group: joined from the environment torchrun / the launcher sets (`env://`).

Every collective has a timeout (`STABILITY_DIST_TIMEOUT` seconds), so a rank that hangs fails the run instead of
stalling it; `exit_on_sigterm` lets the launcher's SIGTERM close a survivor's writer as failed.
"""

from __future__ import annotations

import atexit
import os
import signal
from datetime import timedelta

TIMEOUT_ENV = "STABILITY_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
"""Seconds a collective may wait for a peer before it fails (a dead rank is usually noticed at once: its sockets
close; the timeout covers a rank that hangs)."""
_WORKER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 outside torch.distributed."""
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return 0


def world_size() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


def is_main() -> bool:
    """True on the rank that writes global values and prints progress (rank 0), and in a single process."""
    return rank() == 0


def in_worker() -> bool:
    """True inside a process started by torchrun / the elastic launcher (its rank is in the environment)."""
    return all(k in os.environ for k in _WORKER_ENV)


def collective_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


# ---- the process group ----------------------------------------------------------------------------------------
def init_from_env(backend: str = "gloo", timeout: float | None = None) -> bool:
    """Join the process group described by the environment (`env://`). True if this process is now one rank of
    several; False in a single process or a world of one (which then trains exactly like a plain run).

    gloo is the backend of the reference trainer (CPU); a CUDA trainer would pass "nccl".
    """
    if is_initialized():
        return True
    if not in_worker() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    import torch.distributed as dist

    dist.init_process_group(backend, init_method="env://",
                            timeout=timedelta(seconds=timeout if timeout is not None else collective_timeout()))
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def exit_on_sigterm() -> None:
    """Turn the launcher's SIGTERM (sent to the survivors when a worker dies) into SystemExit, so the trainer's
    `finally` closes the run's writer as failed. Once only: a second SIGTERM takes the default way out."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
