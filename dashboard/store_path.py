"""Where the built-in sample runs are: $STABILITY_SAMPLE_RUNS, else `sample_runs/` at the repository root."""

from __future__ import annotations

import os
from pathlib import Path

ENV_SAMPLE_RUNS = "STABILITY_SAMPLE_RUNS"


def default_store() -> Path:
    env = os.environ.get(ENV_SAMPLE_RUNS)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "sample_runs"
