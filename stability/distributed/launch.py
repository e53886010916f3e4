"""Run a function or a program in N local workers with torch's elastic launcher (what `torchrun --standalone` does).

`stability train --nproc N` starts its workers through `launch` (stability/commands/_nproc.py); so do the
multi-rank benchmark and tests. The launcher stops the surviving workers when one dies, so a lost rank ends the
run instead of hanging it. What each rank computes and writes is in `stability/distributed/data_parallel.py`; the
design at scale in docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid

SHUTDOWN_TIMEOUT = 10
"""Seconds the launcher gives the surviving workers to close their writers after SIGTERM, before SIGKILL."""
class WorkerFailed(RuntimeError):
    """A worker of a launched group exited with an error; `failures` maps rank -> one line saying how."""

    def __init__(self, failures: dict[int, str]):
        self.failures = failures
        super().__init__("; ".join(f"rank {r}: {why}" for r, why in sorted(failures.items())))


def launch(entrypoint, nproc: int, args: tuple = (), *, run_id: str | None = None) -> dict:
    """Run `entrypoint` in `nproc` local workers with torch's elastic launcher (what `torchrun --standalone`
    does): a c10d rendezvous on a free loopback port, no restarts, the group torn down when one worker fails.

    `entrypoint` is a picklable function (called as `entrypoint(*args)` in each worker; returns {rank: result}) or
    a program path (run with `args` as its argv; returns {rank: None}). Raises WorkerFailed if a worker fails.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=run_id or uuid.uuid4().hex[:12],
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
        start_method="spawn", shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    # The elastic agent logs every phase at INFO; the workers' own output is what the user asked for.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    if "OMP_NUM_THREADS" not in os.environ:
        # As torchrun does: N workers sharing the cores, not N x all of them.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        raise WorkerFailed({f.local_rank if f.local_rank >= 0 else r: _describe(f) for r, f in e.failures.items()})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _describe(failure) -> str:
    if failure.exitcode < 0 and failure.signal_name() != "<N/A>":
        return f"killed by {failure.signal_name()}"
    if failure.exitcode == 128 + signal.SIGTERM:
        return "stopped by the launcher (SIGTERM)"
    msg = failure.message if isinstance(failure.message, str) else ""
    lines = [ln for ln in msg.strip().splitlines() if ln.strip() and "to enable traceback" not in ln.lower()]
    return f"exit code {failure.exitcode}" + (f" ({lines[-1].strip()})" if lines else "")
