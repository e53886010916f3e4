"""The benchmark's noise: bootstrap intervals over runs, against a resampling written out by hand, and the committed
result's intervals around the committed point estimates."""

import json
from pathlib import Path

import numpy as np
import pytest

from stability.evaluation.uncertainty import intervals

RESULTS = Path(__file__).resolve().parents[1] / "data" / "zoo_results.json"


def _by_hand(rows_a, rows_b, resamples, seed, level):
    """Resample runs with replacement in a plain loop; recall = hits / incidents of the drawn runs, false alarms
    per 10k = 1e4 x false alarms / calm steps; paired: the same draw for both methods."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rows_a), size=(resamples, len(rows_a)))
    rec_a, rec_b, fa_a, diff = [], [], [], []
    for draw in draws:
        ha = sum(rows_a[i][0] for i in draw)
        hb = sum(rows_b[i][0] for i in draw)
        inc = sum(rows_a[i][1] for i in draw)
        fa = sum(rows_a[i][2] for i in draw)
        calm = sum(rows_a[i][3] for i in draw)
        if inc:
            rec_a.append(ha / inc)
            rec_b.append(hb / inc)
            diff.append(ha / inc - hb / inc)
        if calm:
            fa_a.append(1e4 * fa / calm)
    q = [50 * (1 - level), 50 * (1 + level)]
    return {"a": np.percentile(rec_a, q), "b": np.percentile(rec_b, q), "fa_a": np.percentile(fa_a, q),
            "diff": np.percentile(diff, q)}


def test_intervals_match_a_resampling_written_out_by_hand():
    # Eight runs: (hits, incidents, false alarms, calm steps); method b misses two of a's hits and pages more.
    a = [(1, 1, 0, 200), (0, 1, 1, 250), (2, 2, 0, 180), (0, 0, 0, 300), (1, 2, 0, 220), (0, 1, 2, 260),
         (1, 1, 0, 240), (0, 0, 1, 300)]
    b = [(1, 1, 1, 200), (0, 1, 1, 250), (1, 2, 0, 180), (0, 0, 0, 300), (0, 2, 1, 220), (0, 1, 2, 260),
         (1, 1, 0, 240), (0, 0, 1, 300)]
    out = intervals({"a": np.array(a, float), "b": np.array(b, float)}, "a", level=0.9, resamples=500, seed=7)
    ref = _by_hand(a, b, 500, 7, 0.9)
    ma, mb = out["methods"]["a"], out["methods"]["b"]
    assert ma["recall"] == pytest.approx(5 / 8) and mb["recall"] == pytest.approx(3 / 8)
    assert ma["false_alarms_per_10k"] == pytest.approx(1e4 * 4 / 1950, abs=1e-4)
    assert ma["recall_ci"] == pytest.approx(ref["a"], abs=1e-4)
    assert mb["recall_ci"] == pytest.approx(ref["b"], abs=1e-4)
    assert ma["false_alarms_per_10k_ci"] == pytest.approx(ref["fa_a"], abs=1e-4)
    assert mb["a_minus_recall"] == pytest.approx(2 / 8)
    assert mb["a_minus_recall_ci"] == pytest.approx(ref["diff"], abs=1e-4)
    assert "a_minus_recall" not in ma
    # a never does worse than b on any run, so no resample can make the difference negative.
    assert mb["a_minus_recall_ci"][0] >= 0


def test_warnings_ahead_get_their_own_intervals_against_the_same_hand_resampling():
    # A fifth column: hits at least 5 steps ahead. a's early hits become b's; the hand resampling treats that column
    # as the hits, so the "ahead" figures must equal it run for run.
    a = [(1, 1, 0, 200, 1), (0, 1, 1, 250, 0), (2, 2, 0, 180, 1), (0, 0, 0, 300, 0), (1, 2, 0, 220, 1),
         (0, 1, 2, 260, 0), (1, 1, 0, 240, 0), (0, 0, 1, 300, 0)]
    b = [(1, 1, 1, 200, 0), (0, 1, 1, 250, 0), (1, 2, 0, 180, 1), (0, 0, 0, 300, 0), (0, 2, 1, 220, 0),
         (0, 1, 2, 260, 0), (1, 1, 0, 240, 1), (0, 0, 1, 300, 0)]
    out = intervals({"a": np.array(a, float), "b": np.array(b, float)}, "a", level=0.9, resamples=500, seed=7)
    swap = [(r[4], r[1], r[2], r[3]) for r in a], [(r[4], r[1], r[2], r[3]) for r in b]
    ref = _by_hand(*swap, 500, 7, 0.9)
    ma, mb = out["methods"]["a"], out["methods"]["b"]
    assert ma["recall_ahead"] == pytest.approx(3 / 8) and mb["recall_ahead"] == pytest.approx(2 / 8)
    assert ma["recall_ahead_ci"] == pytest.approx(ref["a"], abs=1e-4)
    assert mb["a_minus_recall_ahead"] == pytest.approx(1 / 8)
    assert mb["a_minus_recall_ahead_ci"] == pytest.approx(ref["diff"], abs=1e-4)
    # The all-hits figures are unchanged by the extra column.
    assert ma["recall"] == pytest.approx(5 / 8) and mb["a_minus_recall"] == pytest.approx(2 / 8)


def test_a_method_against_itself_differs_by_exactly_nothing_and_bad_input_is_refused():
    rows = np.array([(1, 1, 0, 100), (0, 1, 1, 100), (1, 2, 0, 100)], float)
    out = intervals({"a": rows, "b": rows.copy()}, "a", resamples=200)
    assert out["methods"]["b"]["a_minus_recall_ci"] == [0.0, 0.0]
    assert out["methods"]["a"]["recall_ci"] == out["methods"]["b"]["recall_ci"]
    with pytest.raises(ValueError, match="same runs"):
        intervals({"a": rows, "b": rows[:2]}, "a")


@pytest.mark.skipif(not RESULTS.exists(), reason="no committed result")
def test_committed_intervals_surround_the_committed_figures():
    r = json.loads(RESULTS.read_text())
    noise = r["noise"]
    assert set(noise) == {"heldout", "fresh", "heldout+fresh"}
    for b in ("2", "10"):
        for name, entry in [("detector", r["detector"]), *r["baselines"].items()]:
            for split in ("heldout", "fresh"):
                o = entry["at_budget"][b][split]["overall"]
                m = noise[split][b]["methods"][name]
                # The point estimates are the reported figures; each interval contains its point estimate.
                assert m["recall"] == pytest.approx(o["recall"], abs=1e-4)
                assert m["false_alarms_per_10k"] == pytest.approx(o["false_alarms_per_10k"], abs=1e-3)
                lo, hi = m["recall_ci"]
                assert lo <= m["recall"] <= hi
            pooled = noise["heldout+fresh"][b]["methods"][name]
            held, fresh = (entry["at_budget"][b][s]["overall"] for s in ("heldout", "fresh"))
            assert pooled["recall"] == pytest.approx((held["hits"] + fresh["hits"])
                                                     / (held["incidents"] + fresh["incidents"]), abs=1e-4)
