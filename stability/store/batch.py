"""Turning queued records into Arrow columns: the key cache and the (steps x keys) fast path.

Probes log the same keys in the same order every step, so a step's key tuple is usually the previous step's:
its index array is reused, and a batch of such steps is a (steps x keys) matrix whose transpose groups rows by
series. Rows are grouped in (metric, layer) name order so that each Parquet row group's min/max statistics
cover a narrow range of names and a reader's filter skips the rest.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from stability import metrics as M
from stability.store.arrowio import cluster_by_series


class MetricBatcher:
    """Owned by one writer thread: maps keys to dictionary indices and builds metric tables."""

    def __init__(self):
        self._key_id: dict = {}
        self._metric_names: list[str] = []
        self._metric_ix: dict[str, int] = {}
        self._layer_names: list[str] = []
        self._layer_ix: dict[str, int] = {}
        self._key_metric: list[int] = []
        self._key_layer: list[int] = []
        self._last_keys: tuple | None = None
        self._last_idx: np.ndarray | None = None
        self._perm_for: np.ndarray | None = None
        self._perm: np.ndarray | None = None

    def key_index(self, keys: tuple) -> np.ndarray:
        """Key ids of one step's keys; the same array object as last time when the keys did not change."""
        if keys == self._last_keys:
            return self._last_idx
        idx = np.fromiter((self.key_id(k) for k in keys), np.int32, len(keys))
        self._last_keys, self._last_idx = keys, idx
        return idx

    def key_id(self, key) -> int:
        kid = self._key_id.get(key)
        if kid is not None:
            return kid
        if isinstance(key, tuple):
            metric, layer = key
        else:
            metric, layer = M.split_key(str(key))
        metric, layer = str(metric), "" if layer is None else str(layer)
        mi = self._metric_ix.setdefault(metric, len(self._metric_names))
        if mi == len(self._metric_names):
            self._metric_names.append(metric)
        li = self._layer_ix.setdefault(layer, len(self._layer_names))
        if li == len(self._layer_names):
            self._layer_names.append(layer)
        kid = len(self._key_metric)
        self._key_metric.append(mi)
        self._key_layer.append(li)
        self._key_id[key] = kid
        return kid

    def table(self, steps, counts, ranks, idxs, vals, branches) -> pa.Table:
        """One batch as Arrow columns, rows grouped by series (readers then skip other series' row groups).
        Per logged step: its step, row count, rank, key ids, values and branch."""
        km = np.asarray(self._key_metric, np.int32)
        kl = np.asarray(self._key_layer, np.int32)
        mdict = pa.array(self._metric_names, pa.string())
        ldict = pa.array(self._layer_names, pa.string())
        first = idxs[0]
        if all(i is first for i in idxs) and ranks.count(ranks[0]) == len(ranks):
            # Every step logged the same keys in the same order (the usual case): the batch is a
            # (steps x keys) matrix, and grouping by series (in name order) is a column permutation + transpose.
            perm = self._lex_perm(first)
            keys = first[perm]
            n_steps = len(steps)
            values = np.stack(vals)[:, perm].T.ravel()
            return pa.table({
                "step": pa.array(np.tile(np.asarray(steps, np.int64), len(keys))),
                "metric": pa.DictionaryArray.from_arrays(pa.array(np.repeat(km[keys], n_steps)), mdict),
                "layer": pa.DictionaryArray.from_arrays(pa.array(np.repeat(kl[keys], n_steps)), ldict),
                "value": pa.array(values),
                "rank": pa.array(np.full(len(values), ranks[0], np.int32)),
                "branch": pa.array(np.tile(np.asarray(branches, np.int32), len(keys))),
            })
        counts_a = np.asarray(counts, np.int64)
        idx = np.concatenate(idxs)
        t = pa.table({
            "step": pa.array(np.repeat(np.asarray(steps, np.int64), counts_a)),
            "metric": pa.DictionaryArray.from_arrays(pa.array(km[idx]), mdict),
            "layer": pa.DictionaryArray.from_arrays(pa.array(kl[idx]), ldict),
            "value": pa.array(np.concatenate(vals)),
            "rank": pa.array(np.repeat(np.asarray(ranks, np.int32), counts_a)),
            "branch": pa.array(np.repeat(np.asarray(branches, np.int32), counts_a)),
        })
        return cluster_by_series(t)

    def _lex_perm(self, idx: np.ndarray) -> np.ndarray:
        """Positions of a step's keys sorted by (metric, layer) name; cached for the reused index array."""
        if self._perm_for is idx:
            return self._perm
        names = [(self._metric_names[self._key_metric[k]], self._layer_names[self._key_layer[k]]) for k in idx]
        self._perm = np.asarray(sorted(range(len(idx)), key=names.__getitem__), np.int64)
        self._perm_for = idx
        return self._perm


def columns_table(steps, metrics, layers, values, ranks, branch: int = 0) -> pa.Table:
    """A metrics table from equal-length columns (lists, NumPy or Arrow arrays), every row on `branch`."""
    n = len(steps)

    def strings(col):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        return col if isinstance(col, pa.Array) else pa.array(list(col), pa.string())

    def numbers(col, dtype):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(col, pa.Array):
            return col.to_numpy(zero_copy_only=False).astype(dtype)
        return np.asarray(col, dtype)

    return pa.table({
        "step": pa.array(numbers(steps, np.int64)),
        "metric": strings(metrics),
        "layer": strings(layers),
        "value": pa.array(numbers(values, np.float64)),
        "rank": pa.array(np.full(n, M.GLOBAL_RANK, np.int32) if ranks is None else numbers(ranks, np.int32)),
        "branch": pa.array(np.full(n, branch, np.int32)),
    })


def to_float(x) -> float:
    """A logged value as a double; anything that is not a number becomes NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def event_json(detail) -> str:
    """An event's detail as JSON text (NaN allowed); what json cannot encode is kept as its str/repr."""
    if detail is None:
        return "{}"
    try:
        return json.dumps(detail, default=_json_default, allow_nan=True)
    except (TypeError, ValueError):
        return json.dumps({"repr": repr(detail)})


def _json_default(o):
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
