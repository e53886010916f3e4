"""Multi-rank training: the data-parallel arithmetic, one run in the store, identical decisions, a lost rank.

The fast tests check the pieces in one process (sharded loss gradients against the global batch's, the launcher's
argument handling, per-rank rows). The slow ones launch 2 gloo workers on CPU once (tests/distributed/distributed_workers.py)
for three runs: a plain one compared with a single-process run, one whose policy rolls back on a data-dependent
condition, and one whose rank 1 is SIGKILLed mid-run.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from tests.distributed.distributed_workers import run_jobs, tiny_config

from stability import metrics as M
from stability.cli import build_parser
from stability.commands import train as train_command
from stability.commands._nproc import _argv_for, maybe_launch
from stability.distributed.data_parallel import shard
from stability.distributed.launch import WorkerFailed, launch
from stability.distributed.rank_sink import RankSink
from stability.errors import UsageError
from stability.reference.data import BlankInfillingLoader
from stability.reference.model import GLM
from stability.reference.session import SessionOptions, build_trainer
from stability.store import RunStore


# ---- one process ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,rows", [(2, 4), (4, 8)])
def test_sharded_losses_average_to_the_global_batch_gradient(world, rows):
    cfg = tiny_config(1)
    torch.manual_seed(0)
    model = GLM(cfg.model)
    batch = BlankInfillingLoader(rows, cfg.seq_len, seed=5).batch_at(3)
    global_loss = model.loss(batch)
    global_loss.backward()
    want = [p.grad.clone() for p in model.parameters()]
    # What DDP does: each rank's gradient of its own loss term, then the mean over ranks.
    got = [torch.zeros_like(g) for g in want]
    terms = []
    for r in range(world):
        model.zero_grad(set_to_none=True)
        local, normalizer = shard(batch, r, world)
        assert local.tokens.shape[0] == rows // world
        loss = model.loss(local, normalizer=normalizer)
        loss.backward()
        terms.append(loss.item())
        for acc, p in zip(got, model.parameters()):
            acc += p.grad / world
    assert sum(terms) / world == pytest.approx(global_loss.item(), rel=1e-6)
    for g, w in zip(got, want):
        assert torch.linalg.vector_norm(g - w) <= 1e-5 * torch.linalg.vector_norm(w)


def test_shard_takes_contiguous_rows_and_rejects_an_uneven_split():
    batch = BlankInfillingLoader(6, 32, seed=1).batch_at(0)
    local, normalizer = shard(batch, 1, 3)
    assert torch.equal(local.tokens, batch.tokens[2:4])
    assert torch.equal(local.attn_mask, batch.attn_mask[2:4])
    assert normalizer == batch.n_targets / 3
    with pytest.raises(ValueError, match="evenly"):
        shard(batch, 0, 4)


def _train_args(*flags):
    return build_parser().parse_args(["train", *flags])


def test_workers_get_the_same_flags_back():
    args = _train_args("--steps", "7", "--lr", "0.003", "--no-detect", "--ln", "sandwich", "--nproc", "2",
                       "--run", "r", "--grad-clip", "0.5")
    again = _train_args(*_argv_for(args, train_command.add_arguments))
    want = {k: v for k, v in vars(args).items() if k not in ("nproc", "_run")}
    assert {k: v for k, v in vars(again).items() if k not in ("nproc", "_run")} == want
    assert again.nproc == 1


def test_maybe_launch_trains_here_for_one_process_and_checks_its_input():
    def launch_here(*flags):
        return maybe_launch(_train_args(*flags), train_command.add_arguments, lambda: "unused")

    assert launch_here("--steps", "1") is None
    with pytest.raises(UsageError, match="--nproc"):
        launch_here("--nproc", "0")
    with pytest.raises(UsageError, match="--batch-size 16 must be divisible by --nproc 3"):
        launch_here("--nproc", "3", "--batch-size", "16")


def test_rank_sink_keeps_global_rows_to_rank_0(tmp_path):
    store = RunStore(tmp_path)
    w0 = store.create_run("r", config={"ln": "pre"})
    w1 = store.create_run("r", exist_ok=True)
    s0, s1 = RankSink(w0, 0), RankSink(w1, 1)
    for s, r in ((s0, 0), (s1, 1)):
        s.log(0, {(M.LOSS, ""): 1.0 + r})          # global: only rank 0's is kept
        s.log(0, {(M.STEP_TIME, ""): 0.1 * (r + 1)}, rank=r)
        s.event(0, M.EV_ALERT, severity="warning")
    # Closing as failed takes no barrier: what a rank does when the group is gone.
    s1.close(status=M.ST_FAILED)
    w0.close(status=M.ST_FAILED)
    df = store.metrics("r", rank=None)
    assert df[df["rank"] == -1]["value"].tolist() == [1.0]
    assert sorted(df[df["rank"] >= 0]["rank"]) == [0, 1]
    assert len(store.events("r")) == 1
    assert store.list_runs()["status"].tolist() == [M.ST_FAILED]


# ---- two gloo processes ----------------------------------------------------------------------------------------
JOBS = [
    {"run": "plain", "steps": 4},
    {"run": "rollback", "steps": 10, "rollback": True},
    {"run": "poisoned", "steps": 3, "poison": [1, 1]},
    {"run": "killed", "steps": 400, "kill": [1, 3]},
]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    out = tmp_path_factory.mktemp("out")
    saved = os.environ.get("STABILITY_DIST_TIMEOUT")
    os.environ["STABILITY_DIST_TIMEOUT"] = "20"
    try:
        with pytest.raises(WorkerFailed) as failed:
            launch(run_jobs, 2, (str(store), str(out), JOBS))
    finally:
        if saved is None:
            os.environ.pop("STABILITY_DIST_TIMEOUT")
        else:
            os.environ["STABILITY_DIST_TIMEOUT"] = saved
    return {"store": store, "out": out, "ended": time.time(), "error": failed.value}


def per_rank(store, run, metric, layer=M.NO_LAYER):
    """step x rank table of one series' per-rank rows (the global rows, rank -1, left out)."""
    df = store.metrics(run, metrics=[metric], layers=[layer], rank=None)
    df = df[df["rank"] != M.GLOBAL_RANK]
    return df.pivot_table(index="step", columns="rank", values="value", aggfunc="last")


