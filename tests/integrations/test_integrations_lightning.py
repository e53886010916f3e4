"""StabilityCallback in a real lightning.Trainer: gradient norms before gradient_clip_val clipping against
torch.nn.utils.get_total_norm, every step's loss, skip-step through Lightning's closure, a failed fit marked
failed, and a run the commands read like a reference-trainer run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stability import metrics as M  # noqa: E402
from stability.integrations.lightning import StabilityCallback  # noqa: E402
from stability.policies import PolicyConfig, SkipStepConfig  # noqa: E402
from stability.store import RunStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import lightning_module  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.slow
BLOCKS = {"embedding": "embed", "encoder.layers.0": "encoder.layers.0", "encoder.layers.1": "encoder.layers.1",
          "norm": "norm", "head": "head"}


class Recording(lightning_module.LitLM):
    """Keeps, from the definition, the gradient norms Lightning has right before it clips, and each step's loss."""

    def __init__(self, blow_up_at=None):
        super().__init__()
        self.before_clip, self.losses, self.changed = [], [], []
        self.blow_up_at = blow_up_at

    def training_step(self, tokens, batch_idx):
        loss = super().training_step(tokens, batch_idx)
        if batch_idx == self.blow_up_at:
            loss = loss * 1e4  # this step's gradients are 10^4 times larger
        self.losses.append(float(loss))
        self._weights = [p.detach().clone() for p in self.parameters()]
        return loss

    def on_before_optimizer_step(self, optimizer):
        norms = {name: float(torch.nn.utils.get_total_norm([p.grad for p in self.get_submodule(path).parameters()]))
                 for name, path in BLOCKS.items()}
        norms["total"] = float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()]))
        self.before_clip.append(norms)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.changed.append(any(not torch.equal(a, p) for a, p in zip(self._weights, self.parameters())))


def fit(tmp_path, run, module, steps, accumulate=1, **options):
    torch.manual_seed(0)
    data = DataLoader(torch.randint(0, 64, (8 * steps * accumulate, 16)), batch_size=8)
    cb = StabilityCallback(store=tmp_path / "runs", run=run, **options)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, gradient_clip_val=1e-3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, callbacks=[cb])
    trainer.fit(module, data)
    return cb


def test_grad_norms_before_clipping_and_every_steps_loss(tmp_path):
    torch.manual_seed(0)
    module = Recording()
    fit(tmp_path, "lit", module, steps=3)
    store = RunStore(tmp_path / "runs")
    df = store.metrics("lit")
    grad = df[df.metric == M.GRAD_NORM]
    assert len(module.before_clip) == 3
    for step, want in enumerate(module.before_clip):
        assert want["total"] > 1e-2  # clipping to 1e-3 rewrote them
        got = dict(zip(grad[grad.step == step].layer, grad[grad.step == step].value))
        for layer, value in want.items():
            assert got[layer] == pytest.approx(value, rel=1e-5), (step, layer)
    losses = df[df.metric == M.LOSS].sort_values("step")
    assert list(losses.value) == pytest.approx(module.losses, rel=1e-6)
    assert store.run_info("lit")["status"] == M.ST_FINISHED


def test_gradient_accumulation_reads_the_accumulated_gradients(tmp_path):
    torch.manual_seed(0)
    module = Recording()
    fit(tmp_path, "acc", module, steps=2, accumulate=2)
    df = RunStore(tmp_path / "runs").metrics("acc", metrics=[M.GRAD_NORM, M.LOSS], layers=["total", ""])
    assert len(module.before_clip) == 2
    for step, want in enumerate(module.before_clip):
        got = df[(df.step == step) & (df.metric == M.GRAD_NORM)].value.item()
        assert got == pytest.approx(want["total"], rel=1e-5)
        loss = df[(df.step == step) & (df.metric == M.LOSS)].value.item()
        assert loss == pytest.approx(sum(module.losses[2 * step:2 * step + 2]) / 2, rel=1e-6)


def test_skip_step_runs_lightnings_closure_then_drops_the_update(tmp_path):
    torch.manual_seed(0)
    module = Recording(blow_up_at=6)
    fit(tmp_path, "skip", module, steps=8,
        policies=PolicyConfig(skip_step=SkipStepConfig(enabled=True, min_history=3, window=10)), probes=False)
    assert module.changed == [i != 6 for i in range(8)]
    ev = RunStore(tmp_path / "runs").events("skip")
    assert list(ev[ev.kind == M.EV_SKIP_STEP].step) == [6]


class Failing(lightning_module.LitLM):
    def training_step(self, tokens, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("boom")
        return super().training_step(tokens, batch_idx)


def test_an_exception_in_fit_marks_the_run_failed(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, "bad", Failing(), steps=4)
    info = RunStore(tmp_path / "runs").run_info("bad")
    assert info["status"] == M.ST_FAILED and info["last_step"] == 1


def test_the_example_run_reads_like_a_reference_run(tmp_path, capsys):
    from stability.cli import main

    store = str(tmp_path / "runs")
    lightning_module.main(["--steps", "3", "--store", store, "--run", "lit"])
    for cmd in (["runs"], ["spikes", "lit"], ["detect", "lit"], ["events", "lit"]):
        assert main([*cmd, "--store", store]) == 0, cmd
    assert "lit" in capsys.readouterr().out
