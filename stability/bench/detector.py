"""`stability bench detector --json`: cost of one OnlineDetector.update at a logged step."""

from __future__ import annotations

import random
import statistics
import time

HELP = "per-step cost of the online spike detector (microseconds per update)"


def add_arguments(parser):
    parser.add_argument("--updates", type=int, default=20000, help="updates to time (default 20000)")
    parser.add_argument("--layers", type=int, default=4, help="layers in the metric dict (default 4)")


def run(args) -> dict:
    from stability.detector import OnlineDetector

    rng = random.Random(0)
    keys = (["loss", "lr", "grad_norm/embedding", "grad_norm/total", "loss_scale", "skipped_step"]
            + [f"{m}/layers.{i}" for i in range(args.layers)
               for m in ("grad_norm", "attn_score_max", "nonfinite_grads", "act_absmax")])
    recs = [{k: rng.uniform(0.5, 2.0) for k in keys} for _ in range(min(args.updates, 5000))]
    det = OnlineDetector()
    per = []
    for rep in range(max(1, args.updates // len(recs))):
        t0 = time.perf_counter()
        for i, r in enumerate(recs):
            det.update(rep * len(recs) + i, r)
        per.append((time.perf_counter() - t0) / len(recs))
    return {
        "updates": len(recs) * len(per), "keys_per_update": len(keys),
        "us_per_update_median": round(1e6 * statistics.median(per), 2),
        "us_per_update_max_batch": round(1e6 * max(per), 2),
        "state_values": sum(len(t.state_dict()["hist"]["values"]) for t in det.evidence._t.values()),
    }
