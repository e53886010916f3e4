"""Every policy action lands in the real run store, and `stability events RUN --store DIR --json` shows it."""

import json

import pytest

from stability import metrics as M
from stability.cli import main
from stability.reference.config import ModelConfig, TrainConfig
from stability.policies import EGSConfig, EmbeddingGradShrink, Rollback, RollbackConfig, SkipStep, SkipStepConfig
from stability.reference.session import SessionOptions, build_trainer
from stability.store import RunStore

TRAINED = {}  # what the trainer itself saw, for references computed outside the store


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, scripted_detector):
    d = tmp_path_factory.mktemp("store")
    cfg = TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2), batch_size=4, seq_len=32, steps=8,
                      warmup=2, threads=1)
    policies = [SkipStep(SkipStepConfig(enabled=True)),
                EmbeddingGradShrink(EGSConfig(mode="adaptive", calm_steps=50)),
                Rollback(RollbackConfig(enabled=True, interval=2, settle_steps=0, skip_batches=9,
                                        on=("critical",)))]
    t = build_trainer(cfg, SessionOptions(store=d, run="r1", monitor=False, detect=False, progress=False,
                                          policies=policies))
    t.detector = scripted_detector({5}, once=True, signal="emb_grad_rate",
                                   message="embedding gradient norm growing fast")
    t.fit()
    TRAINED["losses"] = list(t.losses)  # in the order trained: steps 0-5, then 4-7 again after the rollback
    return d


def test_actions_are_events_in_the_store_with_what_why_and_which_alert(store_dir):
    ev = RunStore(store_dir).events("r1")
    kinds = list(ev["kind"])
    assert kinds.count(M.EV_ALERT) == 1 and kinds.count(M.EV_EGS_ON) == 1 and kinds.count(M.EV_ROLLBACK) == 1
    roll = ev[ev["kind"] == M.EV_ROLLBACK].iloc[0]
    assert roll["step"] == 5 and roll["severity"] == "warning"
    assert roll["detail"]["to_step"] == 4 and roll["detail"]["skip_batches"] == 9
    assert roll["detail"]["alert"]["signal"] == "emb_grad_rate" and roll["detail"]["alert"]["step"] == 5
    egs = ev[ev["kind"] == M.EV_EGS_ON].iloc[0]
    assert egs["detail"]["alert"]["severity"] == "critical" and egs["detail"]["alpha"] == 0.1
    ckpts = RunStore(store_dir).checkpoints("r1")
    assert list(ckpts["location"].str.startswith("memory:ring-")) == [True] * len(ckpts) and len(ckpts) >= 4
    # EGS_ACTIVE is logged on every logged step: 0 before the alert, 1 after (steps 4 and 5 are run twice).
    m = RunStore(store_dir).metrics("r1", metrics=[M.EGS_ACTIVE])
    assert set(m["value"]) == {0.0, 1.0} and m[m["value"] == 1.0]["step"].min() >= 4


def test_the_store_reads_the_replayed_steps_from_the_branch_that_replaced_them(store_dir):
    losses = TRAINED["losses"]
    assert len(losses) == 10  # 6 steps, a rollback to step 4, 4 more
    store = RunStore(store_dir)
    loss = store.metrics("r1", metrics=[M.LOSS])
    assert loss["step"].tolist() == list(range(8))
    assert loss["value"].tolist() == losses[:4] + losses[6:]  # steps 0-3 once; 4-7 from after the rollback
    assert store.rewinds("r1") == [(1, 4)]
    every = store.metrics("r1", metrics=[M.LOSS], branches="all")
    assert every["value"].tolist() == losses and every["branch"].tolist() == [0] * 6 + [1] * 4