def _seen(out, run, rank):
    return json.loads((out / f"{run}-rank{rank}.json").read_text())


@pytest.mark.slow
def test_two_ranks_log_the_single_process_gradient_norms(launched):
    store = RunStore(launched["store"])
    threads = torch.get_num_threads()
    try:
        build_trainer(tiny_config(4), SessionOptions(store=launched["store"], run="single", progress=False)).fit()
    finally:
        torch.set_num_threads(threads)
    grads = {}
    for run in ("plain", "single"):
        df = store.metrics(run, metrics=[M.GRAD_NORM, M.LOSS, M.ATTN_SCORE_MAX])
        grads[run] = {(s, m, l): v for s, m, l, v in df[["step", "metric", "layer", "value"]].itertuples(index=False)}
    assert grads["plain"].keys() == grads["single"].keys()
    layers = {l for (_, m, l) in grads["single"] if m == M.GRAD_NORM}
    assert {M.LAYER_TOTAL, M.LAYER_EMBEDDING, "layers.0", "layers.1", "head"} <= layers
    assert {s for (s, _, _) in grads["single"]} == {0, 1, 2, 3}
    for key, want in grads["single"].items():
        assert abs(grads["plain"][key] - want) <= 1e-5 * abs(want), key


@pytest.mark.slow
def test_one_run_per_job_with_every_ranks_own_rows(launched):
    store = RunStore(launched["store"])
    runs = store.list_runs().set_index("run")
    assert {"plain", "rollback", "killed"} <= set(runs.index)
    assert runs.loc["plain", "status"] == M.ST_FINISHED
    assert store.run_info("plain")["config"]["world_size"] == 2
    df = store.metrics("plain", rank=None)
    ranks = df[df["rank"] >= 0]
    for metric in (M.STEP_TIME, M.LOSS, "compute_time"):
        assert set(ranks[ranks["metric"] == metric]["rank"]) == {0, 1}, metric
    nonfinite = per_rank(store, "plain", M.NONFINITE_GRADS, M.LAYER_TOTAL)
    assert nonfinite.shape == (4, 2) and (nonfinite == 0).all().all()
    # Each rank's own loss is the mean over its rows; with the global loss they agree to the targets' weights.
    local = per_rank(store, "plain", M.LOSS)
    glob = store.metrics("plain", metrics=[M.LOSS]).set_index("step")["value"]
    assert ((local.min(axis=1) <= glob + 1e-9) & (glob <= local.max(axis=1) + 1e-9)).all()
    assert per_rank(store, "plain", "compute_time").shape == (4, 2)  # every rank times every step


