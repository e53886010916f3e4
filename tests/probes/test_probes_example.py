"""The documented examples run as shipped (the monitor alone, and the whole pipeline through stability.watch), and
the overhead benchmark prints the JSON the docs describe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def example(name: str = "probes_loop"):
    """examples/<name>.py, imported as it ships (in-process: starting a fresh torch costs more than the run)."""
    import importlib

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.mark.slow
def test_plain_loop_example_runs_and_prints_records(capsys):
    example().main(["--steps", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("step") for line in lines)
    assert "nonfinite 0" in lines[-1]


@pytest.mark.slow
def test_plain_loop_example_with_gradscaler_shows_skipped_steps(capsys):
    example().main(["--steps", "3", "--fp16", "--init-scale", "1e30"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all("skipped 1" in line for line in lines)
    scales = [float(line.split("scale ")[1].split()[0]) for line in lines]
    assert scales[0] > scales[1] > scales[2]


@pytest.mark.slow
def test_bench_overhead_prints_one_json_object(capsys):
    from stability.cli import main

    code = main(["bench", "overhead", "--json", "--reps", "1", "--block", "1", "--warmup", "0", "--d-model", "32",
                 "--n-layer", "1", "--batch-size", "2", "--seq-len", "16", "--no-peers"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # one JSON object and nothing else on stdout
    assert result["overhead_ratio"] > 0 and result["overhead_ratio_cpu"] > 0
    assert result["peers"] == {"tensorboard": None, "wandb": None}
    assert set(result["peer_errors"]) == {"tensorboard", "wandb"}
    assert result["memory_added_bytes"]["weights_copy_bytes"] > 0
    assert result["config"]["d_model"] == 32


def test_docs_show_the_example_exactly_as_shipped():
    doc = (ROOT / "docs" / "probes.md").read_text()
    assert (ROOT / "examples" / "probes_loop.py").read_text() in doc


@pytest.mark.slow
def test_plain_loop_example_records_a_run_the_commands_read(tmp_path, capsys):
    from stability.cli import main

    store = str(tmp_path / "runs")
    example("plain_loop").main(["--steps", "4", "--store", store, "--run", "plain"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"run plain: 4 steps recorded in {store}"
    assert main(["runs", "--store", store]) == 0
    assert "plain" in capsys.readouterr().out
    for cmd in (["spikes", "plain"], ["detect", "plain"], ["events", "plain"]):
        assert main([*cmd, "--store", store]) == 0, cmd
    from stability.store import RunStore

    df = RunStore(store).metrics("plain")
    layers = set(df[df.metric == "grad_norm"].layer)
    assert {"embedding", "encoder.layers.0", "encoder.layers.1", "total"} <= layers
    assert set(df[df.metric == "attn_score_max"].layer) >= {"encoder.layers.0", "encoder.layers.1"}
    assert sorted(set(df.step)) == [0, 1, 2, 3]


def test_plain_loop_example_adds_at_most_five_lines():
    text = (ROOT / "examples" / "plain_loop.py").read_text()
    added = [line for line in text.splitlines() if line.rstrip().endswith("# +")]
    assert 1 <= len(added) <= 5
