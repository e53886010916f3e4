"""Run `stability train` commands as subprocesses, `jobs` at a time, one torch thread each.

Shared by `stability study` and `stability sample-runs`: every run of either is one `stability train` command, so
a run can be reproduced on its own from the command line the plan prints.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def command(argv: list[str]) -> list[str]:
    """The `stability` entry point next to this interpreter when installed, else the module."""
    exe = Path(sys.executable).with_name("stability")
    return [str(exe), *argv] if exe.exists() else [sys.executable, "-m", "stability", *argv]


def train_all(work: list[tuple[str, list[str]]], jobs: int) -> list[dict]:
    """Run the (name, argv) commands, `jobs` at a time; one result dict per run (run, returncode, wall_s, cpu_s,
    last output line), in completion order. With jobs > 1 the CPU time of a run is approximate (children are
    timed as they are reaped)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending, running, results = list(work), [], []
    clock = _ChildrenCPU()
    while pending or running:
        while pending and len(running) < jobs:
            name, argv = pending.pop(0)
            running.append((name, subprocess.Popen(command(argv), env=env, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True), time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out, err = proc.communicate()
            wall, cpu = time.perf_counter() - t0, clock.since_last()
            line = (out.strip().splitlines() or [""])[-1]
            results.append({"run": name, "returncode": proc.returncode, "wall_s": round(wall, 2),
                            "cpu_s": round(cpu, 2), "line": line})
            print(f"[{len(results)}/{len(work)}] {name}: {line or 'no output'} (wall {wall:.0f} s, cpu {cpu:.0f} s)",
                  file=sys.stderr, flush=True)
            if proc.returncode != 0:
                print("\n".join(err.strip().splitlines()[-15:]), file=sys.stderr, flush=True)
    return results


class _ChildrenCPU:
    """CPU time of reaped children since the last call (ru_utime + ru_stime of all children is cumulative)."""

    def __init__(self):
        self._last = self._total()

    @staticmethod
    def _total() -> float:
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        return now.ru_utime + now.ru_stime

    def since_last(self) -> float:
        total = self._total()
        cpu, self._last = total - self._last, total
        return cpu
