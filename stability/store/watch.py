"""React to new data: a watchdog observer that calls back with the name of the run that changed."""

from __future__ import annotations

import os

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from stability.store import layout

_INTERESTING = (".parquet", layout.RUN_JSON, layout.RUN_DUCKDB)


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, callback):
        self.root = root
        self.callback = callback

    def on_any_event(self, event):
        # Segments and run.json are published by rename: the final name is the move's destination.
        path = getattr(event, "dest_path", "") or event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path.endswith(_INTERESTING):
            return
        rel = os.path.relpath(path, self.root)
        run = rel.split(os.sep, 1)[0]
        if run.startswith(".") or run == "..":
            return
        try:
            self.callback(run)
        except Exception:  # a failing callback must not kill the observer thread
            pass


def watch(store, callback, run: str | None = None) -> Observer:
    root = os.fspath(store.root)
    target = root if run is None else os.fspath(store._run_dir(run))
    obs = Observer()
    obs.schedule(_Handler(root, callback), target, recursive=True)
    obs.daemon = True
    obs.start()
    return obs
