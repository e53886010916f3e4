"""The study's committed results: per-run rows, the three parts' tables and their cost, from a study folder.

    stability study-report --study DIR --out docs/study --plots docs/img

writes results.json (the rows and tables, compact), runs.csv (one row per run) and tables.md (the Markdown
tables the README shows); with --plots the figures (study_sensitivity.png, study_regime.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from stability import metrics as M
from stability.study import results as R
from stability.report.summary import fmt, to_markdown

MANIFEST = "study.json"


def load_manifest(study_dir: str | Path) -> dict:
    return json.loads((Path(study_dir) / MANIFEST).read_text())


def compute(study_dir: str | Path) -> dict:
    """Rows and tables of a study folder (its store is DIR/runs, its plan DIR/study.json)."""
    from stability.store import RunStore

    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    store = RunStore(study_dir / "runs")
    listing = store.list_runs()
    metas = {row["run"]: row for row in listing.to_dict("records")}
    # A run still being written (a study that is still running) is left for a later report.
    done = {n for n, m in metas.items() if m.get("status") != M.ST_RUNNING}
    rows = [R.run_row(store, r["name"], r["part"], r["labels"], metas[r["name"]]) for r in manifest["runs"]
            if r["name"] in done]
    missing = [r["name"] for r in manifest["runs"] if r["name"] not in done]
    df = pd.DataFrame(rows, columns=R.RUN_COLUMNS)
    cost = {}
    timings = manifest.get("timings", {})
    for r in manifest["runs"]:
        t = timings.get(r["name"])
        if t:
            c = cost.setdefault(r["part"], {"runs": 0, "cpu_s": 0.0, "wall_s": 0.0})
            c["runs"] += 1
            c["cpu_s"] = round(c["cpu_s"] + t["cpu_s"], 1)
            c["wall_s"] = round(c["wall_s"] + t["wall_s"], 1)
    return {"command": manifest.get("command"), "plan": manifest.get("plan"), "jobs": manifest.get("jobs"),
            "wall_s": manifest.get("wall_s"), "cost": cost, "missing": missing,
            "runs": [{k: R._value(v) for k, v in row.items()} for row in rows],
            "sensitivity": _records(R.sensitivity(df)), "regime": _records(R.arms(df, "regime")),
            "softmax": _records(R.arms(df, "softmax"))}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: R._value(v) for k, v in row.items()} for row in df.to_dict("records")]


def _pm(mean, lo, hi) -> str:
    if mean is None or mean != mean:  # no seed ended finite
        return "–"
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def markdown_tables(res: dict) -> dict[str, str]:
    """The README's tables: sensitivity, regime, softmax and cost, as Markdown."""
    sens = pd.DataFrame(res["sensitivity"])
    tables = {}
    if len(sens):
        wide = sens.assign(cell=[f"{s:.3f} [{lo:.3f}, {hi:.3f}]" for s, lo, hi in
                                 zip(sens["sensitivity"], sens["sens_min"], sens["sens_max"])])
        piv = wide.pivot(index="ln", columns="depth", values="cell").reindex(
            [v for v in ("pre", "post", "sandwich", "deepnorm") if v in set(wide["ln"])])
        piv.columns = [f"{c} layers" for c in piv.columns]
        tables["sensitivity"] = to_markdown(piv.reset_index())
        best = sens[["ln", "depth", "best_loss", "best_lr", "trained_lrs", "at_or_above_init", "seeds"]]
        tables["sensitivity_best"] = to_markdown(best)
    for part in ("regime", "softmax"):
        a = pd.DataFrame(res[part])
        if not len(a):
            continue
        show = pd.DataFrame({
            "arm": a["arm"], "lr": a["lr"], "seeds": a["seeds"], "diverged": a["diverged"], "spikes": a["spikes"],
            "loss-scale drops": a["loss_scale_drops"], "skipped steps": a["skipped_steps"],
            "overflows": a["overflow_count"], "attn overflows": a["attn_overflows"],
            "final loss [min, max]": [_pm(*x) for x in zip(a["final_loss"], a["final_min"], a["final_max"])],
            "held-out loss [min, max]": [_pm(*x) for x in zip(a["val_loss"], a["val_min"], a["val_max"])]})
        if part == "softmax":
            show.insert(9, "max attn score", a["max_attn_score"])
        tables[part] = to_markdown(show)
    cost = pd.DataFrame([{"part": p, **c, "cpu_min": round(c["cpu_s"] / 60, 1)} for p, c in res["cost"].items()])
    if len(cost):
        tables["cost"] = to_markdown(cost[["part", "runs", "cpu_min", "cpu_s", "wall_s"]])
    return tables


def write_results(study_dir: str | Path, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = compute(study_dir)
    paths = [out_dir / "results.json", out_dir / "runs.csv", out_dir / "tables.md"]
    paths[0].write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    pd.DataFrame(res["runs"], columns=R.RUN_COLUMNS).to_csv(paths[1], index=False)
    md = [f"<!-- written by `stability study-report`; plan {res['plan']} -->"]
    for name, table in markdown_tables(res).items():
        md += [f"### {name}", "", table]
    paths[2].write_text("\n".join(md))
    return paths


def update_markdown(path: str | Path, tables: dict[str, str]) -> list[str]:
    """Replace each `<!-- study-NAME:start -->` ... `<!-- study-NAME:end -->` block of the file at `path` with
    the table NAME; returns the names replaced (a table without markers in the file is left out)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    done = []
    for name, table in tables.items():
        start, end = f"<!-- study-{name}:start -->", f"<!-- study-{name}:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table.strip() + "\n" + end + rest.split(end, 1)[1]
            done.append(name)
    path.write_text(text, encoding="utf-8")
    return done