def test_events_command_prints_the_json_contract(store_dir, capsys):
    assert main(["events", "r1", "--store", str(store_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == "r1" and isinstance(out["events"], list)
    for e in out["events"]:
        assert isinstance(e["step"], int) and isinstance(e["kind"], str) and isinstance(e["detail"], dict)
    # The trail in the order it happened: the rollback ends branch 0, the replayed steps' events are branch 1.
    roll = next(i for i, e in enumerate(out["events"]) if e["kind"] == M.EV_ROLLBACK)
    assert {e["branch"] for e in out["events"][:roll + 1]} == {0}
    assert {e["branch"] for e in out["events"][roll + 1:]} <= {1}
    assert [e["kind"] for e in out["events"]].count(M.EV_ROLLBACK) == 1
    assert main(["events", "r1", "--store", str(store_dir), "--json", "--kind", "rollback"]) == 0
    only = json.loads(capsys.readouterr().out)["events"]
    assert [e["kind"] for e in only] == [M.EV_ROLLBACK]
    assert main(["events", "r1", "--store", str(store_dir)]) == 0
    text = capsys.readouterr().out
    assert "rollback" in text and "-> step 4" in text


def test_events_command_refuses_an_unknown_run_or_store(store_dir, tmp_path, capsys):
    assert main(["events", "nope", "--store", str(store_dir), "--json"]) == 2
    assert main(["events", "r1", "--store", str(tmp_path / "missing")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_policies_demo_command_runs_and_reports_the_table_fields(capsys):
    """A shorter version of the README demonstration (the full one is `stability policies-demo`, 300 steps)."""
    assert main(["policies-demo", "--steps", "200", "--json", "--runs", "egs+rollback+backoff", "no-policies"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = {r["run"]: r for r in out["runs"]}
    assert list(runs) == ["no-policies", "egs+rollback+backoff", "calm-baseline"]  # plan order, calm last
    for r in runs.values():
        for key in ("spikes", "max_loss", "diverged", "final_loss", "val_loss", "vs_calm_pct", "rollbacks",
                    "steps_computed", "wall_s"):
            assert key in r, key
    # Without policies the unstable configuration goes wrong late in its 200-step warm-up: a labelled spike near step
    # 195 on one CPU, on another (floating-point sums round differently) a climb that leaves its held-out loss 20 %
    # above the calm run's; the detector warns before either, and the policies roll back and back off on the warning.
    assert runs["no-policies"]["spikes"] >= 1 or runs["no-policies"]["diverged"], runs["no-policies"]
    assert runs["no-policies"]["rollbacks"] == 0 and runs["no-policies"]["events"].get(M.EV_ALERT, 0) >= 1
    assert runs["egs+rollback+backoff"]["rollbacks"] >= 1 and not runs["egs+rollback+backoff"]["diverged"]
    assert runs["egs+rollback+backoff"]["vs_calm_pct"] < runs["no-policies"]["vs_calm_pct"]
    assert runs["egs+rollback+backoff"]["events"].get(M.EV_EGS_ON, 0) >= 1
    assert runs["calm-baseline"]["vs_calm_pct"] == 0.0


@pytest.mark.slow
def test_bench_policies_reports_ring_cost_relative_to_step_time(capsys):
    assert main(["bench", "policies", "--json", "--steps", "3", "--saves", "2", "--keep", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    for storage in ("memory", "disk"):
        expect = 100 * out[f"checkpoint_ms_{storage}"] / out["interval"] / out["step_ms"]
        assert out[f"overhead_pct_{storage}"] == pytest.approx(expect, rel=0.05, abs=1e-3)
    # One entry holds the model, AdamW's two moments (fp32) and small extras: a bit over 3x the parameters.
    assert 12 * out["params"] <= out["entry_bytes"] <= 13 * out["params"]
    assert out["ring_bytes"] == 2 * out["entry_bytes"] and out["restore_ms"] > 0


def test_train_flags_build_policies_that_run_with_the_real_monitor_and_detector(tmp_path):
    """`stability train`'s parser and session wiring, tiny run, every policy on."""
    import argparse

    from stability.commands import train as train_cmd

    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    args = p.parse_args(["--d-model", "32", "--n-layer", "2", "--n-head", "2", "--batch-size", "4", "--seq-len",
                         "32", "--steps", "6", "--threads", "1", "--egs", "always", "--rollback",
                         "--rollback-interval", "2", "--skip-step", "--lr-backoff", "--store", str(tmp_path)])
    opts = train_cmd.session_options(args)
    assert len(opts.policies) == 4
    opts.run, opts.progress = "flags", False
    t = build_trainer(train_cmd.config_from_args(args), opts)
    r = t.fit()
    assert r.status == M.ST_FINISHED
    ev = RunStore(tmp_path).events("flags")
    assert {M.EV_EGS_ON, M.EV_CHECKPOINT} <= set(ev["kind"])
    assert not t.model.embedding._forward_hooks  # close() removed the EGS hook
    m = RunStore(tmp_path).metrics("flags", metrics=[M.EGS_ACTIVE, M.GRAD_NORM], layers=["", "embedding"])
    assert set(m[m["metric"] == M.EGS_ACTIVE]["value"]) == {1.0}
