"""RunStore.series_many: every key as series() gives it, to the last bits of a mean (compacted file + live
segments, NaN/inf, step ranges, ranks, raw and downsampled), wildcard layers, per-key points, names as
parameters, damaged segments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stability import metrics as M
from stability.store import RunStore, StoreError, WriterConfig, layout, query

FAST = WriterConfig(flush_interval=0.02)
LAYERS = ["embedding", "layers.0", "layers.1", "layers.10", "layers.2", "total"]
N_COMPACTED, N_LIVE = 2400, 1100  # steps written then compacted into run.duckdb, then left in live segments


def _rows(lo: int, hi: int, rng) -> dict:
    """Columns for steps [lo, hi): a dense loss with NaN/inf, per-layer grad norms, a sparse validation loss,
    and a series that is all non-finite in places."""
    steps, metrics, layers, values = [], [], [], []

    def add(metric, layer, s, v):
        steps.append(s)
        metrics.extend([metric] * len(s))
        layers.extend([layer] * len(s))
        values.append(v)

    s = np.arange(lo, hi)
    loss = 2.0 + rng.normal(0, 0.1, len(s))
    loss[s % 97 == 5] = math.nan
    loss[s % 211 == 7] = math.inf
    loss[s % 331 == 9] = -math.inf
    loss[s == 1500] = 80.0  # a one-step spike: must survive as a bucket max
    add(M.LOSS, M.NO_LAYER, s, loss)
    for j, lay in enumerate(LAYERS):
        add(M.GRAD_NORM, lay, s, np.exp(rng.normal(j * 0.1, 0.3, len(s))))
    sparse = s[s % 100 == 0]
    add(M.VAL_LOSS, M.NO_LAYER, sparse, 2.5 + rng.normal(0, 0.05, len(sparse)))
    odd = s[s % 3 == 0]
    nf = np.full(len(odd), math.nan)
    nf[(odd // 300) % 2 == 1] = 1.0  # whole buckets with no finite value alternate with finite ones
    nf[odd % 51 == 0] = math.inf
    add(M.NONFINITE_GRADS, M.LAYER_TOTAL, odd, nf)
    return (np.concatenate(steps), np.array(metrics, dtype=object), np.array(layers, dtype=object),
            np.concatenate(values))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A run whose first steps are in run.duckdb and the rest in live segments, with a second rank."""
    root = tmp_path_factory.mktemp("many")
    store = RunStore(root)
    rng = np.random.default_rng(7)
    w = store.create_run("r", writer_config=FAST)
    w.log_columns(*_rows(0, N_COMPACTED, rng))
    for step in range(0, N_COMPACTED, 10):
        w.log(step, {(M.LOSS, M.NO_LAYER): 10.0 + step}, rank=3)
    w.close()
    w = store.create_run("r", exist_ok=True, writer_config=FAST)
    w.log_columns(*_rows(N_COMPACTED, N_COMPACTED + N_LIVE, rng))
    for step in range(N_COMPACTED, N_COMPACTED + N_LIVE, 10):
        w.log(step, {(M.LOSS, M.NO_LAYER): 10.0 + step}, rank=3)
    assert w.flush()
    rd = root / "r"
    assert (rd / layout.RUN_DUCKDB).exists() and list((rd / layout.SEGMENTS).glob("*.parquet"))
    yield store
    w.close()


def assert_same(got, want, what=""):
    assert list(got.columns) == list(want.columns), what
    assert got.dtypes.to_dict() == want.dtypes.to_dict(), what
    assert list(got.index) == list(range(len(got))), what
    assert len(got) == len(want), what
    np.testing.assert_array_equal(got[["step", "n", "nonfinite"]].to_numpy(), want[["step", "n", "nonfinite"]]
                                  .to_numpy(), err_msg=str(what))
    # The mean may differ in the last bit: DuckDB sums in parallel, so series() alone is not bit-stable.
    np.testing.assert_allclose(got[["value", "vmin", "vmax"]].to_numpy(float),
                               want[["value", "vmin", "vmax"]].to_numpy(float), rtol=1e-12, equal_nan=True,
                               err_msg=str(what))


