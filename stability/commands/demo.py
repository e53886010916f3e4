"""`stability demo` (what `make demo` runs): the product's story in about a minute.

The dashboard on the sample runs, and two live runs of one unstable recipe trained side by side into the same
store, one without policies and one with rollback + LR back-off. Both page a webhook receiver the demo starts on
127.0.0.1, so each page is printed in the terminal as it arrives; each page is also a `page` event of its run,
shown with the alerts and policy actions by the dashboard's Alerts view. When the runs end the demo says what happened, from the store: the alerts, the
labelled spike (`stability spikes`), the rollbacks and the final losses.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stability.commands._store_args import add_store_argument

NAME = "demo"
HELP = "the story in a minute: an unstable recipe trained with and without policies, live in the dashboard"
DESCRIPTION = (
    "Copies the built-in sample runs into a demo store (once), starts the dashboard on it and a webhook receiver "
    "on 127.0.0.1, and trains two runs of one unstable recipe side by side into the store (GLM-130B's failure at "
    "toy scale: FP16 with a dynamic loss scale, no clipping, a learning rate that warms up exponentially to 0.6): "
    "one without policies, one with rollback and LR back-off. Pages print in the terminal as they arrive; at the "
    "end the demo narrates alerts, spike, rollbacks and final losses. Ctrl-C stops everything."
)

STEPS = 300
UNSTABLE_LR = 0.6
"""The demo recipe's peak learning rate: the runs diverge near 0.45 on the way up (seeds 0-2 at steps 220-243)."""
PACE = 8.0
"""Steps per second of each live run, slow enough to watch the charts move: the protected run trains about 393
steps (300, and the 93 its rollback replays), about a minute."""
PREFIXES = ("demo-unprotected-", "demo-protected-")
HORIZON = 50
"""An alert counts as a warning of a spike at most this many steps before its onset (as in `stability eval`)."""


def protection():
    """Rollback (PaLM: restore a recent good state, skip 200 batches) and LR back-off, both on an actual loss
    spike. This spike comes from the learning-rate schedule, so it returns after a bare rollback: the back-off
    removes its cause. Neither acts on the detector's predictions (the prediction is the page a human gets).
    Checkpoints every 50 steps (`CHECKPOINT_INTERVAL`), not 25: the collapse builds up over tens of steps, and
    the newest of 25-step checkpoints can already be inside the build-up."""
    from stability.commands.policies_demo import CHECKPOINT_INTERVAL
    from stability.policies import LRBackoffConfig, PolicyConfig, RollbackConfig
    from stability.policies.triggers import SPIKE

    return PolicyConfig(rollback=RollbackConfig(enabled=True, interval=CHECKPOINT_INTERVAL),
                        lr_backoff=LRBackoffConfig(enabled=True, on=(SPIKE,)))


def recipe(steps: int = STEPS, seed: int = 0, lr: float = UNSTABLE_LR):
    """The demo's unstable recipe, GLM-130B's failure at toy scale: the reference GLM (Pre-LN, softmax in FP16) in
    FP16 with a dynamic loss scale from 2^16 and no clipping, its learning rate warming up exponentially from
    0.005 x 0.6 to 0.6 over 250 steps (a range test). The model learns at small rates for a hundred steps; then the
    rate outgrows it, the attention scores climb for tens of steps (what the detector sees), the loss scale
    collapses and the run diverges. Tiny shapes, because FP16 is slow on a CPU."""
    from stability.reference.config import ModelConfig, TrainConfig

    return TrainConfig(model=ModelConfig(d_model=32, n_layer=2, n_head=2, ln="pre"), lr=lr, warmup=250,
                       warmup_shape="exponential", warmup_start=0.005, steps=steps, grad_clip=0.0, batch_size=8,
                       seq_len=32, precision="fp16", seed=seed, threads=1)


def add_arguments(p):
    add_store_argument(p, "demo store folder, seeded from sample_runs/ (default: .demo-store)", default=".demo-store",
                       env=False)
    p.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"steps of each live run (default {STEPS})")
    p.add_argument("--pace", type=float, default=PACE,
                   help=f"steps per second of each live run, 0 = as fast as the machine goes (default {PACE:g})")
    p.add_argument("--no-dashboard", action="store_true", help="train and narrate only")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.add_argument("--exit", action="store_true", help="stop the dashboard when the runs end")


@dataclass(frozen=True)
class LiveRun:
    """What a training process needs (picklable: it crosses into a spawned process)."""
    store: str
    run: str
    protected: bool
    steps: int
    pace: float
    webhook: str
    dashboard: str | None


class Pace:
    """A trainer hook that holds each step to `1 / rate` seconds: the demo is watched, not benchmarked."""

    def __init__(self, rate: float):
        self.period = 1.0 / rate
        self._next: float | None = None

    def after_step(self, *args, **kwargs) -> None:
        now = time.monotonic()
        self._next = max(now, (self._next or now) + self.period)
        time.sleep(self._next - now)


