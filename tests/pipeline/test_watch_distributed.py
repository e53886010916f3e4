"""stability.watch on a user's data-parallel loop, DistributedDataParallel and FSDP2 `fully_shard` (two gloo
processes): one run, and global values: the gradient norms of the averaged (and, with FSDP2, sharded) gradients
before the loop's clipping, equal to a single process training on the whole batch."""

from __future__ import annotations

import pytest
import torch

from stability import metrics as M
from stability.store import RunStore

STEPS = 3
MODES = ("ddp", "fsdp2")


def _batches():
    return torch.randint(0, 32, (STEPS, 8, 12), generator=torch.Generator().manual_seed(1))


def _worker(store: str) -> None:
    """Each rank trains on its half of every global batch, watched: with DDP, then with FSDP2 (`fully_shard`)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for mode in MODES:  # one launch for both: starting the workers costs more than training
        _train(store, mode, dist.get_rank())
        dist.barrier()
    dist.destroy_process_group()


def _train(store: str, mode: str, rank: int) -> None:
    import torch.distributed as dist
    from tests.pipeline.test_watch import Tiny, loss_of

    import stability

    torch.manual_seed(0)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(Tiny())
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = Tiny()
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with stability.watch(model, opt, store=store, run=mode) as guard:
        for x in _batches():
            loss = loss_of(model, x[rank * 4:(rank + 1) * 4])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
            guard.step(loss)


@pytest.mark.slow
def test_a_data_parallel_loop_gives_one_run_with_the_single_process_norms(tmp_path):
    from tests.pipeline.test_watch import BLOCKS, Tiny, loss_of, reference_norms

    from stability.distributed.launch import launch

    launch(_worker, 2, (str(tmp_path),))
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    want = []
    for x in _batches():  # the whole batch in one process: what the averaged gradients must be
        loss = loss_of(model, x)
        opt.zero_grad()
        loss.backward()
        want.append((loss.item(), reference_norms(model)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        opt.step()
    store = RunStore(tmp_path)
    assert sorted(store.run_names()) == sorted(MODES)  # one run per job, not one per rank
    for mode in MODES:
        assert store.run_info(mode)["status"] == M.ST_FINISHED
        df = store.metrics(mode, metrics=[M.GRAD_NORM, M.LOSS])
        df = df[df["rank"] == M.GLOBAL_RANK] if "rank" in df else df
        for step, (loss, norms) in enumerate(want):
            got = {(m, l): v for m, l, v in df[df.step == step][["metric", "layer", "value"]].itertuples(index=False)}
            assert got[(M.LOSS, "")] == pytest.approx(loss, rel=1e-5), (mode, step)
            for layer in [*BLOCKS, "total"]:
                assert got[(M.GRAD_NORM, layer)] == pytest.approx(norms[layer], rel=1e-4), (mode, step, layer)
