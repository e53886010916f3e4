"""`stability export RUN --to tensorboard DIR`, read back with TensorBoard's own reader (EventAccumulator):
every stored step of every series comes back at its step, equal to the stored value rounded to float32 (what a
TensorBoard scalar holds); events come back as text. Bad input: one line, exit code 2, nothing lost."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from stability.cli import main as cli_main  # noqa: E402
from stability.store import RunStore  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "sample_runs"
SAMPLE_RUN = "unstable-protected-s0"  # a real sample run: every probe, checkpoint, rollback and LR back-off events


def _accumulator(folder: Path) -> ea.EventAccumulator:
    # size_guidance 0 = keep everything (by default TensorBoard keeps a reservoir sample of 10,000 per tag).
    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _same_f32(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check_round_trip(store_dir: Path, run: str, out: Path) -> dict:
    """Compare every (series, step) of the store against what TensorBoard's reader loads from the export."""
    assert cli_main(["export", run, "--store", str(store_dir), "--to", "tensorboard", str(out)]) == 0
    acc = _accumulator(out / run)
    store = RunStore(store_dir, read_only=True)
    df = store.metrics(run, rank=None)
    tags = set(acc.Tags()["scalars"])
    checked = 0
    for (metric, layer, rank), g in df.groupby(["metric", "layer", "rank"]):
        tag = (metric if not layer else f"{metric}/{layer}") if rank == -1 else \
            f"rank{rank}/" + (metric if not layer else f"{metric}/{layer}")
        assert tag in tags, tag
        got = acc.Scalars(tag)
        g = g.sort_values("step")
        assert [e.step for e in got] == g["step"].tolist(), tag
        with np.errstate(over="ignore"):                 # 1e40 -> float32 inf is the point
            want32 = g["value"].to_numpy(np.float64).astype(np.float32)
        for e, want in zip(got, want32.tolist()):
            assert _same_f32(e.value, want), (tag, e.step, e.value, want)
            checked += 1
    assert len(tags) == df.groupby(["metric", "layer", "rank"]).ngroups
    # Events: one text entry per (kind, step) holding each event's severity and detail.
    ev = store.events(run)
    texts = {}
    for tag in acc.Tags()["tensors"]:
        assert tag.startswith("events/")
        for t in acc.Tensors(tag):
            texts[(tag.removeprefix("events/"), t.step)] = tensor_util.make_ndarray(t.tensor_proto).item().decode()
    assert set(texts) == {(k, int(s)) for k, s in zip(ev["kind"], ev["step"])}
    for row in ev.itertuples():
        assert f"**{row.severity}**" in texts[(row.kind, int(row.step))]
    return {"values": checked, "tags": len(tags), "events": len(ev), "acc": acc}


def test_a_real_study_run_round_trips_through_tensorboards_reader(tmp_path):
    store_dir = tmp_path / "store"
    shutil.copytree(SAMPLE / SAMPLE_RUN, store_dir / SAMPLE_RUN)
    res = _check_round_trip(store_dir, SAMPLE_RUN, tmp_path / "tb")
    # 300 steps of its lineage x 2 layers x every probe: 56 tags; events: checkpoints, alerts, pages, 2 rollbacks and 2 LR back-offs
    assert res["values"] > 12_000 and res["tags"] >= 50 and res["events"] >= 9
    assert "grad_norm/embedding" in res["acc"].Tags()["scalars"]          # per-layer tags
    assert any(t.startswith("grad_norm/layers.") for t in res["acc"].Tags()["scalars"])