@pytest.mark.slow
def test_every_rank_decides_on_the_same_values_and_rolls_back_at_the_same_step(launched):
    r0, r1 = _seen(launched["out"], "rollback", 0), _seen(launched["out"], "rollback", 1)
    assert r0["world"] == r1["world"] == 2
    assert r0["fired_at"] is not None and r0["fired_at"] == r1["fired_at"]
    assert r0["seen"] == r1["seen"]  # records and alerts, bit for bit
    assert r0["losses"] == r1["losses"]
    steps = [s for s, _, _ in r0["seen"]]
    assert steps.count(1) == 2  # step 1 ran twice: before and after the rollback
    store = RunStore(launched["store"])
    every = store.metrics("rollback", metrics=[M.LOSS], branches="all")
    assert len(every) == len(steps) and store.rewinds("rollback") == [(1, 1)]
    # Read along the lineage, every step once, the global rows and each rank's own rows alike: the values the run
    # went on with (r0["losses"] lists them in the order trained, so the retry's come last).
    lineage = store.metrics("rollback", metrics=[M.LOSS])
    assert lineage["step"].tolist() == sorted(set(steps))
    last = {s: v for s, v in zip(steps, r0["losses"])}
    assert lineage["value"].tolist() == pytest.approx([last[s] for s in sorted(last)])
    ranks = store.metrics("rollback", metrics=[M.LOSS], rank=None)
    for r in (0, 1):
        assert ranks[ranks["rank"] == r]["step"].tolist() == sorted(set(steps))


@pytest.mark.slow
def test_per_rank_nonfinite_counts_name_the_rank_that_produced_the_nan(launched):
    store = RunStore(launched["store"])
    counts = per_rank(store, "poisoned", M.NONFINITE_GRADS, M.LAYER_TOTAL)
    assert counts.loc[0].tolist() == [0, 0]
    assert counts.loc[1, 0] == 0 and counts.loc[1, 1] > 0  # rank 1's own gradients, before averaging
    glob = store.metrics("poisoned", metrics=[M.NONFINITE_GRADS], layers=[M.LAYER_TOTAL]).set_index("step")["value"]
    assert glob[0] == 0 and glob[1] > 0  # after averaging, every rank holds the NaN
    alerts = store.events("poisoned", kinds=[M.EV_ALERT])
    assert 1 in set(alerts["step"]) and set(alerts["rank"]) == {M.GLOBAL_RANK}


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_nothing_hangs(launched):
    assert "rank 1: killed by SIGKILL" in str(launched["error"])
    killed_at = float((launched["out"] / "killed-killed").read_text())
    # The survivors noticed and were stopped well within the collective timeout plus the shutdown grace.
    assert launched["ended"] - killed_at < 20 + 10 + 15
    store = RunStore(launched["store"])
    assert store.list_runs().set_index("run").loc["killed", "status"] == M.ST_FAILED
    loss = store.series("killed", M.LOSS)
    assert loss["step"].tolist()[:3] == [0, 1, 2] and loss["value"].map(math.isfinite).all()
