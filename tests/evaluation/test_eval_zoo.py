"""The instability zoo: its synthetic language, the build-up definition, generation end to end, the committed
data, and the evaluation's risk against the online detector."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stability.detector.labeller import Incident
from stability.evaluation.buildup import BUILD_UP, INJECTED, SUDDEN, BuildUpConfig, incident_kind
from stability.evaluation.language import entropy_rate, markov_stream
from stability.evaluation.series import RunSeries
from stability.evaluation.zoo import MANIFEST, RECIPES, UNPREDICTABLE, ZOO, ZOO_FILE, ZooRun, load_zoo

DATA = Path(__file__).resolve().parents[1] / "data"
ZOO_DIR = DATA / "zoo"


def test_markov_language_is_seeded_and_has_its_entropy_rate():
    a, b = markov_stream(50_000, seed=3), markov_stream(50_000, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, markov_stream(50_000, seed=4))
    assert a.min() >= 0 and a.max() < 64
    # Empirical conditional entropy of the stream (counted by hand) against the chain's entropy rate.
    counts = np.zeros((64, 64))
    np.add.at(counts, (a[:-1], a[1:]), 1)
    rows = counts.sum(1, keepdims=True)
    p = counts / np.maximum(rows, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    empirical = float((rows[:, 0] / rows.sum()) @ h)
    assert empirical == pytest.approx(entropy_rate(seed=3), abs=0.03)
    assert entropy_rate(seed=3) < 0.6 * math.log(64)  # structure to learn: far below a uniform stream


def _run(values: dict[str, list[float]], bad=()) -> RunSeries:
    n = len(next(iter(values.values())))
    recs = [{k: v[i] for k, v in values.items()} for i in range(n)]
    return RunSeries("r", np.arange(n), recs, {"bad_steps": list(bad)})


def _inc(onset):
    return Incident(onset, onset + 3, onset, 9.0, 9.0, 2.0, 4, False)


def test_build_up_is_read_off_the_signals_before_the_onset():
    n, onset = 200, 150
    flat = [1.0] * n
    # Total gradient norm doubles over the 50 steps before the onset: median of the last 10 (steps 140..149) over
    # the median of the first 10 of the window (100..109) = 2 >= 1.5.
    rising = [1.0 if s < 100 else 1.0 + (s - 100) / 50 for s in range(n)]
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": rising}), _inc(onset)) == BUILD_UP
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": flat}), _inc(onset)) == SUDDEN
    # 1.4x is under the 1.5x rule; the loss rising 5 % is over its 3 % rule; a loss scale falling 8x counts.
    mild = [1.0 if s < 100 else 1.0 + 0.4 * (s - 100) / 49 for s in range(n)]
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": mild}), _inc(onset)) == SUDDEN
    loss = [2.0 if s < 100 else 2.0 * (1 + 0.05 * (s - 100) / 49) for s in range(n)]
    assert incident_kind(_run({"loss": loss, "grad_norm/total": flat}), _inc(onset)) == BUILD_UP
    scale = [65536.0 if s < 120 else 8192.0 for s in range(n)]
    assert incident_kind(_run({"loss": [2.0] * n, "loss_scale": scale}), _inc(onset)) == BUILD_UP
    # Attention maximum over layers, the larger layer decides.
    attn = {"attn_score_max/h.0": [1.0] * n, "attn_score_max/h.1": [3.0 * r for r in rising]}
    assert incident_kind(_run({"loss": [2.0] * n, **attn}), _inc(onset)) == BUILD_UP
    # An onset next to an injected bad batch is injected, whatever its signals did.
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": rising}, bad=[148]), _inc(onset)) == INJECTED
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": rising}, bad=[100]), _inc(onset)) == BUILD_UP
    # Too little history before the onset: no evidence of a build-up.
    assert incident_kind(_run({"loss": [2.0] * n, "grad_norm/total": rising}), _inc(15), BuildUpConfig()) == SUDDEN


def test_recipes_split_by_recipe_and_seed():
    tune = {(r.recipe, r.seed) for r in ZOO if r.split == "tune"}
    held = {(r.recipe, r.seed) for r in ZOO if r.split == "heldout"}
    assert not {r for r, _ in tune} & {r for r, _ in held}
    assert not {s for _, s in tune} & {s for _, s in held}
    mechs = {r.mechanism for r in ZOO}
    for m in mechs:  # every mechanism on both sides, with calm controls
        for split in ("tune", "heldout"):
            assert any(r.mechanism == m and r.split == split and r.calm for r in ZOO)
            assert any(r.mechanism == m and r.split == split and not r.calm for r in ZOO)
    # Two tuning recipes per predictable mechanism, so the risk's weights are not fitted to one recipe each.
    for m in mechs - set(UNPREDICTABLE):
        assert len({r.recipe for r in ZOO if r.mechanism == m and r.split == "tune"}) == 2, m
    assert {r.arch for r in ZOO if r.split != "fresh"} == {"glm", "nanogpt"}
    assert {r.data for r in ZOO} == {"cpython", "markov"}
    assert len({r.name for r in ZOO}) == len(ZOO)
    # The fresh split: recipes and seeds of its own, each a model / data / size combination neither other split has.
    fresh = [r for r in ZOO if r.split == "fresh"]
    assert fresh and not {r.recipe for r in fresh} & {r for r, _ in tune | held}
    assert not {r.seed for r in fresh} & ({s for _, s in tune} | {s for _, s in held})
    def shape(r):
        return r.mechanism, r.arch, r.data, r.d_model, r.n_layer

    assert not {shape(r) for r in fresh} & {shape(r) for r in ZOO if r.split != "fresh"}
    # ... and an architecture no choice of the detector looked at.
    assert {r.arch for r in fresh} == {"glm", "nanogpt", "llama"}


def test_long_calm_controls_in_every_split_at_three_batch_noise_levels():
    """Every fp32 recipe of every split has calm controls that run three times as long as its unstable runs, at its
    batch size, half and a quarter of it, at its safe settings; their seeds are their split's own."""
    for mech, recipe, split, base, _unstable, calm in RECIPES:
        short = [r for r in ZOO if r.recipe == recipe and r.calm and not r.long]
        long = sorted((r for r in ZOO if r.recipe == recipe and r.long), key=lambda r: r.seed)
        if base.get("precision") == "fp16":
            assert not long
            continue
        assert [r.batch_size for r in long] == [short[0].batch_size, short[0].batch_size // 2, short[0].batch_size // 4]
        assert all(r.calm and r.steps == 3 * short[0].steps == 900 and r.name.endswith(f"calm-long-s{r.seed}")
                   for r in long)
        # Safe settings: the same as the short calm controls but for steps and batch.
        assert {(r.lr, r.grad_clip, r.qk_layernorm, r.z_loss, r.betas, r.eps, r.ramp) for r in long} == \
            {(short[0].lr, short[0].grad_clip, short[0].qk_layernorm, short[0].z_loss, short[0].betas, short[0].eps,
              short[0].ramp)}
        other = {r.seed for r in ZOO if r.split != split}
        assert not {r.seed for r in long} & other


@pytest.mark.slow
def test_generate_a_tiny_zoo_end_to_end(tmp_path):
    """Real training of three tiny recipes (one per architecture, FP16 included), stored and reloaded."""
    from stability.evaluation.zoo import generate

    runs = [ZooRun("m", "tiny-glm", "tune", arch="glm", d_model=32, n_layer=1, n_head=2, seq_len=32, batch_size=4,
                   steps=12, precision="fp16"),
            ZooRun("m", "tiny-nano", "heldout", seed=10, arch="nanogpt", data="markov", d_model=32, n_layer=1,
                   n_head=2, seq_len=32, batch_size=4, steps=12, bad_steps=(5,)),
            ZooRun("m", "tiny-llama", "fresh", seed=20, arch="llama", data="markov", d_model=32, n_layer=2,
                   n_head=2, seq_len=32, batch_size=4, steps=12)]
    manifest = generate(tmp_path, runs, jobs=1, log=lambda *a: None)
    assert (tmp_path / ZOO_FILE).exists() and manifest["command"] == "stability eval --generate-zoo"
    assert [d["status"] for d in manifest["results"]] == ["finished"] * 3
    got = {r.name: r for r in load_zoo(tmp_path)}
    assert set(got) == {r.name for r in runs}
    g, nano, llama = got["tiny-glm-unstable-s0"], got["tiny-nano-unstable-s10"], got["tiny-llama-unstable-s20"]
    assert g.steps.tolist() == list(range(12)) and nano.meta["split"] == "heldout"
    assert {"loss", "lr", "grad_norm/embedding", "grad_norm/total", "loss_scale"} <= g.keys()
    assert any(k.startswith("attn_score_max/") for k in nano.keys())  # SDPA scores recomputed by the probe
    # transformers' Llama (SDPA): its attention layer and its embedding are found like the others'.
    assert {"attn_score_max/model.layers.0", "grad_norm/embedding", "grad_norm/total"} <= llama.keys()
    assert not any(k.startswith("grad_norm/layers") or k.startswith("grad_norm/h.") for k in g.keys() | nano.keys() | llama.keys())
    assert nano.meta["bad_steps"] == [5]
    # The bad batch (one n-gram repeated) is far easier than language: its loss sits apart from its neighbours.
    loss = nano.column("loss")[1]
    assert abs(loss[5] - np.median(loss[3:9])) > 0.05


committed = pytest.mark.skipif(not (ZOO_DIR / ZOO_FILE).exists(), reason="zoo not generated")


@committed
def test_committed_zoo_is_exactly_the_configured_one():
    manifest = json.loads((ZOO_DIR / MANIFEST).read_text())
    assert manifest["command"] == "stability eval --generate-zoo"
    assert {d["name"] for d in manifest["runs"]} == {r.name for r in ZOO}
    assert {d["name"] for d in manifest["results"]} == {r.name for r in ZOO}
    assert all(d["status"] in ("finished", "diverged") for d in manifest["results"])
    for d in manifest["runs"]:
        assert d == next(r for r in ZOO if r.name == d["name"]).to_dict()
    assert (ZOO_DIR / ZOO_FILE).stat().st_size < 5_000_000


def test_only_takes_several_name_fragments():
    from stability.cli import main
    from stability.commands.eval import _only

    assert _only(None, "postln-glm-d40-unstable-s0") and _only("", "x")
    new = "postln-glm-d40,attn-glm-d32"
    assert [r.name for r in ZOO if _only(new, r.name)] == \
        [r.name for r in ZOO if r.recipe in ("postln-glm-d40", "attn-glm-d32")]
    assert not _only("nothing,,", "postln-glm-d40-unstable-s0")
    assert main(["eval", "--generate-zoo", "--only", "nothing,matches", "--zoo", "/nonexistent"]) == 2
