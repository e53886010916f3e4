"""The `--store DIR` option of every subcommand that reads or writes runs, and opening the store it names."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "STABILITY_STORE"


def add_store_argument(parser, help: str = f"run store folder (default: ${ENV})", *, default: str | None = None,
                       env: bool = True, required: bool | None = None) -> None:
    """`--store DIR`: $STABILITY_STORE when set and `env`, else `default`; required when neither gives a folder,
    unless `required` says otherwise (an optional store: the command does without one)."""
    value = os.environ.get(ENV, default) if env else default
    required = value is None if required is None else required
    parser.add_argument("--store", metavar="DIR", default=value, required=required, help=help)


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
