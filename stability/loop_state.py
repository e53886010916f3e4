"""What the policies see of a training loop: `LoopState`, plus the data position they rewind.

The policies (stability/policies/) act on a host: its model, GradScaler, step counter, learning-rate scale,
state dict (for a rollback), data loader position (for the data skip), rank plumbing, and the pipeline's parts
(sink, detector, notifier, losses). A user's loop gets a `LoopState` over the model, optimizer and scaler it was
given; the reference trainer (stability/reference/train.py) is a `LoopState` over its own, so both have one
state dict:

- `state_dict()` / `load_state_dict()`: model, optimizer, GradScaler, torch/CUDA/Python/NumPy RNG, the step,
  the learning-rate scale, the data position, and `extra` objects with their own state dicts (an LR scheduler);
- `lr_scale`: applied by `stability.watch` to every param group for the optimizer step only (the user's
  schedule keeps writing the base learning rate);
- `loader`: the data position. Rolling back "with data skip" needs the user's help, because only the user's code
  knows where its data is: pass `data=` an object with `get_state()`, `set_state(state)` and `skip(n)` (the
  next n batches are not trained on), e.g. `SkippableBatches(loader)`. Without it a rollback restores the state
  and the loop goes on with the batches that come next (nothing is replayed, nothing extra is skipped).
"""

from __future__ import annotations

import random

import torch

from stability.distributed.single_process import SingleProcess


class NoScaler:
    """Stands in for a GradScaler when the loop has none (what `scaler.is_enabled()` asks)."""

    def is_enabled(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


class SkippableBatches:
    """An iterable of batches that can skip ahead: `for batch in SkippableBatches(loader)`.

    `skip(n)` drops the next n batches the loop would have received; `get_state()` is the number of batches
    consumed (trained on or skipped) across epochs. A stream cannot rewind, so `set_state()` keeps the current
    position: after a rollback the loop continues with new data, then skips `n`.
    """

    def __init__(self, batches):
        self.batches = batches
        self.position = 0
        self._pending = 0

    def __iter__(self):
        for batch in self.batches:
            self.position += 1
            if self._pending:
                self._pending -= 1
                continue
            yield batch

    def __len__(self):
        return len(self.batches)

    def skip(self, n: int) -> None:
        self._pending += int(n)

    def get_state(self):
        return self.position

    def set_state(self, state) -> None:
        pass


class NoData:
    """No data object given: nothing to skip or rewind (after a rollback the loop goes on with the next batches)."""

    def get_state(self):
        return None

    def set_state(self, state) -> None:
        pass

    def skip(self, n: int) -> None:
        pass


class DataPosition:
    """The `loader` of the policy surface, over the user's `data` object (or `NoData`)."""

    def __init__(self, data=None):
        data = NoData() if data is None else data
        missing = [m for m in ("get_state", "set_state", "skip") if not callable(getattr(data, m, None))]
        if missing:
            raise ValueError(f"data: {type(data).__name__} has no {', '.join(missing)} (a data position needs "
                             f"get_state(), set_state(state) and skip(n); see stability.SkippableBatches)")
        self.data = data
        self.skipped = 0
        """Batches the policies asked to skip (also without a data object, where nothing can be skipped)."""

    def skip(self, n: int) -> None:
        self.skipped += int(n)
        self.data.skip(int(n))

    def state_dict(self) -> dict:
        return {"position": self.data.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.data.set_state(state["position"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


class LoopState:
    """The policies' view of a loop (see the module docstring). `guard` is the `Guard` (the pipeline) that owns it."""

    def __init__(self, model, optimizer, scaler=None, data=None, extra: dict | None = None, rank: int = 0):
        self.model, self.optimizer = model, optimizer
        self.dp = SingleProcess(model)
        """Rank plumbing (stability/distributed/single_process.py): the reference trainer's DataParallel under
        torch.distributed; a user's DDP model needs none (the probes reduce their own values)."""
        self.scaler = scaler if scaler is not None else NoScaler()
        self.loader = DataPosition(data)
        self.extra = dict(extra or {})
        for name, obj in self.extra.items():
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise ValueError(f"extra state {name!r}: {type(obj).__name__} has no state_dict/load_state_dict")
        self.rank = rank
        self.step = 0
        self.lr_scale = 1.0
        """Multiplier on every param group's learning rate during the optimizer step (LR back-off)."""
        self.stop_reason: str | None = None
        self.guard = None

    # The pipeline's parts, where the policies (and the benchmarks, switching the probes between arms) look for them.
    @property
    def monitor(self):
        return self.guard.monitor

    @monitor.setter
    def monitor(self, monitor):
        self.guard.monitor = monitor

    @property
    def sink(self):
        return self.guard.sink

    @sink.setter
    def sink(self, sink):
        self.guard.sink = sink

    @property
    def detector(self):
        return self.guard.detector

    @detector.setter
    def detector(self, detector):
        self.guard.detector = detector

    @property
    def notifier(self):
        return self.guard.notifier

    @notifier.setter
    def notifier(self, notifier):
        self.guard.notifier = notifier

    @property
    def policies(self):
        return self.guard.policies

    @property
    def losses(self):
        return self.guard.losses

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def grad_norm(self) -> torch.Tensor:
        """Total gradient norm as the backward left it (before the loop's clipping), a 0-dim tensor."""
        return self.guard.grad_norm_before_clip()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "lr_scale": self.lr_scale,
            "loader": self.loader.state_dict(),
            "extra": {name: obj.state_dict() for name, obj in self.extra.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.lr_scale = state["lr_scale"]
        self.loader.load_state_dict(state["loader"])
        for name, obj in self.extra.items():
            obj.load_state_dict(state["extra"][name])
