"""One rank of the distributed probes test.

    python probes_dist_worker.py RANK WORLD PORT MODES OUT.json

Trains ToyMHA for two steps under each of MODES (`ddp,fsdp1,fsdp2`; gloo, CPU) with rank-specific batches, records what
the monitor reports and how many collectives its `after_optimizer_step` issued, and writes that as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import probes  # noqa: E402
from probes_toys import ToyMHA, hook_count, lm_loss, tokens  # noqa: E402

STEPS = 2
COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter_tensor",
               "gather", "reduce", "all_to_all", "barrier")


def batch(rank: int, step: int) -> torch.Tensor:
    return tokens(batch=2, seed=100 * step + rank)


def install_counter() -> dict:
    """Count torch.distributed collectives while `calls["on"]` is set."""
    calls = {"n": 0, "on": False}
    for name in COLLECTIVES:
        real = getattr(dist, name)

        def counting(*a, _real=real, **kw):
            if calls["on"]:
                calls["n"] += 1
            return _real(*a, **kw)

        setattr(dist, name, counting)
    return calls


def train(rank: int, world: int, mode: str, calls: dict) -> dict:
    torch.manual_seed(0)
    model = ToyMHA()
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    base_hooks = hook_count(wrapped)
    mon = probes.Monitor(wrapped, probes.MonitorConfig(weights_every=1, entropy_rows=0))
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    records, collectives = [], []
    for step in range(STEPS):
        x = batch(rank, step)
        mon.start_step(step)
        loss = lm_loss(wrapped(x), x)
        opt.zero_grad()
        loss.backward()
        mon.after_backward(step)
        opt.step()
        calls["on"], calls["n"] = True, 0
        rec = mon.after_optimizer_step(step, loss=loss, lr=0.1, tokens=x.numel(), optimizer=opt)
        calls["on"] = False
        collectives.append(calls["n"])
        records.append({f"{m}|{layer}": v for (m, layer), v in rec.items()})
    mon.close()
    return {"records": records, "collectives": collectives, "syncs": mon.syncs,
            "leftover_hooks": hook_count(wrapped) - base_hooks}


def main(rank: int, world: int, port: int, modes: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    calls = install_counter()
    result = {mode: train(rank, world, mode, calls) for mode in modes.split(",")}
    with open(out, "w") as f:
        json.dump(result, f)
    dist.barrier()  # neither rank tears the group down while the other still talks to it
    dist.destroy_process_group()
    # FSDP leaves joinable C++ threads behind; letting the interpreter destroy them aborts now and then
    # ("terminate called without an active exception") after all the work is done and written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