ALL_KEYS = [(M.LOSS, M.NO_LAYER), (M.VAL_LOSS, M.NO_LAYER), (M.NONFINITE_GRADS, M.LAYER_TOTAL)] + [
    (M.GRAD_NORM, lay) for lay in LAYERS]
RANGES = [(None, None), (None, 1800), (2000, None), (2390, 2410), (1234, 3000), (5000, 6000), (17, 17)]


@pytest.mark.parametrize("step_min,step_max", RANGES)
@pytest.mark.parametrize("max_points", [1, 7, 300, 5000])
def test_every_key_matches_series(mixed, max_points, step_min, step_max):
    got = mixed.series_many("r", ALL_KEYS, max_points=max_points, step_min=step_min, step_max=step_max)
    assert list(got) == ALL_KEYS
    for key in ALL_KEYS:
        want = mixed.series("r", *key, max_points=max_points, step_min=step_min, step_max=step_max)
        assert_same(got[key], want, (key, max_points, step_min, step_max))


def test_the_data_covers_both_paths_and_nonfinite_buckets(mixed):
    """Guards the comparison above against testing nothing: raw and bucketed series, NaN/inf kept raw,
    buckets with only non-finite values, both storage places."""
    got = mixed.series_many("r", ALL_KEYS, max_points=300)
    assert len(got[(M.VAL_LOSS, "")]) == (N_COMPACTED + N_LIVE) // 100  # raw: fewer than 300 points
    assert got[(M.VAL_LOSS, "")]["n"].eq(1).all()
    loss = got[(M.LOSS, "")]
    assert len(loss) == 300 and loss["n"].sum() == N_COMPACTED + N_LIVE
    assert loss["vmax"].max() == 80.0 and loss["nonfinite"].sum() > 0
    nf = got[(M.NONFINITE_GRADS, M.LAYER_TOTAL)]
    assert nf["vmin"].isna().any() and nf["vmin"].notna().any()  # some buckets have no finite value
    # Raw points keep NaN and inf as stored (2430 % 97 == 5, 2539 % 211 == 7), in the live segments.
    raw = mixed.series_many("r", [(M.LOSS, "")], step_min=2425, step_max=2545)[(M.LOSS, "")].set_index("step")
    assert len(raw) == 121 and raw["n"].eq(1).all()
    assert math.isnan(raw.loc[2430, "value"]) and raw.loc[2539, "value"] == math.inf
    s = np.arange(2425, 2546)
    assert raw["nonfinite"].sum() == ((s % 97 == 5) | (s % 211 == 7) | (s % 331 == 9)).sum() >= 2


def test_matches_an_independent_numpy_reference(tmp_path):
    rng = np.random.default_rng(3)
    steps = np.arange(5, 20_005, 4)
    values = rng.normal(1.0, 0.2, len(steps))
    values[[10, 11, 12]] = [math.nan, math.inf, -math.inf]
    values[4000] = 1e6
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    w.log_columns(steps, [M.LOSS] * len(steps), [""] * len(steps), values)
    w.close()
    df = store.series_many("r", [(M.LOSS, "")], max_points=333)[(M.LOSS, "")]
    lo, span = steps.min(), float(steps.max() - steps.min() + 1)
    bucket = np.floor((steps - lo) * 333.0 / span).astype(np.int64)
    ref = []
    for b in np.unique(bucket):
        v = values[bucket == b]
        fin = v[np.isfinite(v)]
        ref.append((steps[bucket == b].min(), fin.mean(), fin.min(), fin.max(), len(v), len(v) - len(fin)))
    np.testing.assert_allclose(df[["step", "value", "vmin", "vmax", "n", "nonfinite"]].to_numpy(float),
                               np.array(ref, float), rtol=1e-12)
    assert df["vmax"].max() == 1e6 and df["nonfinite"].sum() == 3


def test_ranks_are_separate(mixed):
    got = mixed.series_many("r", [(M.LOSS, ""), (M.GRAD_NORM, None)], max_points=50, rank=3)
    assert list(got) == [(M.LOSS, "")]  # rank 3 logged only the loss
    assert_same(got[(M.LOSS, "")], mixed.series("r", M.LOSS, max_points=50, rank=3))
    assert got[(M.LOSS, "")]["vmin"].min() == 10.0


