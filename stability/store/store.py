"""RunStore: create runs to write, list runs, and read any run — finished, running in another process, or
crashed. Reading never takes a lock and never writes (how a query stays exact while a writer publishes,
merges and compacts: see query.py). Listing reads only run.json files, cached by mtime and seeded from the
store's index file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pandas as pd

from stability import metrics as M
from stability.store import layout, meta
from stability.store.compact import compact_run
from stability.store.layout import StoreError
from stability.store.query import RunReader, as_list, empty_events, filters, read_series_many
from stability.store.writer import RunWriter, WriterConfig

_INDEX = ".runs-index.json"  # cache of every run.json, so a new process lists 1,000 runs quickly
_INDEX_MIN_MISSES = 32  # rewrite the index when a listing had to read at least this many run.json files

RUN_COLUMNS = ["run", "status", "started", "ended", "last_step", "last_write", "ln", "precision", "config",
               "host", "git", "stale", "rows"]


class StoreNotWritable(StoreError):
    """The store folder cannot be created or written; `path` is the folder, `reason` the system's answer."""

    def __init__(self, message: str, path: Path | None = None, reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason


class RunStore:
    """A folder of runs. Cheap to create; safe to share between threads of one process."""

    def __init__(self, root, writer_config: WriterConfig | None = None, read_only: bool = False):
        self.root = Path(root)
        self.writer_config = writer_config
        self.read_only = read_only  # never writes anything, not even the listing index
        self._reader = RunReader()
        self._meta_cache: dict[str, tuple[int, int, dict]] = {}
        self._index_loaded = False
        self._misses = 0
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

    # ---- writing ----------------------------------------------------------------------------------------
    def create_run(self, name: str, config: dict | None = None, *, exist_ok: bool = False, git: str | None = None,
                   writer_config: WriterConfig | None = None) -> RunWriter:
        """Start writing run `name`. With exist_ok=True an existing run is resumed (new rows are appended)."""
        layout.check_run_name(name)
        self.ensure_writable()
        return self._open_writer(self.root / name, name, config, exist_ok, git, writer_config)

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
        meta.update(rd, init)
        return RunWriter(rd, name, token, writer_config or self.writer_config)

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
        self._meta_cache.pop(name, None)
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
        self._meta_cache.pop(run, None)

    # ---- run listing ------------------------------------------------------------------------------------
    def run_names(self) -> list[str]:
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
        except FileNotFoundError:
            return []

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

    # ---- reading a run ----------------------------------------------------------------------------------
    def metric_names(self, run: str) -> pd.DataFrame:
        """DataFrame metric, layer: every series the run has."""
        return self._query(run, "metrics", lambda src: (
            f"SELECT DISTINCT metric, layer FROM {src} ORDER BY metric, layer", []))

    def metrics(self, run: str, metrics=None, layers=None, step_min=None, step_max=None,
                rank: int | None = M.GLOBAL_RANK) -> pd.DataFrame:
        """Long form: step, metric, layer, value, ordered by step (then metric, layer). rank=None: every rank,
        with a `rank` column."""
        def build(src):
            where, params = filters(metrics, layers, step_min, step_max, rank)
            cols = "step, metric, layer, value" + (", rank" if rank is None else "")
            order = "step, metric, layer" + (", rank" if rank is None else "")
            return f"SELECT {cols} FROM {src}{where} ORDER BY {order}", params
        return self._query(run, "metrics", build)

    def series(self, run: str, metric: str, layer: str = M.NO_LAYER, max_points: int = 2000,
               step_min=None, step_max=None, rank: int = M.GLOBAL_RANK) -> pd.DataFrame:
        """One series, chart-ready: step, value, vmin, vmax, n. At most `max_points` rows: past that, the step
        range is cut into max_points equal buckets and each gives its first step, the mean of its finite values
        and their min and max (so a spike stays visible). Non-finite values are kept as they are when not
        downsampled; in a bucket, `nonfinite` counts them."""
        if max_points < 1:
            raise ValueError("max_points must be >= 1")

        def run_queries(cur, src, sparams):
            where, params = filters([metric], [layer], step_min, step_max, rank)
            base = f"SELECT step, value FROM {src}{where}"
            n, lo, hi = cur.execute(f"SELECT count(*), min(step), max(step) FROM ({base})",
                                    sparams + params).fetchone()
            if n <= max_points:
                return cur.execute(
                    f"SELECT step, value, value AS vmin, value AS vmax, 1::BIGINT AS n, "
                    f"(NOT isfinite(value))::BIGINT AS nonfinite FROM ({base}) ORDER BY step",
                    sparams + params).df()
            span = float(hi - lo + 1)
            return cur.execute(
                f"SELECT min(step) AS step, "
                f"coalesce(avg(value) FILTER (WHERE isfinite(value)), max(value)) AS value, "
                f"min(value) FILTER (WHERE isfinite(value)) AS vmin, "
                f"max(value) FILTER (WHERE isfinite(value)) AS vmax, count(*) AS n, "
                f"count(*) FILTER (WHERE NOT isfinite(value)) AS nonfinite "
                f"FROM ({base}) GROUP BY CAST(floor((step - ?) * ? / ?) AS BIGINT) ORDER BY step",
                sparams + params + [int(lo), float(max_points), span]).df()
        return self._query(run, "metrics", None, run_queries)

    def series_many(self, run: str, keys, max_points: int = 2000, per_key_points: dict | None = None,
                    step_min=None, step_max=None, rank: int = M.GLOBAL_RANK) -> dict[tuple[str, str], pd.DataFrame]:
        """Several series of one run, each as series() gives it (same buckets, columns and types), read under
        one attach in two queries (a chart page of ~80 series would otherwise attach run.duckdb and query twice
        per series).

        `keys`: (metric, layer) pairs; a layer of None stands for every layer the run logged for that metric
        in the step range, each becoming its own key. `per_key_points`: {(metric, layer): points} for keys that
        get other than `max_points`; a (metric, None) entry sets it for every layer of that metric not named
        itself. Returns {(metric, layer): step, value, vmin, vmax, n, nonfinite} in the order of `keys` (a
        wildcard's layers sorted by name); a named key with no rows gets an empty frame, as series() does."""
        wanted = []
        for key in keys:
            if isinstance(key, str) or len(key) != 2:
                raise ValueError(f"series_many keys are (metric, layer) pairs, got {key!r}")
            metric, layer = key
            wanted.append((str(metric), None if layer is None else str(layer)))
        per = {(str(m), None if lay is None else str(lay)): int(p) for (m, lay), p in (per_key_points or {}).items()}
        if max_points < 1 or any(p < 1 for p in per.values()):
            raise ValueError("max_points and per_key_points must be >= 1")

        def points_of(key):
            return per.get(key, per.get((key[0], None), max_points))

        rd = self._run_dir(run)
        if not wanted:
            return {}
        return self._reader.query(rd, run, "metrics", None, lambda cur, src, sparams: read_series_many(
            cur, src, sparams, wanted, points_of, step_min, step_max, rank))

    def events(self, run: str | None = None, kinds=None) -> pd.DataFrame:
        """run, step, time, kind, severity, detail (dict), rank; all runs when run is None."""
        runs = [run] if run is not None else self.run_names()
        frames = []
        for r in runs:
            def build(src):
                where, params = "", []
                if kinds is not None:
                    where, params = " WHERE list_contains(?, kind)", [list(as_list(kinds))]
                return f"SELECT step, time, kind, severity, detail, rank FROM {src}{where} ORDER BY step, time", params
            if run is None and not self._may_have_events(r):
                continue
            try:
                df = self._query(r, "events", build)
            except StoreError:
                if run is not None:
                    raise
                continue  # deleted while we listed: not an error for an all-runs view
            df.insert(0, "run", r)
            frames.append(df)
        df = pd.concat(frames, ignore_index=True) if frames else empty_events()
        if run is None and len(df):
            df = df.sort_values(["time", "run"], kind="stable").reset_index(drop=True)
        df["detail"] = [json.loads(d) if isinstance(d, str) and d else {} for d in df["detail"]]
        return df

    def _may_have_events(self, run: str) -> bool:
        """False when run.json says no writer of the run ever wrote an event (saves opening the run)."""
        m = self._meta(run, self.root / run / layout.RUN_JSON)
        if m is None:
            return False
        writers = (m.get("writers") or {}).values()
        return not writers or any(w.get("events", 1) for w in writers)

    def checkpoints(self, run: str) -> pd.DataFrame:
        """step, location, ordered by step."""
        return self._query(run, "checkpoints", lambda src: (
            f"SELECT step, location FROM {src} ORDER BY step", []))

    def watch(self, callback, run: str | None = None):
        """Call `callback(run_name)` from a watchdog thread whenever a run (or any run) gets new data or
        metadata. Returns the observer: call `.stop()` (and `.join()`) to end it."""
        from stability.store.watch import watch
        return watch(self, callback, run)

    # ---- query machinery --------------------------------------------------------------------------------
    def _run_dir(self, run: str) -> Path:
        layout.check_run_name(run)
        rd = self.root / run
        if not rd.is_dir():
            raise StoreError(f"no run {run!r} in {self.root}")
        return rd

    def _query(self, run: str, table: str, build, run_queries=None):
        return self._reader.query(self._run_dir(run), run, table, build, run_queries)
