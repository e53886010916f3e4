"""A third tuning recipe for every predictable mechanism: does more tuning data move the detector's held-out
figures? Trains five recipes on model / data / size combinations no split has (10 unstable seeds, 6 calm controls
and, for the fp32 recipes, 3 long calm controls each: 92 runs, about 13 minutes with two jobs) into DIR, refits the
risk model on the tuning split plus them (as `stability eval --fit` would), picks its thresholds there, and scores the
held-out and fresh splits once; then replays the committed sample runs with the refitted model (the target: at most
one alert per calm run).

Measured (DIR generated at commit 2b8ea66; 25 of the 92 runs diverged): 138 tuning build-up incidents (97 before); weights
`loss_z` 0.96 -> 1.30, `grad_rise` 0.65 -> 0.18, `grad_loss_rise` 1.31 -> 1.49, threshold 0.931 -> 0.839. Within 2
false alarms / 10k: held out 15/56 (shipped 9; 1.78 false alarms / 10k, median lead 4, 6 hits 5+ steps ahead against
1), fresh 26/50 (22) at 2.81 false alarms / 10k, over the budget; within 10: 35/56 (37) and 37/50 (39). The
held-out curve is not better: the shipped model has 14/56 at 1.49 false alarms / 10k at threshold 0.867, this one
13/56 at 1.78; the gain within 2 is where the tuning split puts the threshold on a steep curve, not a better
ranking. At 0.839 the sample runs `post-s0` and `deepnorm-s0` get a second alert (step 441, a two-step loss bump
of 0.5-0.6 nats, no labelled spike), against the target of one per calm run. Not shipped.

    python docs/experiments/third_recipes.py [DIR]            # DIR defaults to /tmp/zoo_third_recipes
"""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from stability.evaluation.benchmark import compare, load_runs
from stability.evaluation.zoo import _GLM, _NANO_MKV, TUNE, ZOO_FILE, generate, load_zoo, zoo_runs
from stability.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
THIRD = (
    ("postln_emb_surge", "postln-glm-d56-l2", TUNE, dict(_GLM, ln="post", d_model=56, n_layer=2),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.02, ramp_from=50), dict(lr=1e-3)),
    ("attn_logit_growth", "attn-nano-mkv-d48-l3", TUNE, dict(_NANO_MKV, d_model=48, n_layer=3),
     dict(grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(qk_layernorm=True, lr=3e-3)),
    ("output_logit_divergence", "logit-nano-mkv-d32-l3", TUNE,
     dict(_NANO_MKV, d_model=32, n_layer=3, qk_layernorm=True),
     dict(weight_decay=0.0, grad_clip=0.0, lr=1e-2, ramp=1.02, ramp_from=50), dict(z_loss=1e-4, lr=3e-3)),
    ("adam_sign_updates", "adam-glm-d32-l3", TUNE, dict(_GLM, d_model=32, n_layer=3),
     dict(betas=(0.9, 0.999), eps=1e-15, grad_clip=0.0, lr=3e-3, ramp=1.015, ramp_from=50), dict()),
    ("fp16_scale_collapse", "fp16-glm-l3", TUNE,
     dict(_GLM, d_model=32, n_layer=3, n_head=2, seq_len=32, batch_size=8, steps=250, precision="fp16"),
     dict(grad_clip=0.0, lr=3e-3, ramp=1.025, ramp_from=30), dict(lr=1e-3)),
)
"""Entries as in `zoo.RECIPES`, all on the tuning split."""


def main(out: Path):
    if not (out / ZOO_FILE).exists():
        generate(out, zoo_runs(THIRD), jobs=2)
    runs = load_runs(ROOT / "tests" / "data" / "zoo", ROOT / "tests" / "data" / "eval_suite") + load_zoo(out)
    result, model = compare(runs, fit=True, surges=False)
    det = result["detector"]
    summary = {"threshold": model.threshold, "weights": model.weights, "at_budget": {}}
    for b, parts in det["at_budget"].items():
        summary["at_budget"][b] = {p: {k: (parts[p].get("overall") or parts[p]).get(k) for k in
                                       ("hits", "incidents", "false_alarms_per_10k", "median_lead", "hits_ahead")}
                                   for p in ("tune", "heldout", "fresh") if p in parts}
    # The best point of the held-out curve within 2 (the held-out split's own pick: how good the ranking is,
    # whatever the tuning split's threshold).
    ok = [p for p in det["curve_heldout"] if (p["false_alarms_per_10k"] or 0) <= 2]
    best = max(ok, key=lambda p: (p["recall"] or 0, -p["false_alarms_per_10k"]))
    summary["heldout_curve_best_within_2"] = {k: best[k] for k in ("threshold", "hits", "false_alarms_per_10k")}
    cfg = out / "refitted_detector.json"
    cfg.write_text(json.dumps({"model": asdict(model), "risk_threshold": model.threshold}))
    alerts = {}
    for name in sorted(RunStore(ROOT / "sample_runs").run_names()):
        res = subprocess.run([sys.executable, "-m", "stability", "detect", name, "--store", str(ROOT / "sample_runs"),
                              "--config", str(cfg), "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
        alerts[name] = [a["step"] for a in json.loads(res.stdout)["alerts"]]
    summary["sample_run_alerts"] = alerts
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/zoo_third_recipes"))
