"""`stability runs`, `import` and `export`: round trips, real W&B exports, TensorBoard folders, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stability import metrics as M
from stability.cli import main
from stability.store import RunStore, WriterConfig

REALWORLD = Path(__file__).resolve().parents[3] / "shared" / "realworld" / "microscaling-instabilities"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _sample_run(store: RunStore, name: str = "src"):
    w = store.create_run(name, config={"ln": "pre", "precision": "bf16"}, writer_config=WriterConfig(0.02))
    rng = np.random.default_rng(1)
    for s in range(0, 500, 5):
        v = {(M.LOSS, ""): float(rng.normal(2, 0.1)), (M.GRAD_NORM, M.LAYER_TOTAL): float(rng.random()) * 1e-7,
             (M.GRAD_NORM, "layers.0"): 1 / 3, (M.LR, ""): 3e-4}
        if s == 250:
            v[(M.LOSS, "")] = math.nan
            v[(M.GRAD_NORM, M.LAYER_TOTAL)] = math.inf
            v[(M.GRAD_NORM, "layers.0")] = -math.inf
        w.log(s, v)
    w.close()


def _same(a: pd.DataFrame, b: pd.DataFrame):
    key = ["step", "metric", "layer"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    x, y = a["value"].to_numpy(), b["value"].to_numpy()
    assert np.array_equal(x, y, equal_nan=True)  # bit-exact doubles, NaN and inf included


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_import_round_trip(tmp_path, capsys, suffix):
    store = RunStore(tmp_path / "s")
    _sample_run(store)
    out = tmp_path / f"x{suffix}"
    rc, _, err = _cli(capsys, "export", "src", "--store", tmp_path / "s", "--out", out)
    assert rc == 0, err
    rc, _, err = _cli(capsys, "import", out, "--store", tmp_path / "s", "--run", "back")
    assert rc == 0, err
    _same(store.metrics("src"), store.metrics("back"))
    out2 = tmp_path / f"y{suffix}"
    assert _cli(capsys, "export", "back", "--store", tmp_path / "s", "--out", out2)[0] == 0
    if suffix == ".csv":
        assert out.read_bytes() == out2.read_bytes()
        header = out.read_text().splitlines()[0].replace('"', "")
        assert header == "step,metric,layer,value"


def test_round_trip_keeps_ranks(tmp_path, capsys):
    store = RunStore(tmp_path)
    w = store.create_run("r")
    w.log(1, {(M.LOSS, ""): 1.0})
    w.log(1, {(M.LOSS, ""): 2.0}, rank=3)
    w.close()
    assert _cli(capsys, "export", "r", "--store", tmp_path, "--out", tmp_path / "r.csv")[0] == 0
    assert _cli(capsys, "import", tmp_path / "r.csv", "--store", tmp_path, "--run", "r2")[0] == 0
    assert store.metrics("r2", rank=None)[["rank", "value"]].values.tolist() == [[-1, 1.0], [3, 2.0]]


@pytest.mark.parametrize("body,where", [
    ("step,metric,value\n1,loss,2\n", "line 1: missing column layer"),
    ("step,metric,layer,value\n1,loss,,2\n2,loss,,2.5\nten,loss,,3\n", "line 4: step 'ten' is not an integer"),
    ("step,metric,layer,value\n1,loss,,2\n2,loss,,\n", "line 3: value '' is not a number"),
    ("step,metric,layer,value\n1,loss,,2\n2,loss,,abc\n", "line 3: value 'abc' is not a number"),
    ("step,metric,layer,value\n1,loss,,2\n2,loss,3\n", "line 3: expected 4 fields, found 3"),
    ("step,metric,layer,value\n1,loss,,2\n2,,,3\n", "line 3: empty metric name"),
    ("", "empty file"),
])
def test_malformed_csv_is_refused_with_line_and_nothing_written(tmp_path, capsys, body, where):
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    store_dir = tmp_path / "s"
    rc, _, err = _cli(capsys, "import", bad, "--store", store_dir, "--run", "x")
    assert rc == 2 and where in err, err
    assert len(err.strip().splitlines()) == 1
    assert RunStore(store_dir).run_names() == []
    assert not [p for p in store_dir.iterdir()] if store_dir.exists() else True


def test_nonfinite_text_imports_as_is(tmp_path, capsys):
    f = tmp_path / "nf.csv"
    f.write_text("step,metric,layer,value\n1,loss,,nan\n2,loss,,inf\n3,loss,,-inf\n4,grad_norm,embedding,1e-300\n")
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "nf")[0] == 0
    v = RunStore(tmp_path / "s").metrics("nf")["value"].tolist()
    assert math.isnan(v[0]) and v[1:] == [math.inf, -math.inf, 1e-300]


def _wandb_cells(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {int(r[0]): float(r[1]) for r in rows[1:] if r[1] != ""}


@pytest.mark.skipif(not REALWORLD.exists(), reason="shared/realworld not present")
def test_every_real_wandb_export_imports_as_is(tmp_path, capsys):
    files = sorted(REALWORLD.glob("*/*/*.csv"))
    assert len(files) >= 20
    store = RunStore(tmp_path)
    for i, f in enumerate(files):
        rc, _, err = _cli(capsys, "import", f, "--store", tmp_path, "--run", f"w{i}")
        assert rc == 0, (f, err)
        df = store.metrics(f"w{i}")
        expect = _wandb_cells(f)
        key = (M.LOSS, "") if "CrossEntropyLoss" in f.read_text()[:200] else (M.GRAD_NORM, M.LAYER_TOTAL)
        assert set(zip(df["metric"], df["layer"])) == {key}
        assert dict(zip(df["step"].tolist(), df["value"].tolist())) == expect


@pytest.mark.skipif(not REALWORLD.exists(), reason="shared/realworld not present")
def test_wandb_loss_and_grad_norm_files_merge_into_one_run(tmp_path, capsys):
    loss = REALWORLD / "training_loss/fp6_e3m2_fp6_e3m2/wandb_export_fp6_e3m2_fp6_e3m2_42_.csv"
    grad = REALWORLD / "grad_norm/fp6_e3m2_fp6_e3m2/wandb_grad_norm_fp6_e3m2_fp6_e3m2_42.csv"
    rc, _, err = _cli(capsys, "import", loss, grad, "--store", tmp_path, "--run", "mx", "--precision", "fp6_e3m2")
    assert rc == 0, err
    store = RunStore(tmp_path)
    assert dict(zip(store.series("mx", M.LOSS, max_points=10**6)["step"].tolist(),
                    store.series("mx", M.LOSS, max_points=10**6)["value"].tolist())) == _wandb_cells(loss)
    g = store.metrics("mx", metrics=M.GRAD_NORM, layers=M.LAYER_TOTAL)
    assert dict(zip(g["step"].tolist(), g["value"].tolist())) == _wandb_cells(grad)
    rc, out, _ = _cli(capsys, "runs", "--store", tmp_path, "--json")
    (row,) = json.loads(out)
    assert row["run"] == "mx" and row["precision"] == "fp6_e3m2" and row["ln"] is None
    assert row["status"] == "finished" and row["last_step"] == max(_wandb_cells(loss))


def test_wandb_several_runs_min_max_and_empty_cells(tmp_path, capsys):
    f = tmp_path / "wb.csv"
    f.write_text(
        '"Step","a - train/loss","a - train/loss__MIN","a - train/loss__MAX","b - optim/LR","b - Weird Metric!"\n'
        '"1","2.5","2.4","2.6","0.001","7"\n'
        '"2","","","","0.002",""\n'
        '"3","NaN","NaN","NaN","0.003","8"\n')
    rc, _, err = _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "x")
    assert rc == 2 and "2 W&B runs (a, b)" in err
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "x", "--wandb-run", "a")[0] == 0
    store = RunStore(tmp_path / "s")
    df = store.metrics("x")
    assert df["metric"].unique().tolist() == [M.LOSS] and df["step"].tolist() == [1, 3]
    assert df["value"][0] == 2.5 and math.isnan(df["value"][1])
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "y", "--split")[0] == 0
    b = store.metrics("y.b")
    assert sorted(set(b["metric"])) == [M.LR, "weird_metric"] and len(b) == 5
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "x", "--wandb-run", "a")[0] == 2
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "x", "--wandb-run", "b",
                "--replace")[0] == 0
    assert set(store.metrics("x")["metric"]) == {M.LR, "weird_metric"}


def test_wide_csv_with_plain_metric_columns(tmp_path, capsys):
    f = tmp_path / "wide.csv"
    f.write_text("Step,train/loss,grad_norm\n1,2.5,0.1\n2,2.4,\n")
    assert _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "w")[0] == 0
    df = RunStore(tmp_path / "s").metrics("w")
    assert list(zip(df["step"], df["metric"], df["layer"], df["value"])) == [
        (1, M.GRAD_NORM, M.LAYER_TOTAL, 0.1), (1, M.LOSS, "", 2.5), (2, M.LOSS, "", 2.4)]


def test_tensorboard_folder_imports_like_tensorboard_reads_it(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "tb"
    with SummaryWriter(str(logdir)) as sw:
        for s in range(0, 200, 7):
            sw.add_scalar("train/loss", 3.0 / (1 + s), s)
            sw.add_scalar("grad_norm/embedding", 0.1 * s, s)
            sw.add_scalar("optim/LR", 1e-3, s)
            sw.add_histogram("weights", np.arange(10.0), s)
        sw.add_scalar("train/loss", float("nan"), 201)
    rc, _, err = _cli(capsys, "import", logdir, "--store", tmp_path / "s", "--run", "tb")
    assert rc == 0, err
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    df = RunStore(tmp_path / "s").metrics("tb")
    for tag, key in [("train/loss", (M.LOSS, "")), ("grad_norm/embedding", (M.GRAD_NORM, M.LAYER_EMBEDDING)),
                     ("optim/LR", (M.LR, ""))]:
        ref = [(e.step, e.value) for e in ea.Scalars(tag)]
        got = df[(df["metric"] == key[0]) & (df["layer"] == key[1])]
        assert got["step"].tolist() == [s for s, _ in ref]
        assert np.array_equal(got["value"].to_numpy(), np.array([v for _, v in ref]), equal_nan=True)


def test_runs_json_and_unwritable_or_missing_store(tmp_path, capsys):
    store = RunStore(tmp_path / "s")
    _sample_run(store, "a")
    rc, out, _ = _cli(capsys, "runs", "--store", tmp_path / "s", "--json")
    (row,) = json.loads(out)
    assert {k: row[k] for k in ("run", "status", "last_step", "ln", "precision")} == {
        "run": "a", "status": "finished", "last_step": 495, "ln": "pre", "precision": "bf16"}
    rc, out, _ = _cli(capsys, "runs", "--store", tmp_path / "s")
    assert rc == 0 and "finished" in out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    f = tmp_path / "ok.csv"
    f.write_text("step,metric,layer,value\n1,loss,,1\n")
    rc, _, err = _cli(capsys, "import", f, "--store", blocker / "sub", "--run", "x")
    assert rc == 2 and "cannot create store folder" in err
    rc, _, err = _cli(capsys, "runs", "--store", tmp_path / "nope")
    assert rc == 2 and "no run store" in err
    rc, _, err = _cli(capsys, "export", "zzz", "--store", tmp_path / "s", "--out", tmp_path / "o.csv")
    assert rc == 2 and "no run 'zzz'" in err
    rc, _, err = _cli(capsys, "export", "a", "--store", tmp_path / "s", "--out", tmp_path / "o.txt")
    assert rc == 2 and ".csv or .parquet" in err
    rc, _, err = _cli(capsys, "import", f, "--store", tmp_path / "s", "--run", "../evil")
    assert rc == 2 and "invalid run name" in err


# --- TensorBoard event files written by hand (no tensorboard package needed) -----------------------------
def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _field(num: int, wire: int, payload: bytes) -> bytes:
    key = _varint(num << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _event(step: int, wall: float, values: list[bytes]) -> bytes:
    import struct
    summary = b"".join(_field(1, 2, v) for v in values)
    return _field(1, 1, struct.pack("<d", wall)) + _field(2, 0, _varint(step)) + _field(5, 2, summary)


def _simple(tag: str, x: float) -> bytes:
    import struct
    return _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", x))


def _tensor_scalar(tag: str, x: float) -> bytes:  # TF2 style: a rank-0 DT_DOUBLE tensor
    import struct
    tensor = _field(1, 0, _varint(2)) + _field(2, 2, b"") + _field(6, 2, struct.pack("<d", x))
    return _field(1, 2, tag.encode()) + _field(8, 2, tensor)


def _record(data: bytes) -> bytes:
    import struct
    return struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4  # CRCs are not checked


def test_tensorboard_reader_on_hand_written_records(tmp_path, capsys):
    logdir = tmp_path / "tb"
    logdir.mkdir()
    recs = [_record(_field(3, 2, b"brain.Event:2"))]  # file_version event, no summary
    recs += [_record(_event(s, 100.0 + s, [_simple("train/loss", 2.5 - s / 8), _tensor_scalar("lr", 1e-3 * s)]))
             for s in range(5)]
    recs.append(_record(_event(2, 200.0, [_simple("train/loss", 9.0)])))  # restarted run: later value wins
    data = b"".join(recs) + _record(_event(9, 300.0, [_simple("train/loss", 1.0)]))[:-7]  # torn tail
    (logdir / "events.out.tfevents.1.host").write_bytes(data)
    rc, _, err = _cli(capsys, "import", logdir, "--store", tmp_path / "s", "--run", "tb")
    assert rc == 0, err
    df = RunStore(tmp_path / "s").metrics("tb")
    loss = df[df["metric"] == M.LOSS]
    assert loss["step"].tolist() == [0, 1, 2, 3, 4]
    assert loss["value"].tolist() == [2.5, 2.375, 9.0, 2.125, 2.0]
    lr = df[df["metric"] == M.LR]
    assert lr["value"].tolist() == pytest.approx([1e-3 * s for s in range(5)], rel=0, abs=0)
