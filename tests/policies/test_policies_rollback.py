"""Rollback: bit-for-bit restore of model, optimizer, scaler, RNG and detector; exact data skip; bounded retries
and escalation; checkpoint ring bounds; a checkpoint that cannot be written is an event, not a crash."""

import json
import math

import numpy as np
import pytest
import torch

from stability import metrics as M
from stability.alerting import NullNotifier
from stability.detector import Alert, OnlineDetector
from stability.policies import CheckpointRing, Policy, Rollback, RollbackConfig
from stability.policies.checkpoint_ring import clone_state


def _assert_bitwise_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def _run_steps(t, n):
    """n steps of the real trainer's loop (the pipeline included)."""
    for _ in range(n):
        t.advance()


@pytest.mark.parametrize("precision,storage", [("fp32", "memory"), ("fp16", "disk")])
def test_rollback_restores_everything_bit_for_bit_and_loader_continues_exactly_k_batches_further(
        precision, storage, tmp_path, tiny_trainer, scripted_detector):
    K = 7
    cfg = RollbackConfig(enabled=True, interval=4, keep=3, skip_batches=K, settle_steps=0, on=("critical",),
                         storage=storage, directory=str(tmp_path / "ckpt") if storage == "disk" else "")
    rb = Rollback(cfg)
    t = tiny_trainer(steps=12, precision=precision, policies=[rb], detector=scripted_detector({9}),
                     init_loss_scale=2.0**20)
    _run_steps(t, 8)              # checkpoints at trainer.step 0, 4, 8
    assert [e.step for e in rb.ring.entries] == [0, 4, 8]
    saved = clone_state(t.state_dict())        # the state at step 8, independently copied
    saved_detector = dict(t.detector.state_dict())
    _run_steps(t, 2)                 # steps 8 and 9; the alert at 9 rolls back to step 8
    assert rb.rollbacks == 1 and t.step == 8
    now = t.state_dict()
    expected = dict(saved, loader=dict(saved["loader"], position=saved["loader"]["position"] + K))
    _assert_bitwise_equal(now, expected)
    assert t.detector.state_dict() == saved_detector
    # The next batch is exactly the K-th one after the checkpoint's position, and the RNG draws the same numbers.
    nxt = t.loader.next()
    ref = t.loader.batch_at(saved["loader"]["position"] + K)
    assert torch.equal(nxt.tokens, ref.tokens) and torch.equal(nxt.targets, ref.targets)
    torch.set_rng_state(saved["rng"]["torch"])
    a = torch.rand(5)
    torch.set_rng_state(now["rng"]["torch"])
    assert torch.equal(torch.rand(5), a)
    ev = [e for e in t.sink.events if e[1] == M.EV_ROLLBACK][0]
    assert ev[0] == 9 and ev[3]["to_step"] == 8 and ev[3]["skip_batches"] == K
    assert ev[3]["alert"]["signal"] == "emb_grad_z" and ev[3]["attempt"] == 1
    assert [e.step for e in rb.ring.entries] == [0, 4, 8]
    if storage == "disk":
        assert sorted(p.name.endswith(".pt") for p in (tmp_path / "ckpt").iterdir()) == [True] * 3
    rb.close()


def test_restored_run_equals_a_run_that_never_saw_the_spike_but_skipped_the_same_batches(
        tiny_trainer, scripted_detector):
    """Training on after the rollback is the same computation as a fresh run resumed from the checkpoint."""
    rb = Rollback(RollbackConfig(enabled=True, interval=3, keep=2, skip_batches=5, settle_steps=0, on=("critical",)))
    t = tiny_trainer(steps=12, policies=[rb], detector=scripted_detector({7}, once=True))
    _run_steps(t, 6)
    ref = tiny_trainer(steps=12)
    ref.load_state_dict(clone_state(t.state_dict()))
    ref.loader.skip(5)
    _run_steps(t, 2 + 4)             # steps 6, 7 (rollback to 6), then 6..9 again
    _run_steps(ref, 4)
    assert t.losses[-4:] == ref.losses[-4:]
    for (n, p), q in zip(t.model.named_parameters(), ref.model.parameters()):
        assert torch.equal(p, q), n


def test_the_same_spike_coming_back_escalates_after_max_retries_and_stops(tiny_trainer, scripted_detector):
    rb = Rollback(RollbackConfig(enabled=True, interval=2, keep=4, skip_batches=1, settle_steps=0,
                                 max_retries=2, on=("critical",)))
    t = tiny_trainer(steps=40, policies=[rb], detector=scripted_detector(range(5, 40)))
    t.fit()
    kinds = t.sink.kinds(M.EV_ROLLBACK, M.EV_ESCALATE)
    assert kinds == [M.EV_ROLLBACK, M.EV_ROLLBACK, M.EV_ESCALATE]
    rolls = [e[3] for e in t.sink.events if e[1] == M.EV_ROLLBACK]
    assert rolls[1]["to_step"] < rolls[0]["to_step"]  # a retry goes one checkpoint further back
    assert t.stop_reason and "rollback" in t.stop_reason and t.sink.status == M.ST_STOPPED


def test_escalate_continue_stops_rolling_back_but_keeps_training(tiny_trainer, scripted_detector):
    rb = Rollback(RollbackConfig(enabled=True, interval=2, keep=4, skip_batches=1, settle_steps=3,
                                 max_retries=1, escalate="continue", on=("critical",)))
    t = tiny_trainer(steps=20, policies=[rb], detector=scripted_detector({5, 6, 7}))
    r = t.fit()
    assert r.status == M.ST_FINISHED and t.step == 20
    assert t.sink.kinds(M.EV_ROLLBACK, M.EV_ESCALATE) == [M.EV_ROLLBACK, M.EV_ESCALATE]


