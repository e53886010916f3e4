"""RunStore: a folder of runs, written by one writer per run and read by any process at any time.

It is three parts, one file each: admin.py (create, import, compact, mark failed, delete), listing.py (run
names and metadata, cached by mtime and seeded from the store's index file) and reads.py (series, events and
checkpoints of a finished, running or crashed run).
"""

from __future__ import annotations

from pathlib import Path

from stability.store import layout
from stability.store.admin import RunAdmin
from stability.store.layout import StoreError
from stability.store.listing import RunListing
from stability.store.query import RunReader
from stability.store.reads import RunReads
from stability.store.writer import WriterConfig


class RunStore(RunAdmin, RunListing, RunReads):
    """A folder of runs. Cheap to create; safe to share between threads of one process."""

    def __init__(self, root, writer_config: WriterConfig | None = None, read_only: bool = False):
        self.root = Path(root)
        self.writer_config = writer_config
        self.read_only = read_only  # never writes anything, not even the listing index
        self._reader = RunReader()
        RunListing.__init__(self)
        self._writable = False  # ensure_writable() passed once

    @property
    def problems(self) -> list[str]:
        """Damaged segments skipped so far, one line each."""
        return self._reader.problems

    def close(self) -> None:
        """Release the DuckDB connection (reopened by the next query if there is one)."""
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"RunStore({str(self.root)!r})"

    def _run_dir(self, run: str) -> Path:
        layout.check_run_name(run)
        rd = self.root / run
        if not rd.is_dir():
            raise StoreError(f"no run {run!r} in {self.root}")
        return rd
