"""`stability train --nproc N`: start N workers running the same command, or join their group in a worker.

Starting the workers by hand is the same thing:

    torchrun --standalone --nproc-per-node 2 -m stability train --steps 200 --run ddp-demo

The train command passes its own `add_arguments` (to spell its flags back for the workers) and its run-name
default, so this module knows no command.
"""

from __future__ import annotations

import argparse
import sys

from stability.distributed.group import exit_on_sigterm, in_worker, init_from_env, is_main, world_size
from stability.distributed.launch import WorkerFailed, launch
from stability.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train data-parallel in N local processes (torch.distributed, gloo on CPU); "
                             "see docs/distributed.md for torchrun and several machines")


def maybe_launch(args, add_arguments, default_run) -> int | None:
    """The exit code of N launched workers when `--nproc N` > 1 and this process is not a worker; None when the
    caller should train here (a single process, or one rank of a group, which this call then joins).

    Workers run `python -m stability train` with the same flags (rebuilt from `args` by the command's own
    `add_arguments`), `--nproc` dropped and the run name fixed (`default_run()` when none was given), so every
    rank writes the same run and the launcher can mark it failed.
    """
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
        args.run = default_run()
    worker_argv = _argv_for(args, add_arguments)
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


def _argv_for(args, add_arguments) -> list[str]:
    """The command's flags that reproduce `args` (its own parser, built by `add_arguments`, tells how each is
    spelled)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
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
