"""stability.watch on a user's DistributedDataParallel loop (two gloo processes): one run, and global values: the
gradient norms of the averaged gradients, equal to a single process training on the whole batch."""

from __future__ import annotations

import pytest
import torch

from stability import metrics as M
from stability.store import RunStore

STEPS = 3


def _batches():
    return torch.randint(0, 32, (STEPS, 8, 12), generator=torch.Generator().manual_seed(1))


def _worker(store: str) -> None:
    """Each rank trains on its half of every global batch, watched."""
    import torch.distributed as dist
    from test_watch import Tiny, loss_of
    from torch.nn.parallel import DistributedDataParallel

    import stability

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(Tiny())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with stability.watch(model, opt, store=store, run="ddp") as guard:
        for x in _batches():
            loss = loss_of(model, x[rank * 4:(rank + 1) * 4])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
            guard.step(loss)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_loop_gives_one_run_with_the_single_process_norms(tmp_path):
    from test_watch import BLOCKS, Tiny, loss_of, reference_norms

    from stability.distributed import launch

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
    assert store.run_names() == ["ddp"] and store.run_info("ddp")["status"] == M.ST_FINISHED
    df = store.metrics("ddp", metrics=[M.GRAD_NORM, M.LOSS])
    df = df[df["rank"] == M.GLOBAL_RANK] if "rank" in df else df
    for step, (loss, norms) in enumerate(want):
        got = {(m, l): v for m, l, v in df[df.step == step][["metric", "layer", "value"]].itertuples(index=False)}
        assert got[(M.LOSS, "")] == pytest.approx(loss, rel=1e-5)
        for layer in [*BLOCKS, "total"]:
            assert got[(M.GRAD_NORM, layer)] == pytest.approx(norms[layer], rel=1e-4), (step, layer)
