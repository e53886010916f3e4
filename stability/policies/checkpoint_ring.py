"""A bounded ring of recent training states, in CPU memory or on disk.

In memory, an entry is a deep copy of the state dict with every tensor cloned to the CPU, so later in-place
updates of the parameters and optimizer moments cannot reach it. On disk, an entry is one `torch.save` file written
under a temporary name and published with `os.replace`, so a crash mid-write never leaves a half checkpoint that
looks whole. The oldest entry is dropped (and its file removed) when the ring is full.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch


def clone_state(obj):
    """A deep copy of a state dict whose tensors are fresh CPU copies (shared storage would alias live state)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: clone_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_state(v) for v in obj)
    return copy.deepcopy(obj)


def state_bytes(obj) -> int:
    """Bytes held by the tensors of a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


@dataclass
class Entry:
    step: int
    """The trainer's step counter in the state (the next step it will run)."""
    location: str
    """`memory:ring-<n>` or the file path; what the store's checkpoints table records."""
    nbytes: int
    state: dict | None = None
    """The state itself (memory ring only)."""


class CheckpointRing:
    """`save(step, state)` / `load(entry)` / `drop_after(step)`, at most `keep` entries."""

    def __init__(self, keep: int, directory: str | Path | None = None):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self.directory = Path(directory) if directory else None
        self.entries: list[Entry] = []   # oldest first; never longer than keep
        self._seq = 0

    @property
    def storage(self) -> str:
        return "disk" if self.directory is not None else "memory"

    def nbytes(self) -> int:
        """Bytes the ring holds (in memory, or on disk)."""
        return sum(e.nbytes for e in self.entries)

    def save(self, step: int, state: dict) -> Entry:
        """Store a copy of `state`. Raises OSError (disk) or RuntimeError on failure; the ring is then unchanged."""
        self._seq += 1
        if self.directory is None:
            copied = clone_state(state)
            entry = Entry(step, f"memory:ring-{self._seq}", state_bytes(copied), copied)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"ckpt-{self._seq:06d}-step{step}.pt"
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            try:
                torch.save(state, tmp)
                os.replace(tmp, path)  # atomic publish: readers see the whole file or none
            finally:
                if tmp.exists():
                    tmp.unlink()
            entry = Entry(step, str(path), path.stat().st_size)
        self.entries.append(entry)
        while len(self.entries) > self.keep:
            self._discard(self.entries.pop(0))
        return entry

    def load(self, entry: Entry) -> dict:
        """A fresh copy of the entry's state (safe to hand to load_state_dict, which may keep references)."""
        if entry.state is not None:
            return clone_state(entry.state)
        return torch.load(entry.location, map_location="cpu", weights_only=False)

    def latest(self, max_step: int | None = None) -> Entry | None:
        """The newest entry whose step is <= max_step (any step if None)."""
        for e in reversed(self.entries):
            if max_step is None or e.step <= max_step:
                return e
        return None

    def drop_after(self, step: int) -> None:
        """Forget entries newer than `step` (they belong to a timeline a rollback abandons)."""
        keep = [e for e in self.entries if e.step <= step]
        for e in self.entries:
            if e.step > step:
                self._discard(e)
        self.entries = keep

    def remove(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if e is not entry]
        self._discard(entry)

    def clear(self) -> None:
        for e in self.entries:
            self._discard(e)
        self.entries = []

    def _discard(self, entry: Entry) -> None:
        entry.state = None
        if self.directory is not None:
            try:
                os.unlink(entry.location)
            except OSError:
                pass  # already gone: nothing to free
