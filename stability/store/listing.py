"""Listing runs: run names, each run's run.json (cached by mtime and size), and the store's index file that seeds
that cache, so a new process lists 1,000 runs quickly. Reads only run.json files. Part of `RunStore` (store.py).
"""

from __future__ import annotations

import os

import pandas as pd

from stability.store import layout, meta
from stability.store.layout import StoreError

_INDEX = ".runs-index.json"  # cache of every run.json, so a new process lists 1,000 runs quickly
_INDEX_MIN_MISSES = 32  # rewrite the index when a listing had to read at least this many run.json files

RUN_COLUMNS = ["run", "status", "started", "ended", "last_step", "last_write", "ln", "precision", "config",
               "host", "git", "stale", "rows"]


class RunListing:
    """The listing side of `RunStore`: keeps `_meta_cache` ({run: (mtime_ns, size, run.json)}), `_index_loaded`
    and `_misses`; uses `root`, `read_only` and `_run_dir()`."""

    def __init__(self):
        self._meta_cache: dict[str, tuple[int, int, dict]] = {}
        self._index_loaded = False
        self._misses = 0

    def forget(self, run: str) -> None:
        """Drop `run`'s cached run.json (after this process replaced or deleted the run)."""
        self._meta_cache.pop(run, None)

    def run_names(self) -> list[str]:
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
        except FileNotFoundError:
            return []

    def run_folders(self) -> list[str]:
        """Names of the folders that hold a run, also those whose run.json is missing or unreadable (a run being
        created, or a damaged one): the folders `run_names` lists that have any of a run's files."""
        return [n for n in self.run_names()
                if any((self.root / n / f).exists() for f in (layout.RUN_JSON, layout.SEGMENTS, layout.RUN_DUCKDB))]

    def has_run(self, run: str) -> bool:
        try:
            layout.check_run_name(run)
        except StoreError:
            return False
        return (self.root / run / layout.RUN_JSON).exists()

    def run_info(self, run: str) -> dict:
        """run.json of `run` plus `run`, effective `status` and `stale`."""
        m = self._meta(run, self._run_dir(run) / layout.RUN_JSON)
        if m is None:
            raise StoreError(f"run {run!r} has no run.json in {self.root}")
        return self._row(run, m)

    def last_write(self, run: str) -> float | None:
        return self.run_info(run)["last_write"]

    def runs(self) -> list[dict]:
        """list_runs() as plain dicts (JSON-ready), newest first."""
        if not self._index_loaded:
            self._load_index()
        rows = []
        root = os.fspath(self.root)
        misses = self._misses
        for name in self.run_names():
            m = self._meta(name, os.path.join(root, name, layout.RUN_JSON))
            if m is not None:
                rows.append(self._row(name, m))
        if self._misses - misses >= _INDEX_MIN_MISSES:
            self._save_index()
        rows.sort(key=lambda r: r["run"])
        rows.sort(key=lambda r: -(r["started"] or 0.0))
        return rows

    def list_runs(self, with_counts: bool = True) -> pd.DataFrame:
        """One row per run, newest first: run, status, started, ended, last_step, last_write, ln, precision,
        config, host, git, stale, rows. Times are unix seconds. Reads only run.json files (cached by mtime)."""
        df = pd.DataFrame(self.runs(), columns=RUN_COLUMNS)
        df["last_step"] = df["last_step"].astype("Int64")  # a run with no rows yet has no last step
        for col in ("started", "ended", "last_write"):
            df[col] = df[col].astype("float64")  # unix seconds; NaN where not yet known
        return df if with_counts else df.drop(columns=["rows"])

    def _load_index(self) -> None:
        """Seed the run.json cache from the store's index file (each entry is still checked by mtime/size)."""
        self._index_loaded = True
        try:
            idx = layout.read_json(self.root / _INDEX)
            for name, (mtime_ns, size, m) in idx.items():
                self._meta_cache.setdefault(name, (int(mtime_ns), int(size), m))
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # no index yet, or a damaged one: run.json files are the truth

    def _save_index(self) -> None:
        """Best effort: a read-only store simply has no index and lists a little slower."""
        if self.read_only:
            return
        try:
            names = set(self.run_names())
            layout.write_json_atomic(self.root / _INDEX, {n: list(v) for n, v in self._meta_cache.items()
                                                          if n in names})
        except OSError:
            pass

    def _meta(self, name: str, path) -> dict | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        hit = self._meta_cache.get(name)
        if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
            return hit[2]
        self._misses += 1
        try:
            m = layout.read_json(path)
        except (OSError, ValueError):
            return hit[2] if hit else None
        self._meta_cache[name] = (st.st_mtime_ns, st.st_size, m)
        return m

    @staticmethod
    def _row(name: str, m: dict) -> dict:
        status, stale = meta.effective_status(m)
        rows = sum(int(w.get("rows", 0) or 0) for w in (m.get("writers") or {}).values())
        return {"run": name, "status": status, "started": m.get("started"), "ended": m.get("ended"),
                "last_step": m.get("last_step"), "last_write": m.get("last_write"), "ln": m.get("ln"),
                "precision": m.get("precision"), "config": m.get("config") or {}, "host": m.get("host"),
                "git": m.get("git"), "stale": stale, "rows": rows}

    def _may_have_events(self, run: str) -> bool:
        """False when run.json says no writer of the run ever wrote an event (saves opening the run)."""
        m = self._meta(run, self.root / run / layout.RUN_JSON)
        if m is None:
            return False
        writers = (m.get("writers") or {}).values()
        return not writers or any(w.get("events", 1) for w in writers)
