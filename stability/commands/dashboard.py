"""`stability dashboard`: serve the Streamlit dashboard on a store folder (127.0.0.1 by default)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dashboard.server import launch
from stability.commands._store_args import add_store_argument

NAME = "dashboard"
HELP = "open the browser dashboard on a run store (live and archived runs, compare, alerts)"
DESCRIPTION = (
    "Serve the dashboard on a store folder. With no --store it opens the built-in sample runs. It binds to "
    "127.0.0.1 unless --host says otherwise, and only reads the store."
)

DEFAULT_PORT = 8501


def add_arguments(parser) -> None:
    add_store_argument(parser, "run store folder (default: the built-in sample runs)", env=False, required=False)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the dashboard to the network)")


def resolve_store(store: str | None) -> Path:
    from stability.errors import UsageError

    if store is None:
        from dashboard.store_path import default_store

        return default_store().resolve()
    p = Path(store).expanduser()
    if not p.exists():
        raise UsageError(f"--store {store}: no such folder")
    if not p.is_dir():
        raise UsageError(f"--store {store}: not a folder")
    return p.resolve()


def run(args) -> int:
    from stability.errors import UsageError

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be between 1 and 65535")
    store = resolve_store(args.store)
    print(f"stability dashboard: serving {store} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    proc = launch(store, args.port, args.host)
    # Whoever stops us stops the server too: never leave it running without its parent.
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
