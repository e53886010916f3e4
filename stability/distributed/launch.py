"""Multi-rank runs on torch.distributed: the launcher, the process group, and which rank is which.

`stability train --nproc N` starts N workers running the same `stability train` command through torch's elastic
launcher (the engine behind `torchrun`). Each worker finds RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its
environment and joins the process group from there (`env://`). Starting the workers by hand is the same thing:

    torchrun --standalone --nproc-per-node 2 -m stability train --steps 200 --run ddp-demo

Every collective has a timeout (`STABILITY_DIST_TIMEOUT` seconds), and the launcher stops the surviving workers
when one dies and marks the run failed in the store, so a lost rank ends the run instead of hanging it.
What each rank computes and writes is in `stability/distributed/data_parallel.py`; the design at scale in
docs/distributed.md.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import uuid
from datetime import timedelta

TIMEOUT_ENV = "STABILITY_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
"""Seconds a collective may wait for a peer before it fails (a dead rank is usually noticed at once: its sockets
close; the timeout covers a rank that hangs)."""
SHUTDOWN_TIMEOUT = 10
"""Seconds the launcher gives the surviving workers to close their writers after SIGTERM, before SIGKILL."""
_WORKER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class WorkerFailed(RuntimeError):
    """A worker of a launched group exited with an error; `failures` maps rank -> one line saying how."""

    def __init__(self, failures: dict[int, str]):
        self.failures = failures
        super().__init__("; ".join(f"rank {r}: {why}" for r, why in sorted(failures.items())))


# ---- who am I -----------------------------------------------------------------------------------------------
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


# ---- launching ------------------------------------------------------------------------------------------------
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


# ---- `stability train --nproc N` -----------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train data-parallel in N local processes (torch.distributed, gloo on CPU); "
                             "see docs/distributed.md for torchrun and several machines")


def maybe_launch(args, argv: list[str] | None = None) -> int | None:
    """The exit code of N launched workers when `--nproc N` > 1 and this process is not a worker; None when the
    caller should train here (a single process, or one rank of a group, which this call then joins).

    Workers run `python -m stability train` with the same flags (`argv`, or rebuilt from `args`), `--nproc`
    dropped and the run name fixed, so every rank writes the same run and the launcher can mark it failed.
    """
    from stability.errors import UsageError

    nproc = getattr(args, "nproc", None)
    nproc = 1 if nproc is None else nproc
    if in_worker():
        if init_from_env():
            exit_on_sigterm()
            _check_batch(args.batch_size, world_size(), "the number of ranks")
            if not is_main():
                args.quiet = True  # progress and the banner come from rank 0
        return None
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return None
    _check_batch(args.batch_size, nproc, "--nproc")
    if getattr(args, "run", None) is None:
        from stability.commands.train import config_from_args
        from stability.reference.session import default_run_name

        args.run = default_run_name(config_from_args(args))
    worker_argv = _without_nproc(argv) if argv is not None else _argv_for(args)
    if argv is not None and "--run" not in worker_argv:
        worker_argv += ["--run", args.run]
    store = getattr(args, "store", None)
    if not getattr(args, "quiet", False):
        print(f"run {args.run}: {nproc} ranks (torch.distributed, gloo)", file=sys.stderr)
    try:
        launch(sys.executable, nproc, ("-m", "stability", "train", *worker_argv))
    except WorkerFailed as e:
        print(f"stability train: {e}", file=sys.stderr)
        if store is not None:
            mark_run_failed(store, args.run)
        return 1
    return 0


def _check_batch(batch_size: int, ranks: int, what: str) -> None:
    from stability.errors import UsageError

    if batch_size % ranks:
        raise UsageError(f"--batch-size {batch_size} must be divisible by {what} {ranks} "
                         "(each rank trains on an equal share of the global batch)")


def mark_run_failed(store_dir, run: str) -> bool:
    """Record a run whose workers failed as failed, compacting what they wrote. True if it changed anything."""
    from stability import metrics as M
    from stability.store import RunStore

    store = RunStore(store_dir)
    if not store.has_run(run):
        return False
    if store.mark_failed(run):  # a writer died without closing: compact and record
        return True
    if store.run_info(run)["status"] == M.ST_RUNNING:
        store.set_status(run, M.ST_FAILED)
        return True
    return False


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    if out and out[0] == "train":
        out = out[1:]
    return out


def _argv_for(args) -> list[str]:
    """The `stability train` flags that reproduce `args` (the command's own parser tells how each is spelled)."""
    from stability.commands import train as train_command

    parser = argparse.ArgumentParser(add_help=False)
    train_command.add_arguments(parser)
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("nproc", "help") or not hasattr(args, action.dest):
            continue
        value, flag = getattr(args, action.dest), action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            out += [flag] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            out += [] if value else [flag]
        elif isinstance(action, argparse._AppendAction):
            for v in value or ():
                out += [flag, str(v)]
        elif value is not None:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out
