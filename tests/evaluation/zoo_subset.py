"""A few recipes of the committed instability zoo (and a few runs of the re-warm suite) written as a zoo and a suite
of their own, for tests of properties that hold on any set of runs (which runs a fold or a fit reads): the whole
zoo takes minutes per command on a 2-core machine, a subset seconds."""

from __future__ import annotations

from pathlib import Path

from stability.evaluation import runset

DATA = Path(__file__).resolve().parents[1] / "data"
ZOO_DIR, SUITE_DIR = DATA / "zoo", DATA / "eval_suite"
# One recipe per split and mechanism family that has build-up incidents and calm controls; small enough to train a
# fold in seconds.
TUNE = ("attn-nano-cpy", "fp16-glm", "postln-glm-d48")
HELDOUT = ("postln-glm-d64",)
FRESH = ("fresh-attn-glm", "fresh-postln-glm-d32")


def _copy(src: Path, dst: Path, data: str, manifest: str, pick) -> None:
    """Copy the runs of the set in `src` whose names `pick(manifest entries)` returns into `dst`, as a set of its
    own (`stability.evaluation.runset`, as the generators write one)."""
    frame, m = runset.read(src, data, manifest)
    names = set(pick(m["runs"]))
    dst.mkdir(parents=True, exist_ok=True)
    m["runs"] = [d for d in m["runs"] if d["name"] in names]
    m["results"] = [d for d in m.get("results", []) if d["name"] in names]
    runset.write(dst, data, manifest, frame[frame["run"].isin(names)], m)


def write(out: Path, recipes=TUNE + HELDOUT + FRESH, suite_per_split: int = 2) -> tuple[Path, Path]:
    """(zoo folder, suite folder) under `out`: the zoo's runs of `recipes`; of the suite, the first
    `suite_per_split` runs (by name) of each split's layer norm (the benchmark's SUITE_SPLIT)."""
    from stability.evaluation.benchmark import SUITE_SPLIT

    def suite_runs(entries):
        by_key = {}
        for d in sorted(entries, key=lambda d: d["name"]):
            by_key.setdefault((d["ln"], d["seed"] % 2), []).append(d["name"])
        return [n for key in SUITE_SPLIT for n in by_key.get(key, [])[:suite_per_split]]

    zoo, suite = out / "zoo", out / "eval_suite"
    _copy(ZOO_DIR, zoo, "zoo.parquet", "zoo.json", lambda ds: [d["name"] for d in ds if d["recipe"] in recipes])
    _copy(SUITE_DIR, suite, "suite.parquet", "suite.json", suite_runs)
    return zoo, suite
