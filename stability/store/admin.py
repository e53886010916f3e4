"""Run admin: create a run to write (or resume one), import a whole run at once, check that the store can be
written, compact, mark failed, set a status, delete. Part of `RunStore` (store.py)."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from stability import metrics as M
from stability.store import layout, meta
from stability.store.compact import compact_run
from stability.store.layout import StoreError
from stability.store.lineage import rewinds_of
from stability.store.writer import RunWriter, WriterConfig


class StoreNotWritable(StoreError):
    """The store folder cannot be created or written; `path` is the folder, `reason` the system's answer."""

    def __init__(self, message: str, path: Path | None = None, reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason


class RunAdmin:
    """The writing side of `RunStore`: uses its `root`, `read_only`, `writer_config`, `_writable`, `_run_dir()`
    and `forget()` (a run's cached metadata, dropped when the run changes under it)."""

    def create_run(self, name: str, config: dict | None = None, *, exist_ok: bool = False, git: str | None = None,
                   writer_config: WriterConfig | None = None, resume_step: int | None = None) -> RunWriter:
        """Start writing run `name`. With exist_ok=True an existing run is resumed (new rows are appended, on the
        run's newest branch); with `resume_step` as well, training restarts from that step (a checkpoint after a
        crash): what the run logged from there on is an abandoned branch, as after a rollback."""
        layout.check_run_name(name)
        self.ensure_writable()
        w = self._open_writer(self.root / name, name, config, exist_ok, git, writer_config)
        if resume_step is not None:
            w.rewind(resume_step)
        return w

    def _open_writer(self, rd: Path, name: str, config, exist_ok: bool, git, writer_config) -> RunWriter:
        token = secrets.token_hex(4)
        try:
            os.mkdir(rd)
            created = True
        except FileExistsError:
            created = False
            if not exist_ok:
                raise StoreError(f"run {name!r} already exists in {self.root}") from None
        (rd / layout.SEGMENTS).mkdir(exist_ok=True)
        if git is None:
            git = meta.git_revision()
        elif git is False:  # imports: no revision of ours applies
            git = None
        now = time.time()

        def init(m):
            if created or not m:
                m.clear()
                m.update(meta.new_meta(name, config, token, git))
                return
            m["status"] = M.ST_RUNNING
            m["ended"] = None
            m["last_write"] = now
            if config is not None:
                m["config"] = dict(config)
                m["ln"] = config.get("ln")
                m["precision"] = config.get("precision")
            m.setdefault("writers", {})[token] = meta.writer_entry(now)
        m = meta.update(rd, init)
        # A resumed run goes on from its newest branch: rows numbered from 0 again would read as abandoned.
        branch = max((b for b, _ in rewinds_of(m)), default=0)
        return RunWriter(rd, name, token, writer_config or self.writer_config, branch=branch)

    def import_table(self, name: str, table, config: dict | None = None, *, replace: bool = False,
                     events=None) -> int:
        """Write a whole run from a metrics table (step, metric, layer, value, rank) in one go. The run is built
        in a hidden folder and renamed into place, so a reader sees all of it or none. Returns rows written."""
        layout.check_run_name(name)
        self.ensure_writable()
        final = self.root / name
        if final.exists() and not replace:
            raise StoreError(f"run {name!r} already exists in {self.root} (use --replace to overwrite it)")
        token = secrets.token_hex(4)
        tmp = self.root / f".import-{token}"
        try:
            w = self._open_writer(tmp, name, config, False, False, self.writer_config)
            w.log_columns(table["step"], table["metric"], table["layer"], table["value"], table["rank"])
            for ev in events or ():
                w.event(**ev)
            w.close(status=M.ST_FINISHED)
            if w.errors:
                raise StoreError(f"writing run {name!r} failed: {w.last_error}")
            if final.exists():
                trash = self.root / f".trash-{token}"
                os.rename(final, trash)
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.forget(name)
        return len(table)

    def ensure_writable(self) -> None:
        """Create the store folder if missing and check, by creating and removing a file in it, that it can be
        written. os.access is not asked: it judges by permission bits and mount flags, with the real user id,
        and answers yes to root for folders whose file system takes no file (/proc). Raises StoreNotWritable
        (a StoreError) naming the folder and the reason. Once it passed, later calls only check that the folder
        is still there."""
        if self.read_only:
            raise StoreError(f"store {self.root} was opened read-only")
        if self._writable and self.root.is_dir():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = "a file is in the way" if isinstance(e, FileExistsError) else (e.strerror or str(e))
            raise StoreNotWritable(f"cannot create store folder {self.root}: {reason}", self.root, reason) from None
        probe = self.root / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            reason = e.strerror or str(e)
            raise StoreNotWritable(f"store folder {self.root} is not writable: {reason}", self.root, reason) from None
        self._writable = True

    def compact(self, run: str) -> dict:
        """Fold the run's segments into run.duckdb now (done by close(); use for crashed runs)."""
        self.ensure_writable()
        return compact_run(self._run_dir(run))

    def mark_failed(self, run: str) -> bool:
        """If the run's writer is gone, compact what it wrote and record status "failed". True if it did."""
        self.ensure_writable()
        rd = self._run_dir(run)
        status, stale = meta.effective_status(meta.read(rd))
        if not stale:
            return False
        compact_run(rd)
        now = time.time()

        def upd(m):
            m["status"] = M.ST_FAILED
            m["ended"] = m.get("ended") or m.get("last_write") or now
        meta.update(rd, upd)
        return True

    def set_status(self, run: str, status: str) -> None:
        self.ensure_writable()
        meta.update(self._run_dir(run), lambda m: m.__setitem__("status", status))

    def delete_run(self, run: str) -> None:
        self.ensure_writable()
        shutil.rmtree(self._run_dir(run))
        self.forget(run)