def test_wildcard_layers_and_points_per_key(mixed):
    points = {(M.GRAD_NORM, None): 40, (M.GRAD_NORM, M.LAYER_TOTAL): 900, (M.LOSS, ""): 60}
    got = mixed.series_many("r", [(M.GRAD_NORM, None), (M.LOSS, ""), (M.VAL_LOSS, None)], max_points=500,
                            per_key_points=points, step_min=100)
    assert list(got) == [(M.GRAD_NORM, lay) for lay in sorted(LAYERS)] + [(M.LOSS, ""), (M.VAL_LOSS, "")]
    for (metric, layer), df in got.items():
        pts = points.get((metric, layer), points.get((metric, None), 500))
        assert_same(df, mixed.series("r", metric, layer, max_points=pts, step_min=100), (metric, layer))
    assert len(got[(M.GRAD_NORM, "layers.0")]) == 40 and len(got[(M.GRAD_NORM, M.LAYER_TOTAL)]) == 900
    # A wildcard and a named layer of the same metric give that series once.
    both = mixed.series_many("r", [(M.GRAD_NORM, "total"), (M.GRAD_NORM, None)])
    assert next(iter(both)) == (M.GRAD_NORM, "total") and len(both) == len(LAYERS)


def test_missing_series_and_empty_ranges(mixed):
    got = mixed.series_many("r", [("no_such_metric", ""), (M.LOSS, "no_such_layer"), ("nothing", None),
                                  (M.LOSS, "")], step_min=10**9)
    assert list(got) == [("no_such_metric", ""), (M.LOSS, "no_such_layer"), (M.LOSS, "")]
    for df in got.values():
        assert_same(df, mixed.series("r", "no_such_metric"))
    assert mixed.series_many("r", []) == {}


def test_batches_of_keys_give_the_same_answer(mixed, monkeypatch):
    want = mixed.series_many("r", ALL_KEYS, max_points=100)
    monkeypatch.setattr(query, "KEYS_PER_STATEMENT", 2)
    got = mixed.series_many("r", ALL_KEYS, max_points=100)
    assert list(got) == list(want)
    for key in want:
        assert_same(got[key], want[key], key)


def test_names_are_parameters(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("run-1.a_b+c=d@e", writer_config=FAST)
    evil = ("lo'ss\"; DROP TABLE metrics; --", "layer') OR 1=1 --")
    for step in range(5):
        w.log(step, {evil: float(step), ("x", ""): 1.0})
    w.close()
    got = store.series_many("run-1.a_b+c=d@e", [evil, (evil[0], None), ("x", "' OR ''='")])
    assert got[evil]["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert got[("x", "' OR ''='")].empty and len(got) == 2


def test_bad_arguments(mixed):
    with pytest.raises(ValueError):
        mixed.series_many("r", [M.LOSS])  # a bare name, not a (metric, layer) pair
    with pytest.raises(ValueError):
        mixed.series_many("r", [(M.LOSS, "")], max_points=0)
    with pytest.raises(ValueError):
        mixed.series_many("r", [(M.LOSS, "")], per_key_points={(M.LOSS, ""): 0})
    with pytest.raises(StoreError):
        mixed.series_many("no-such-run", [(M.LOSS, "")])
    with pytest.raises(StoreError):
        mixed.series_many("../r", [(M.LOSS, "")])


def test_a_damaged_segment_is_skipped_and_reported(tmp_path):
    store = RunStore(tmp_path)
    w = store.create_run("r", writer_config=FAST)
    for step in range(40):
        w.log(step, {(M.LOSS, ""): float(step), (M.GRAD_NORM, "total"): 1.0})
        if step % 10 == 9:
            assert w.flush()
    w.close(compact=False)
    segs = sorted((tmp_path / "r" / layout.SEGMENTS).glob("m_*.parquet"))
    assert len(segs) >= 2
    with open(segs[0], "r+b") as f:
        f.truncate(max(16, f.seek(0, 2) // 3))
    got = store.series_many("r", [(M.LOSS, ""), (M.GRAD_NORM, None)])
    assert store.problems and segs[0].name in store.problems[0]
    assert_same(got[(M.LOSS, "")], store.series("r", M.LOSS))
    assert 0 < len(got[(M.LOSS, "")]) < 40
