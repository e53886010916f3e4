"""Under torch.distributed (gloo, 2 CPU processes): global norms, one collective per logged step.

Each rank trains on its own batch; the reference is one process training the same model on both batches
concatenated, which is what DDP and FSDP compute (equal-sized batches, gradients averaged across ranks).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probes
from stability import metrics as M

sys.path.insert(0, str(Path(__file__).parent))
from tests.probes.probes_dist_worker import STEPS, batch  # noqa: E402
from tests.probes.probes_toys import ToyMHA, run_steps  # noqa: E402

WORKER = Path(__file__).with_name("probes_dist_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODES = ("ddp", "fsdp1", "fsdp2")


def launch(tmp_path: Path) -> list[dict]:
    """Both modes in one pair of processes: starting torch twice is most of the cost."""
    port = free_port()
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(port), ",".join(MODES), str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads(o.read_text()) for o in outs]


def reference() -> list[dict]:
    torch.manual_seed(0)
    model = ToyMHA()
    mon = probes.Monitor(model, probes.MonitorConfig(weights_every=1, entropy_rows=0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recs = run_steps(model, mon, steps=STEPS, opt=opt, lr=0.1,
                     batch_fn=lambda seed: torch.cat([batch(0, seed), batch(1, seed)]))
    mon.close()
    return [{f"{m}|{layer}": v for (m, layer), v in r.items()} for r in recs]


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("dist"))


def close(a, b, tol):
    return abs(a - b) <= tol * max(abs(b), 1e-12)


GLOBAL = [M.GRAD_NORM, M.PARAM_NORM, M.UPDATE_RATIO, M.ATTN_SCORE_MAX, M.ATTN_SCORE_MIN, M.ATTN_ENTROPY,
          M.ACT_ABSMAX, M.NONFINITE_GRADS, M.LOSS]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_global_values_with_one_collective_per_logged_step(mode, ref, runs):
    ranks = [r[mode] for r in runs]
    for r in ranks:
        assert r["collectives"] == [1] * STEPS  # one all_gather per logged step, however many layers
        assert r["syncs"] == STEPS
        assert r["leftover_hooks"] == 0
    for step in range(STEPS):
        want = ref[step]
        for r in ranks:
            got = r["records"][step]
            checked = 0
            for key, v in want.items():
                metric = key.split("|")[0]
                if metric not in GLOBAL:
                    continue
                assert key in got, key
                assert close(got[key], v, 1e-4), (key, got[key], v)
                checked += 1
            assert checked > 30
        # Every rank reports the same global values.
        a, b = ranks[0]["records"][step], ranks[1]["records"][step]
        assert all(a[k] == b[k] for k in a if k.split("|")[0] in GLOBAL)
