"""The documented example runs as shipped, and the overhead benchmark prints the JSON the docs describe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def example():
    """examples/plain_loop.py, imported as it ships (in-process: starting a fresh torch costs more than the run)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import plain_loop
    finally:
        sys.path.pop(0)
    return plain_loop


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
    assert (ROOT / "examples" / "plain_loop.py").read_text() in doc
