"""The committed evaluation suite holds every configuration of `stability.evaluation.suite.SUITE`, and the committed
result file (the README's and docs/detector.md's tables) is what `stability eval` computes from it today."""

import json
from pathlib import Path

import pytest

from stability.cli import main
from stability.evaluation.suite import MANIFEST, SUITE, load_suite

DATA = Path(__file__).resolve().parents[1] / "data"
SUITE_DIR = DATA / "eval_suite"
RESULTS = DATA / "eval_results.json"

pytestmark = pytest.mark.slow


def test_committed_suite_is_exactly_the_configured_one():
    runs = load_suite(SUITE_DIR)
    assert sorted(r.name for r in runs) == sorted(r.name for r in SUITE)
    manifest = json.loads((SUITE_DIR / MANIFEST).read_text())
    assert manifest["command"] == "stability eval --generate"
    assert {d["name"] for d in manifest["results"]} == {r.name for r in SUITE}
    assert all(d["status"] in ("finished", "diverged") for d in manifest["results"])
    for r in runs:
        assert r.meta["split"] == ("tune" if r.meta["config"]["seed"] % 2 == 0 else "heldout")
        assert r.meta["phase_start"] == manifest["model"]["base_steps"]
        # The log starts with the last keep_base steps of the base run, then the phase.
        assert r.steps[0] == manifest["model"]["base_steps"] - manifest["model"]["keep_base"]


def test_committed_results_are_reproduced(capsys):
    assert main(["eval", "--legacy", "--suite", str(SUITE_DIR), "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    committed = json.loads(RESULTS.read_text())
    for key in ("labels", "anatomy", "detector_default", "build_up_only", "ceiling_heldout"):
        assert fresh[key] == committed[key], key
    for name, m in committed["methods"].items():
        assert fresh["methods"][name]["threshold"] == m["threshold"]
        assert fresh["methods"][name]["heldout"] == m["heldout"], name
    assert fresh["swapped_splits"] == committed["swapped_splits"]
    assert fresh["operating_points_heldout"] == committed["operating_points_heldout"]
