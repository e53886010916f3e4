"""Reading a run: every series, downsampled series, events and checkpoints, finished, live or crashed. Reading
never takes a lock and never writes (how a query stays exact while a writer publishes, merges and compacts:
see query.py). Series are read along the run's lineage: rows a rollback abandoned are left out unless asked for
(lineage.py). Part of `RunStore` (store.py)."""

from __future__ import annotations

import json

import pandas as pd

from stability import metrics as M
from stability.store import layout
from stability.store.lineage import cutoffs, rewinds_of
from stability.store.layout import StoreError
from stability.store.query import as_list, empty_events, filters, read_series_many


class RunReads:
    """The reading side of `RunStore`: uses its `root`, `_reader` (a query.RunReader), `_run_dir()`,
    `run_names()`, `_may_have_events()` and `_meta()` (run.json, cached)."""

    def metric_names(self, run: str) -> pd.DataFrame:
        """DataFrame metric, layer: every series the run has."""
        return self._query(run, "metrics", lambda src: (
            f"SELECT DISTINCT metric, layer FROM {src} ORDER BY metric, layer", []))

    def metrics(self, run: str, metrics=None, layers=None, step_min=None, step_max=None,
                rank: int | None = M.GLOBAL_RANK, branches: str = "lineage") -> pd.DataFrame:
        """Long form: step, metric, layer, value, ordered by step (then metric, layer). rank=None: every rank,
        with a `rank` column. branches="lineage": the run as it stands, without what rollbacks abandoned;
        "all": every row, with a `branch` column, in the order they were logged (branch, then step); "abandoned":
        only the rows rollbacks abandoned, likewise."""
        if branches not in ("lineage", "all", "abandoned"):
            raise ValueError(f"branches must be 'lineage', 'all' or 'abandoned', got {branches!r}")
        every = branches != "lineage"

        def build(src):
            where, params = filters(metrics, layers, step_min, step_max, rank)
            cols = "step, metric, layer, value" + (", rank" if rank is None else "") + (", branch" if every else "")
            order = ("branch, " if every else "") + "step, metric, layer" + (", rank" if rank is None else "")
            return f"SELECT {cols} FROM {src}{where} ORDER BY {order}", params
        return self._query(run, "metrics", build, along_lineage=branches != "all",
                           abandoned=branches == "abandoned")

    def rewinds(self, run: str) -> list[tuple[int, int]]:
        """(branch, resume_step) of each rollback the run recorded, oldest first; [] if it never rolled back."""
        m = self._meta(run, self._run_dir(run) / layout.RUN_JSON)  # run.json, cached by mtime (listing.py)
        return rewinds_of(m) if m is not None else []

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
        return self._query(run, "metrics", None, run_queries, along_lineage=True)

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

        self._run_dir(run)  # a bad run name is refused even when no key is asked for
        if not wanted:
            return {}
        return self._query(run, "metrics", None, lambda cur, src, sparams: read_series_many(
            cur, src, sparams, wanted, points_of, step_min, step_max, rank), along_lineage=True)

    def events(self, run: str | None = None, kinds=None, branches: str = "all") -> pd.DataFrame:
        """run, step, time, kind, severity, detail (dict), rank, branch; all runs when run is None. Every event,
        those of branches a rollback abandoned included; branches="lineage": only the events of the run as it went
        on (the same rule as for metric rows; a `rollback` event ends the branch it abandons, so it is not)."""
        if branches not in ("lineage", "all"):
            raise ValueError(f"branches must be 'lineage' or 'all', got {branches!r}")
        runs = [run] if run is not None else self.run_names()
        frames = []
        for r in runs:
            def build(src):
                where, params = "", []
                if kinds is not None:
                    where, params = " WHERE list_contains(?, kind)", [list(as_list(kinds))]
                return (f"SELECT step, time, kind, severity, detail, rank, branch FROM {src}{where} "
                        f"ORDER BY step, time"), params
            if run is None and not self._may_have_events(r):
                continue
            try:
                df = self._query(r, "events", build, along_lineage=branches == "lineage")
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

    def checkpoints(self, run: str) -> pd.DataFrame:
        """step, location, ordered by step."""
        return self._query(run, "checkpoints", lambda src: (
            f"SELECT step, location FROM {src} ORDER BY step", []))

    def watch(self, callback, run: str | None = None):
        """Call `callback(run_name)` from a watchdog thread whenever a run (or any run) gets new data or
        metadata. Returns the observer: call `.stop()` (and `.join()`) to end it."""
        from stability.store.watch import watch
        return watch(self, callback, run)

    def _query(self, run: str, table: str, build, run_queries=None, along_lineage: bool = False,
               abandoned: bool = False):
        cut = cutoffs(self.rewinds(run)) if along_lineage else None
        if abandoned and cut is None:
            cut = []  # no rollback: every row is on the lineage, and none abandoned
        return self._reader.query(self._run_dir(run), run, table, build, run_queries, cut, abandoned)
