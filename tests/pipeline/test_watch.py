"""stability.watch on a plain PyTorch loop: gradient norms before clipping (also under a GradScaler and with
gradient accumulation) against torch.nn.utils.get_total_norm, the run's status, the policies acting in a loop
that is not ours, hooks removed, and bad input refused before the first step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import stability
from stability import metrics as M
from stability.policies import (
    EGSConfig, LRBackoff, LRBackoffConfig, PolicyConfig, Rollback, RollbackConfig, SkipStepConfig,
)
from stability.store import RunStore

V, D = 32, 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.ff = nn.Linear(D, D)

    def forward(self, x):
        a, _ = self.attn(x, x, x, need_weights=False)
        return x + self.ff(torch.tanh(x + a))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, V)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


BLOCKS = {"embedding": "embed", "layers.0": "layers.0", "layers.1": "layers.1", "head": "head"}


def loss_of(model, x):
    return F.cross_entropy(model(x)[:, :-1].reshape(-1, V).float(), x[:, 1:].reshape(-1))


def reference_norms(model, scale: float = 1.0) -> dict:
    """Gradient norms from the definition, per block by module path and in total (divided by a loss scale)."""
    out = {name: float(torch.nn.utils.get_total_norm([p.grad for p in model.get_submodule(path).parameters()]))
           / scale for name, path in BLOCKS.items()}
    out["total"] = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])) / scale
    return out


def data(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (steps, 4, 12), generator=g)


def test_gradient_norms_are_read_before_the_loops_clipping(tmp_path):
    torch.manual_seed(0)
    model, batches = Tiny(), data(3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    expected, records = [], []
    with stability.watch(model, opt, store=tmp_path, run="r") as guard:
        for x in batches:
            loss = loss_of(model, x)
            opt.zero_grad()
            loss.backward()
            expected.append(reference_norms(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # rewrites every gradient in place
            opt.step()
            records.append(guard.step(loss))
    for want, rec in zip(expected, records):
        assert want["total"] > 1e-2  # clipping really changed the gradients
        for layer, value in want.items():
            assert rec[(M.GRAD_NORM, layer)] == pytest.approx(value, rel=1e-5), layer
    store = RunStore(tmp_path)
    assert store.run_info("r")["status"] == M.ST_FINISHED
    df = store.metrics("r", metrics=[M.GRAD_NORM], layers=[M.LAYER_TOTAL])
    assert list(df["value"]) == pytest.approx([w["total"] for w in expected], rel=1e-5)
    # The hooks are gone: a plain optimizer and model again.
    assert "step" not in opt.__dict__ and not model._forward_pre_hooks


def test_gradscaler_norms_are_divided_by_the_scale_fp16_autocast(tmp_path):
    torch.manual_seed(0)
    model, batches = Tiny(), data(2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    expected, records = [], []
    with stability.watch(model, opt, scaler=scaler, probes={"attention": False}) as guard:
        for x in batches:
            with torch.autocast("cpu", dtype=torch.float16):
                loss = loss_of(model, x)
            opt.zero_grad()
            scaler.scale(loss).backward()
            expected.append(reference_norms(model, scale=float(scaler.get_scale())))
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            scaler.step(opt)
            scaler.update()
            records.append(guard.step(loss))
    for want, rec in zip(expected, records):
        assert rec[(M.SKIPPED_STEP, "")] == 0.0
        for layer, value in want.items():
            assert rec[(M.GRAD_NORM, layer)] == pytest.approx(value, rel=1e-5), layer


def test_gradient_accumulation_reads_after_the_last_backward():
    torch.manual_seed(0)
    model, batches = Tiny(), data(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with stability.watch(model, opt, accumulation=2) as guard:
        opt.zero_grad()
        for x in batches[:2]:
            (loss_of(model, x) / 2).backward()
        want = reference_norms(model)
        opt.step()
        rec = guard.step(torch.tensor(1.0))
    assert rec[(M.GRAD_NORM, "total")] == pytest.approx(want["total"], rel=1e-5)


def test_an_exception_in_the_loop_marks_the_run_failed(tmp_path):
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match="boom"):
        with stability.watch(model, opt, store=tmp_path, run="bad") as guard:
            loss = loss_of(model, data(1)[0])
            loss.backward()
            opt.step()
            guard.step(loss)
            raise RuntimeError("boom")
    assert RunStore(tmp_path).run_info("bad")["status"] == M.ST_FAILED


def test_bad_input_is_refused_before_anything_starts(tmp_path):
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="store .*file"):
        stability.watch(model, opt, store=blocker / "runs", run="r")
    with pytest.raises(TypeError, match="evrey"):
        stability.watch(model, opt, evrey=2)
    bad = tmp_path / "p.toml"
    bad.write_text("[egs]\nmode = \"sometimes\"\n")
    with pytest.raises(ValueError, match=r"p\.toml:2"):
        stability.watch(model, opt, store=tmp_path / "s", run="r", policies=bad)
    with pytest.raises(ValueError, match="every"):
        stability.watch(model, opt, every=0)
    with pytest.raises(ValueError, match="detect: unknown field 'risk_threshhold'"):
        stability.watch(model, opt, store=tmp_path / "s", run="r", detect={"risk_threshhold": 0.5})
    with pytest.raises(ValueError, match="detect: .*risk_threshold must be in"):
        stability.watch(model, opt, store=tmp_path / "s", run="r", detect={"risk_threshold": 1.5})
    with pytest.raises(ValueError, match="detect: expected"):
        stability.watch(model, opt, detect="yes")
    assert not (tmp_path / "s").exists() or not RunStore(tmp_path / "s").run_names()
    assert not model._forward_pre_hooks and "step" not in opt.__dict__


def test_a_model_without_embedding_gets_one_warning_and_the_rest_is_recorded():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard = stability.watch(model, opt)
    ours = [w for w in caught if "stability.watch" in str(w.message)]
    assert len(ours) == 1 and "nn.Embedding" in str(ours[0].message)
    loss = model(torch.randn(3, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    rec = guard.step(loss)
    guard.close()
    assert rec[(M.GRAD_NORM, "total")] > 0 and rec[(M.LOSS, "")] == pytest.approx(loss.item())


def test_skip_step_wraps_the_optimizer_and_judges_the_unclipped_norm(tmp_path):
    torch.manual_seed(0)
    model, batches = Tiny(), data(8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    policy = PolicyConfig(skip_step=SkipStepConfig(enabled=True, min_history=3, window=10))
    with stability.watch(model, opt, store=tmp_path, run="skip", policies=policy) as guard:
        for i, x in enumerate(batches):
            loss = loss_of(model, x) * (1e4 if i == 6 else 1.0)  # one step's gradients 10^4 times larger
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # clipped, it would look ordinary
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
            assert changed == (i != 6), i
            rec = guard.step(loss)
            assert rec.get((M.SKIPPED_STEP, ""), 0.0) == (1.0 if i == 6 else 0.0)
    ev = RunStore(tmp_path).events("skip")
    assert list(ev[ev.kind == M.EV_SKIP_STEP].step) == [6]


def test_lr_backoff_scales_the_update_and_leaves_the_schedule_alone():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = stability.watch(model, opt, probes=False, detect=False, policies=[LRBackoff(LRBackoffConfig(True))])
    guard.host.lr_scale = 0.25  # what the policy sets on an alert
    w0 = model.weight.detach().clone()
    loss = model(torch.ones(1, 3)).sum()
    loss.backward()
    grad = model.weight.grad.clone()
    opt.step()
    rec = guard.step(loss)
    guard.close()
    assert torch.allclose(model.weight.detach(), w0 - 0.1 * 0.25 * grad)
    assert opt.param_groups[0]["lr"] == 0.1 and rec[(M.LR, "")] == pytest.approx(0.025)


def test_rollback_restores_the_state_and_skips_data_in_the_users_loop(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = stability.SkippableBatches(list(data(12)))
    policy = Rollback(RollbackConfig(enabled=True, interval=2, skip_batches=3, settle_steps=0))
    seen = []
    with stability.watch(model, opt, store=tmp_path, run="rb", policies=[policy], data=batches,
                         probes=False) as guard:
        for x in batches:
            seen.append(batches.position)
            if guard.host.step == 4:
                saved = {k: v.clone() for k, v in model.state_dict().items()}
            loss = loss_of(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(float("nan") if len(seen) == 6 else loss)  # step 5 spikes: back to the state at step 4
            if len(seen) == 6:
                assert guard.host.step == 4
                assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert seen == [1, 2, 3, 4, 5, 6, 10, 11, 12]  # batches 7-9 skipped after the rollback
    ev = RunStore(tmp_path).events("rb")
    assert list(ev[ev.kind == M.EV_ROLLBACK].step) == [5]


def test_egs_scales_the_embedding_gradient_by_alpha_in_a_users_loop():
    x = data(1)[0]
    grads = []
    for policies in (None, PolicyConfig(egs=EGSConfig(mode="always", alpha=0.25))):
        torch.manual_seed(0)
        model = Tiny()
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        with stability.watch(model, opt, probes=False, policies=policies) as guard:
            loss = loss_of(model, x)
            loss.backward()
            grads.append((model.embed.weight.grad.clone(), model.head.weight.grad.clone()))
            opt.step()
            guard.step(loss)
    (e0, h0), (e1, h1) = grads
    assert torch.equal(h1, h0)  # every other gradient untouched
    assert torch.allclose(e1, 0.25 * e0, rtol=0, atol=1e-12) and not math.isclose(e0.abs().sum(), 0)


@pytest.mark.slow
def test_bench_watch_prints_one_json_object(capsys):
    import json

    from stability.cli import main

    assert main(["bench", "watch", "--json", "--reps", "1", "--block", "1", "--warmup", "0", "--d-model", "32",
                 "--n-layer", "1", "--batch-size", "2", "--seq-len", "16", "--no-peers"]) == 0
    result = json.loads(capsys.readouterr().out)  # one JSON object and nothing else on stdout
    assert set(result["plain"]["ratio"]) == {"bare", "watch", "watch_pipeline", "watch_hanging_webhook"}
    assert result["plain"]["ratio"]["watch"] > 0 and result["hf"]["ratio"]["watch"] > 0


def test_steps_without_a_loss_are_recorded_and_never_called_a_divergence(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with stability.watch(model, opt, store=tmp_path, run="noloss", probes=False) as guard:
        for _ in range(55):  # past the 50 non-finite steps that end a run as diverged
            model(torch.ones(2, 3)).sum().backward()
            opt.step()
            guard.step()  # a loop that hands no loss (and a model whose output has none)
    assert not guard.should_stop
    store = RunStore(tmp_path)
    assert store.run_info("noloss")["status"] == M.ST_FINISHED
    metrics = set(store.metrics("noloss").metric)
    assert {M.LR, M.STEP_TIME} <= metrics and M.LOSS not in metrics


def test_metrics_endpoint_and_a_dead_webhook_in_a_users_loop(tmp_path, caplog):
    """Prometheus /metrics serves the loop's values on 127.0.0.1; a webhook nobody listens on is reported once,
    and the loop goes on (delivery runs on its own thread)."""
    import logging
    import socket
    import urllib.request

    with socket.socket() as s:  # a port with nobody behind it
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    caplog.set_level(logging.WARNING, logger="stability.alerting")
    cfg = tmp_path / "alerting.toml"  # give up on a dead endpoint quickly (defaults: minutes of retries)
    cfg.write_text("[alerting]\ndeadline_s = 1.0\nbackoff_s = 0.1\nclose_timeout_s = 1.0\n")
    with stability.watch(model, opt, store=tmp_path, run="alerts", metrics_port=0, alert_config=str(cfg),
                         webhook=f"http://127.0.0.1:{dead}/hook", probes={"attention": False}) as guard:
        for i, x in enumerate(data(4)):
            loss = loss_of(model, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(float("nan") if i >= 2 else loss)  # a non-finite loss pages (divergence)
        text = urllib.request.urlopen(guard.notifier.metrics_url, timeout=5).read().decode()
        assert 'stability_step{run="alerts"} 3.0' in text
        guard.notifier.flush(timeout=3)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and str(dead) in failures[0].getMessage()
    assert RunStore(tmp_path).run_info("alerts")["status"] == M.ST_FINISHED


def test_gradients_no_backward_reported_are_read_at_the_step_with_one_warning():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stability.watch(model, opt, probes={"attention": False}) as guard:
            for _ in range(2):
                for p in model.parameters():
                    p.grad = torch.full_like(p, 0.5)  # written by hand, as a sharding wrapper may
                opt.step()
                rec = guard.step(torch.tensor(1.0))
    late = [w for w in caught if "no end of a backward" in str(w.message)]
    assert len(late) == 1
    assert rec[(M.GRAD_NORM, "total")] == pytest.approx(0.5 * math.sqrt(8))


def test_importing_the_package_does_not_import_torch():
    """The dashboard imports `stability`; `stability.watch` is loaded on first use."""
    import subprocess
    import sys

    code = "import sys, stability; assert 'torch' not in sys.modules; assert callable(stability.watch)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_detector_settings_reach_the_live_detector_and_the_run(tmp_path):
    """`detect` as a dict of DetectorConfig fields: the loop's detector alerts at that threshold (under the risk's
    floor: at once), the settings are stored with the run; `detect=True` keeps the shipped detector."""
    from stability.detector import OnlineDetector

    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with stability.watch(model, opt, store=tmp_path, run="low", detect={"risk_threshold": 0.01}) as guard:
        assert isinstance(guard.detector, OnlineDetector) and guard.detector.threshold == 0.01
        for _ in range(3):
            x = torch.randint(0, V, (2, 8))
            opt.zero_grad()
            loss = loss_of(model, x)
            loss.backward()
            opt.step()
            guard.step(loss)
    st = RunStore(tmp_path)
    assert st.run_info("low")["config"]["detector"]["risk_threshold"] == 0.01
    assert not st.events("low", kinds=["alert"]).empty
    with stability.watch(model, opt, detect=True) as guard:
        assert guard.detector.threshold == OnlineDetector().model.threshold