class BlowUpAfter(Policy):
    """Writes a NaN into the output head after step `step`: the next step's loss is NaN (the model blew up)."""

    def __init__(self, step):
        self.step = step

    def after_step(self, host, step, record, alerts):
        if step == self.step:
            with torch.no_grad():
                host.model.head.weight[0, 0] = float("nan")


def test_actual_loss_spike_triggers_rollback_without_any_detector(tiny_trainer):
    rb = Rollback(RollbackConfig(enabled=True, interval=2, skip_batches=3, settle_steps=0, on=("spike",)))
    t = tiny_trainer(steps=6, policies=[rb, BlowUpAfter(3)])  # the rollback checkpoints before the blow-up
    _run_steps(t, 5)
    assert math.isnan(t.losses[4])              # step 4 blew up
    assert t.step == 4 and t.sink.kinds(M.EV_ROLLBACK) == [M.EV_ROLLBACK]
    assert "nan" in t.sink.events[-1][3]["reason"] and t.sink.events[-1][0] == 4
    assert torch.isfinite(t.model.head.weight).all()  # the state before the blow-up is back


def test_checkpoint_that_cannot_be_written_is_an_event_and_training_goes_on(tmp_path, tiny_trainer):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint folder should be")
    rb = Rollback(RollbackConfig(enabled=True, interval=2, storage="disk", directory=str(blocker / "ckpt")))

    class Pager(NullNotifier):
        """Records what the run's notifier is asked to send."""

        def __init__(self):
            self.sent = []

        def notify(self, kind, step=None, severity=None, signal="", score=None, message=""):
            self.sent.append((kind, severity, signal))

    t = tiny_trainer(steps=6, policies=[rb], notifier=Pager())
    r = t.fit()
    assert r.status == M.ST_FINISHED and t.step == 6
    assert t.notifier.sent[0] == (M.EV_ALERT, "warning", "checkpoint_failed") and len(t.notifier.sent) == 4
    failed = [e for e in t.sink.events if e[1] == M.EV_CHECKPOINT_FAILED]
    assert len(failed) == 4 and failed[0][2] == "warning" and "failed" in failed[0][3]["error"]
    assert rb.failures == 4 and not t.sink.checkpoints


def test_dry_run_records_the_rollback_it_would_do_and_changes_nothing(tiny_trainer, scripted_detector):
    rb = Rollback(RollbackConfig(enabled=True, interval=2, skip_batches=3, settle_steps=0, on=("critical",)),
                  dry_run=True)
    t = tiny_trainer(steps=6, policies=[rb], detector=scripted_detector({4}))
    ref = tiny_trainer(steps=6)
    t.fit(), ref.fit()
    assert t.losses == ref.losses
    dry = [e for e in t.sink.events if e[1] == M.EV_DRY_RUN]
    assert len(dry) == 1 and dry[0][3]["would"] == M.EV_ROLLBACK and dry[0][3]["to_step"] == 4
    assert not rb.ring.entries and not t.sink.kinds(M.EV_ROLLBACK, M.EV_CHECKPOINT)


def test_ring_is_bounded_clones_tensors_and_drops_the_abandoned_timeline(tmp_path):
    w = torch.ones(3)
    ring = CheckpointRing(keep=2)
    for step in range(4):
        ring.save(step, {"w": w})
        w.add_(1)                             # in-place, as an optimizer would
    assert [e.step for e in ring.entries] == [2, 3]
    assert torch.equal(ring.load(ring.entries[0])["w"], torch.full((3,), 3.0))
    loaded = ring.load(ring.entries[0])
    loaded["w"].add_(100)                     # what load_state_dict may do with a state it keeps
    assert torch.equal(ring.load(ring.entries[0])["w"], torch.full((3,), 3.0))
    ring.drop_after(2)
    assert [e.step for e in ring.entries] == [2]
    disk = CheckpointRing(keep=2, directory=tmp_path)
    for step in range(3):
        disk.save(step, {"w": torch.tensor([float(step)])})
    assert len(list(tmp_path.iterdir())) == 2 and disk.nbytes() > 0
    disk.clear()
    assert not list(tmp_path.iterdir())


def test_real_detector_state_survives_the_rollback(tiny_trainer):
    rb = Rollback(RollbackConfig(enabled=True, interval=3, settle_steps=0, skip_batches=2, on=("warning",)))
    det = OnlineDetector()
    t = tiny_trainer(steps=6, policies=[rb], detector=det)
    t.guard.attach_policies()
    for step in range(6):
        det.update(step, {"loss": 3.0 - 0.01 * step, "grad_norm/embedding": 1.0, "grad_norm/total": 2.0})
        t.step = step + 1
        t.losses.append(1.0)
        rb.after_step(t, step, None, [])
    snap = det.state_dict()
    det.update(6, {"loss": 2.0, "grad_norm/embedding": 1.0})
    t.step = 7
    rb.after_step(t, 6, None, [Alert(6, "emb_grad_z", 1.2, "warning", "test")])
    as_text = lambda state: json.dumps(state, sort_keys=True, default=str)  # noqa: E731  (NaN-safe equality)
    assert t.step == 6 and as_text(det.state_dict()) == as_text(snap)
