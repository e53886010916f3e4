"""StabilityCallback in a real transformers.Trainer (tiny GPT-2 and Llama built from a config): gradient norms
before clipping against torch.nn.utils.get_total_norm, the per-step loss unfiltered, EGS multiplying the
embedding's gradient by alpha, and a run the commands read like a reference-trainer run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import Trainer, TrainingArguments  # noqa: E402

from stability import metrics as M  # noqa: E402
from stability.integrations.huggingface import StabilityCallback  # noqa: E402
from stability.policies import EGSConfig, PolicyConfig  # noqa: E402
from stability.store import RunStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import hf_trainer  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.slow


class Recording(Trainer):
    """Keeps what the Trainer itself computes: gradient norms right before its clipping (from the definition,
    per block by module path), the embedding gradients, and each micro-batch's training loss."""

    blocks: dict[str, str] = {}

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.before_clip: list[dict] = []
        self.grads: list[dict] = []
        self.step_losses: list[float] = []

    def _clip_grad_norm(self, model):
        norms = {name: float(torch.nn.utils.get_total_norm(
            [p.grad for p in model.get_submodule(path).parameters() if p.grad is not None]))
            for name, path in self.blocks.items()}
        norms["total"] = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                              if p.grad is not None]))
        self.before_clip.append(norms)
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        return super()._clip_grad_norm(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_losses.append(float(loss))
        return loss


def train(tmp_path, run, model, steps=3, max_grad_norm=1e-3, blocks=None, nan_at=None, **options):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=1e-3, max_grad_norm=max_grad_norm, logging_steps=100,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    Recording.blocks = blocks or {}
    cb = StabilityCallback(store=tmp_path / "runs", run=run, **options)
    trainer = Recording(model=model, args=args, train_dataset=hf_trainer.dataset(), callbacks=[cb])
    if nan_at is not None:
        calls = []

        def poison(module, inputs, output):  # one step's loss becomes NaN, as in a real blow-up
            calls.append(1)
            if len(calls) == nan_at + 1:
                output.loss = output.loss * math.nan
            return output

        model.register_forward_hook(poison)
    trainer.train()
    return trainer, cb


def test_gpt2_grad_norms_are_the_ones_before_clipping_and_every_step_has_its_loss(tmp_path):
    torch.manual_seed(0)
    model = hf_trainer.tiny_model("gpt2", "sdpa")
    blocks = {"embedding": "transformer.wte", "transformer.wpe": "transformer.wpe",
              "transformer.h.0": "transformer.h.0",
              "transformer.h.1": "transformer.h.1", "transformer.ln_f": "transformer.ln_f"}
    trainer, cb = train(tmp_path, "gpt2", model, steps=3, blocks=blocks)
    store = RunStore(tmp_path / "runs")
    df = store.metrics("gpt2")
    grad = df[df.metric == M.GRAD_NORM]
    assert len(trainer.before_clip) == 3
    for step, want in enumerate(trainer.before_clip):
        assert want["total"] > 1e-2  # clipping to 1e-3 really rewrote the gradients
        got = dict(zip(grad[grad.step == step].layer, grad[grad.step == step].value))
        for layer, value in want.items():
            assert got[layer] == pytest.approx(value, rel=1e-5), (step, layer)
    losses = df[df.metric == M.LOSS].sort_values("step")
    assert list(losses.step) == [0, 1, 2]  # every step, though the Trainer logs every 100
    assert list(losses.value) == pytest.approx(trainer.step_losses, rel=1e-6)
    assert store.run_info("gpt2")["status"] == M.ST_FINISHED
    assert store.run_info("gpt2")["config"]["framework"] == "transformers"


def test_a_nan_loss_is_recorded_not_filtered(tmp_path):
    torch.manual_seed(0)
    trainer, cb = train(tmp_path, "nan", hf_trainer.tiny_model("gpt2"), steps=3, nan_at=1)
    df = RunStore(tmp_path / "runs").metrics("nan", metrics=[M.LOSS]).sort_values("step")
    assert list(df.step) == [0, 1, 2] and math.isfinite(df.value.iloc[0]) and math.isnan(df.value.iloc[1])
    assert trainer.args.logging_nan_inf_filter  # the Trainer's own logs would have replaced it


def test_rollback_restores_the_state_after_a_nan_in_the_trainer(tmp_path):
    from stability.policies import RollbackConfig

    torch.manual_seed(0)
    policies = PolicyConfig(rollback=RollbackConfig(enabled=True, interval=2, settle_steps=0, skip_batches=0))
    train(tmp_path, "rb", hf_trainer.tiny_model("gpt2"), steps=6, nan_at=3, policies=policies, probes=False)
    store = RunStore(tmp_path / "runs")
    ev = store.events("rb")
    rollbacks = ev[ev.kind == M.EV_ROLLBACK]
    assert list(rollbacks.step) == [3]
    losses = store.metrics("rb", metrics=[M.LOSS], branches="all")
    # The NaN step's update poisoned every weight: without the rollback every later loss would be NaN. With it,
    # the Trainer's last two steps train the restored state, recorded as steps 2 and 3 again (the run rewinds).
    assert len(losses) == 6 and losses.value.isna().sum() == 1
    assert losses[["branch", "step"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    assert math.isnan(losses.value.iloc[3])
    lineage = store.metrics("rb", metrics=[M.LOSS])  # the run as it went on: the retry's steps 2 and 3
    assert lineage.step.tolist() == [0, 1, 2, 3] and lineage.value.notna().all()
    assert lineage.value.tolist()[2:] == losses.value.tolist()[4:]


def test_egs_multiplies_the_llama_embedding_gradient_by_alpha(tmp_path):
    grads = []
    for run, policies in (("plain", None), ("egs", PolicyConfig(egs=EGSConfig(mode="always", alpha=0.1)))):
        torch.manual_seed(0)
        trainer, _ = train(tmp_path, run, hf_trainer.tiny_model("llama", "eager"), steps=1, policies=policies,
                           probes=False)
        grads.append(trainer.grads[0])
    plain, egs = grads
    emb = "model.embed_tokens.weight"
    # float32: EGS scales each token's contribution before the embedding's backward sums them, the reference scales
    # the sum: a few ulps apart where a row sums several tokens (1.5e-6 measured on one CPU).
    torch.testing.assert_close(egs[emb], 0.1 * plain[emb], rtol=1e-5, atol=1e-12)
    assert plain[emb].abs().sum() > 0
    for name in plain:
        if name != emb:
            assert torch.equal(egs[name], plain[name]), name  # nothing else touched
    ev = RunStore(tmp_path / "runs").events("egs")
    assert M.EV_EGS_ON in set(ev.kind)


def test_the_run_reads_like_a_reference_run_in_the_commands_and_the_dashboard(tmp_path, capsys, monkeypatch):
    import json

    from streamlit.testing.v1 import AppTest

    from stability.cli import main

    torch.manual_seed(0)
    hf_trainer.main(["--steps", "4", "--store", str(tmp_path / "runs"), "--run", "llama", "--model", "llama",
                     "--out", str(tmp_path / "out")])
    store = str(tmp_path / "runs")
    for cmd in (["runs"], ["spikes", "llama"], ["detect", "llama"], ["events", "llama"]):
        assert main([*cmd, "--store", store]) == 0, cmd
    assert "llama" in capsys.readouterr().out
    # The dashboard's run view draws it (Streamlit's AppTest, as tests/dashboard/test_dashboard_app.py drives it).
    monkeypatch.setenv("STABILITY_STORE", store)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py"), default_timeout=60)
    at.query_params["view"] = "run"
    at.query_params["run"] = "llama"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    figures = [json.loads(json.loads(c.proto.json_args)["spec"]) for c in at.get("component_instance")
               if c.proto.component_name.endswith("stability_plot")]
    assert figures and any(t.get("name") == "loss" for t in figures[0]["data"])


def test_bad_input_is_refused_when_the_callback_is_made(tmp_path):
    with pytest.raises(TypeError, match="evrey"):
        StabilityCallback(store=tmp_path, evrey=2)
    with pytest.raises(TypeError, match="scaler"):
        StabilityCallback(scaler=object())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="store .*file"):
        StabilityCallback(store=tmp_path / "file" / "runs")
    bad = tmp_path / "p.toml"
    bad.write_text("[rollback]\nenabled = true\ninterval = 0\n")
    with pytest.raises(ValueError, match=r"p\.toml"):
        StabilityCallback(store=tmp_path / "runs", policies=bad)
    with pytest.raises(ValueError, match="StabilityCallback.*detect: unknown field 'surge'"):
        StabilityCallback(store=tmp_path / "runs", detect={"surge": 8})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_ranges_are_recorded(tmp_path, kind, attn):
    torch.manual_seed(0)
    train(tmp_path, "a", hf_trainer.tiny_model(kind, attn), steps=1)
    df = RunStore(tmp_path / "runs").metrics("a", metrics=[M.ATTN_SCORE_MAX])
    assert len(set(df.layer)) >= 2
