"""The `--store DIR` option every run-reading or run-writing subcommand shares."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "STABILITY_STORE"


def add_store_argument(parser) -> None:
    default = os.environ.get(ENV)
    parser.add_argument("--store", metavar="DIR", default=default, required=default is None,
                        help=f"run store folder (default: ${ENV})")


def open_store(args, *, write: bool = False):
    """A RunStore for args.store; UsageError if it is missing (read) or not writable (write)."""
    from stability.errors import UsageError
    from stability.store import RunStore, StoreError

    root = Path(args.store)
    if not write and not root.is_dir():
        raise UsageError(f"no run store at {root} (no such folder)")
    store = RunStore(root)
    if write:
        try:
            store.ensure_writable()
        except StoreError as e:
            raise UsageError(str(e)) from None
    return store