def train_live(spec: LiveRun) -> None:
    """One live run, in its own process (two runs train on two cores at once)."""
    from stability.alerting import AlertingConfig, Notifier
    from stability.policies import build_policies
    from stability.reference.session import SessionOptions, build_trainer

    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or the demo stopping us: the run ends as `stopped`
        signal.signal(sig, _interrupt_once)
    try:
        policies = build_policies(protection()) if spec.protected else []
        meta = {"demo": "protected" if spec.protected else "unprotected"}
        if spec.protected:
            meta["policies"] = protection().to_dict()
        hooks = [Pace(spec.pace)] if spec.pace > 0 else []
        notifier = Notifier.from_config(AlertingConfig(run=spec.run, webhook_url=spec.webhook,
                                                       dashboard_url=spec.dashboard, close_timeout_s=2.0))
        trainer = build_trainer(recipe(spec.steps), SessionOptions(
            store=spec.store, run=spec.run, progress=False, policies=policies + hooks, notifier=notifier,
            meta=meta))
    except KeyboardInterrupt:  # stopped while starting up, before the loop could close the run itself
        _mark_stopped(spec)
        return
    try:
        trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C or the demo stopping us: the loop has closed the run as `stopped`
        pass


def _interrupt_once(signum, frame):
    """KeyboardInterrupt for the first signal; later ones are ignored, so that a Ctrl-C followed by the demo's
    own SIGTERM cannot cut short the loop's closing of the run (held-out loss, store flush, status). Ignored by
    a handler that does nothing, not SIG_IGN: a signal that arrived together with the first one would be
    reported as an error when Python finds SIG_IGN in place of the handler it was delivered to."""
    _ignore_stops()
    raise KeyboardInterrupt


def _ignore_stops() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)


def _mark_stopped(spec: LiveRun) -> None:
    from stability import metrics as M
    from stability.store import RunStore

    try:
        store = RunStore(spec.store)
        if store.has_run(spec.run):
            store.set_status(spec.run, M.ST_STOPPED)
    except Exception:  # the run lists as failed instead: nothing stored is lost either way
        pass


def _seed_store(store: Path) -> None:
    from dashboard.store_path import default_store

    samples = default_store()
    store.mkdir(parents=True, exist_ok=True)
    if samples.is_dir():
        for run in samples.iterdir():
            if run.is_dir() and not (store / run.name).exists():
                shutil.copytree(run, store / run.name)


