"""The run store: Parquet segments written in the background, read live through DuckDB, compacted at the end.

    from stability.store import RunStore
    store = RunStore("runs/")
    w = store.create_run("r1", config={"ln": "pre", "precision": "bf16"})
    w.log(step, {("loss", ""): 2.1, ("grad_norm", "embedding"): 3.2})
    w.close(status="finished")
    store.series("r1", "loss")

See docs/store.md and the "Store contract" in docs/ARCHITECTURE.md.
"""

from stability.store.layout import StoreError, check_run_name
from stability.store.store import RunStore
from stability.store.writer import RunWriter, WriterConfig

__all__ = ["RunStore", "RunWriter", "WriterConfig", "StoreError", "check_run_name"]