@pytest.mark.parametrize("window_rows", [None, 3, 40])
def test_nonfinite_out_of_range_per_rank_values_and_policy_events(tmp_path, monkeypatch, window_rows):
    if window_rows is not None:        # read in many step windows (one step each, or a few): nothing missed
        monkeypatch.setattr("stability.store.tensorboard_export.WINDOW_ROWS", window_rows)
    store_dir, run = tmp_path / "store", "edge-run"
    w = RunStore(store_dir).create_run(run, config={"ln": "pre"})
    values = [2.5, float("nan"), float("inf"), -float("inf"), 1e40, 1 / 3, 5e-46, 123456789.123]
    for step, v in enumerate(values):
        w.log(step * 10, {("loss", ""): v, ("grad_norm", "layers.0"): step + 0.1, ("step_time", ""): 0.5})
        w.log(step * 10, {("loss", ""): v * 2}, rank=1)
    w.event(30, "alert", severity="warning", detail={"signal": "emb_grad_z", "score": 1.7})
    w.event(30, "rollback", severity="critical", detail={"to_step": 10})
    w.event(30, "alert", severity="critical", detail={"signal": "loss", "score": 9.0})
    w.event(55, "egs_on", severity="info", detail={})                         # a step with no metrics
    w.close(status="finished")
    res = _check_round_trip(store_dir, run, tmp_path / "tb")
    acc = res["acc"]
    loss = [e.value for e in acc.Scalars("loss")]
    assert loss[4] == math.inf and loss[6] == 0.0               # float32 overflow -> inf, underflow -> 0
    assert [e.value for e in acc.Scalars("rank1/loss")][0] == 5.0
    # Two alerts at one step share one text entry; wall time follows the logged step times.
    (alerts,) = [t for t in acc.Tensors("events/alert")]
    assert tensor_util.make_ndarray(alerts.tensor_proto).item().decode().count("**") == 4
    walls = [e.wall_time for e in acc.Scalars("loss")]
    assert np.allclose(np.diff(walls), 0.5)
    # Our own TensorBoard importer maps the tags back to the same series.
    assert cli_main(["import", str(tmp_path / "tb" / run), "--store", str(tmp_path / "back"), "--run", "b"]) == 0
    back = RunStore(tmp_path / "back", read_only=True).metric_names("b")
    assert ("grad_norm", "layers.0") in set(zip(back["metric"], back["layer"]))


def test_bad_input_is_one_line_and_exit_2_and_force_replaces_only_event_files(tmp_path, capsys):
    store_dir = tmp_path / "store"
    shutil.copytree(SAMPLE / SAMPLE_RUN, store_dir / SAMPLE_RUN)
    out = tmp_path / "tb"

    def fails(*argv, needle):
        assert cli_main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err

    fails("no-such-run", "--store", str(store_dir), "--to", "tensorboard", str(out), needle="no-such-run")
    (tmp_path / "a-file").write_text("x")
    fails(SAMPLE_RUN, "--store", str(store_dir), "--to", "tensorboard", str(tmp_path / "a-file" / "tb"),
          needle="cannot write")
    fails(SAMPLE_RUN, "--store", str(store_dir), "--to", "wandb", str(out), needle="tensorboard")
    assert not out.exists()

    assert cli_main(["export", SAMPLE_RUN, "--store", str(store_dir), "--to", "tensorboard", str(out)]) == 0
    (out / SAMPLE_RUN / "notes.txt").write_text("keep me")
    fails(SAMPLE_RUN, "--store", str(store_dir), "--to", "tensorboard", str(out), needle="--force")
    assert cli_main(["export", SAMPLE_RUN, "--store", str(store_dir), "--to", "tensorboard", str(out),
                     "--force"]) == 0
    files = sorted(p.name for p in (out / SAMPLE_RUN).iterdir())
    assert files[-1] == "notes.txt" and len(files) == 2 and "tfevents" in files[0]
    # --out keeps working, and the two forms exclude each other.
    csv = tmp_path / "run.csv"
    assert cli_main(["export", SAMPLE_RUN, "--store", str(store_dir), "--out", str(csv)]) == 0
    assert csv.read_text().splitlines()[0].replace('"', "") == "step,metric,layer,value"
    with pytest.raises(SystemExit) as ei:
        cli_main(["export", SAMPLE_RUN, "--store", str(store_dir), "--out", str(csv), "--to", "tensorboard", "x"])
    assert ei.value.code == 2