def _wait_healthy(proc, port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def _open_browser(url: str) -> None:
    """Only where a window can open: on a headless box webbrowser would start a text browser in this terminal."""
    if sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        import webbrowser

        webbrowser.open(url)


def say(msg: str) -> None:
    # One write per line, as the webhook receiver's thread writes its pages: print() would write the newline
    # separately, and a page printed in between would run into this line.
    sys.stdout.write(f"demo: {msg}\n")
    sys.stdout.flush()


class Narrator:
    """Prints the policy actions of the live runs as they land in the store (the pages print themselves)."""

    ACTIONS = ("rollback", "lr_backoff", "egs_on", "egs_off", "escalate", "divergence")

    def __init__(self, store: Path, runs: dict[str, str]):
        from stability.store import RunStore

        self.store, self.runs, self.seen = RunStore(store, read_only=True), runs, set()

    def poll(self) -> None:
        for label, run in self.runs.items():
            try:
                ev = self.store.events(run, kinds=self.ACTIONS)
            except Exception:  # not created yet, or between two segments: ask again next time
                continue
            for e in ev.itertuples():
                key = (run, e.step, e.time, e.kind)
                if key not in self.seen:
                    self.seen.add(key)
                    say(f"{label}: {describe_action(e.kind, e.step, e.detail)}")


def describe_action(kind: str, step: int, d: dict) -> str:
    if kind == "rollback":
        return (f"rolled back at step {step} to step {d.get('to_step')}, skipping {d.get('skip_batches')} batches"
                + (f" ({d['reason']})" if d.get("reason") else ""))
    if kind == "lr_backoff":
        return f"learning rate x{float(d.get('scale', math.nan)):.2g} at step {step}"
    return f"{kind} at step {step}"


def story(store: Path, unprotected: str, protected: str) -> dict:
    """What happened, from the store alone: the unprotected run's alerts and labelled incidents, the protected
    run's rollbacks, and both runs' final losses (mean of the last 20 steps, and the held-out loss)."""
    from stability.detector import label_spikes
    from stability.store import RunStore

    rs = RunStore(store, read_only=True)
    out = {}
    for label, run in (("unprotected", unprotected), ("protected", protected)):
        m = rs.metrics(run, metrics=["loss", "val_loss"])
        loss, val = m[m.metric == "loss"], m[m.metric == "val_loss"]["value"]
        ev = rs.events(run)
        tail = loss[loss.step > loss.step.max() - 20]["value"] if len(loss) else loss["value"]
        out[label] = {
            "run": run, "status": rs.run_info(run).get("status"),
            "alerts": [int(s) for s in ev[ev.kind == "alert"]["step"]],
            "rollbacks": [int(s) for s in ev[ev.kind == "rollback"]["step"]],
            "final_loss": round(float(tail.mean()), 4) if len(tail) else None,
            "val_loss": round(float(val.iloc[-1]), 4) if len(val) else None,
        }
    # Labelled as `stability spikes` labels it. Only the unprotected run: the store reads the protected run along
    # its lineage, where the divergences its rollbacks undid are not (they are on the abandoned branches).
    loss = rs.metrics(unprotected, metrics=["loss"])
    labels = label_spikes(loss["step"].to_numpy(), loss["value"].to_numpy())
    out["unprotected"]["incidents"] = [
        {"onset": i.onset, "peak_step": i.peak_step, "peak_loss": round(i.peak_loss, 3), "diverged": bool(i.diverged)}
        for i in labels.incidents]
    return out


def narrate(s: dict) -> None:
    u, p = s["unprotected"], s["protected"]
    if u["incidents"]:
        first = u["incidents"][0]
        before = [a for a in u["alerts"] if first["onset"] - HORIZON <= a < first["onset"]]
        kind = "divergence" if first["diverged"] else "spike"
        if before:
            say(f"unprotected: alert at step {before[0]}, {first['onset'] - before[0]} steps before the labelled "
                f"{kind} at step {first['onset']} (peak loss {first['peak_loss']} at step {first['peak_step']})")
        else:
            say(f"unprotected: labelled {kind} at step {first['onset']} (peak loss {first['peak_loss']}); "
                f"no alert in the {HORIZON} steps before it")
    else:
        say("unprotected: no labelled spike")
    say(f"unprotected: alerts at steps {u['alerts'] or 'none'}")
    say(f"protected: rollbacks at steps {p['rollbacks'] or 'none'}")
    for label, r in (("unprotected", u), ("protected", p)):
        say(f"{label}: {r['status']}, final loss {r['final_loss']}, held-out loss {r['val_loss']}")


def run(args) -> int:
    from stability.commands.train import check_writable_store
    from stability.errors import UsageError

    if args.steps < 50:
        raise UsageError(f"--steps must be >= 50 for the story to unfold, got {args.steps}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be between 1 and 65535")
    if not (args.pace >= 0 and math.isfinite(args.pace)):
        raise UsageError(f"--pace must be a number of steps per second >= 0, got {args.pace}")
    from stability.alerting.receiver import WebhookReceiver

    store = check_writable_store(args.store).resolve()
    _seed_store(store)
    stamp = time.strftime("%H%M%S")
    unprotected, protected = (f"{p}{stamp}" for p in PREFIXES)
    base = f"http://127.0.0.1:{args.port}"
    dash = procs = None
    receiver = WebhookReceiver().start()
    # Ctrl-C reaches every process of the terminal's group; SIGTERM (a service manager, a test) only this one:
    # both become KeyboardInterrupt here (even where a shell started us with SIGINT ignored), and the finally
    # block stops the children.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"webhook receiver on {receiver.url}; each page it gets prints here as `page: ...`")
        if not args.no_dashboard:
            from dashboard.server import launch

            dash = launch(store, args.port)
            if not _wait_healthy(dash, args.port):
                raise UsageError(f"the dashboard did not start on 127.0.0.1:{args.port} (port in use?)")
            url = f"{base}/?view=compare&runs={unprotected},{protected}"
            say(f"dashboard on {base} (store {store}); the two runs side by side: {url}")
            if not args.no_browser:
                _open_browser(url)
        cfg = recipe(args.steps)
        say(f"training {unprotected} (no policies) and {protected} (rollback + LR back-off): FP16, lr warming up "
            f"exponentially to {cfg.lr:g} over {cfg.warmup} steps, no clipping, {args.steps} steps")
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=train_live, name=run_name, args=(LiveRun(
            str(store), run_name, prot, args.steps, args.pace, receiver.url, None if dash is None else base),))
            for run_name, prot in ((unprotected, False), (protected, True))]
        for p in procs:
            p.start()
        narrator = Narrator(store, {"unprotected": unprotected, "protected": protected})
        while any(p.is_alive() for p in procs):
            narrator.poll()
            time.sleep(0.5)
        narrator.poll()
        narrate(story(store, unprotected, protected))
        if dash is not None and not args.exit:
            say(f"the dashboard keeps running at {base}; Ctrl-C stops it")
            dash.wait()
    except KeyboardInterrupt:
        say("stopping")
    finally:
        _ignore_stops()  # a second Ctrl-C must not cut the clean-up short
        for p in procs or ():
            if p.is_alive():
                p.terminate()  # SIGTERM: the run closes itself as `stopped`
        for p in procs or ():
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if dash is not None and dash.poll() is None:
            dash.terminate()
            try:
                dash.wait(timeout=10)
            except Exception:
                dash.kill()
        receiver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
