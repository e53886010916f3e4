"""The monitor a training loop embeds: hooks on attach, device-side gathering, one host sync per logged step.

```python
mon = probes.Monitor(model, probes.MonitorConfig(every=1))
for step in range(steps):
    mon.start_step(step)
    loss = model(x).loss; scaler.scale(loss).backward()
    scaler.unscale_(opt)
    mon.after_backward(step, scaler=scaler)
    scaler.step(opt); scaler.update()
    rec = mon.after_optimizer_step(step, loss=loss, lr=lr, tokens=n, optimizer=opt, scaler=scaler)
mon.close()
```
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probes import grad_norms as G
from probes.activations import ActivationProbe, finish as finish_activations
from probes.attention_range import AttentionProbe, finish as finish_attention
from probes.attention_scores import DEFAULT_CHUNK_ELEMS, forget as forget_masks
from probes.distributed import uses_fsdp1, world
from probes.fp16_overflow import ScalerProbe
from probes.hf_attention import HFEagerProbe
from probes.layers import find_blocks
from probes.reading import SUM, Reading
from probes.sdpa import MODES as SDPA_MODES, SDPAProbe
from stability import metrics as M

Record = dict[tuple[str, str], float]


@dataclass
class MonitorConfig:
    every: int = 1
    """Record every N steps (steps where `step % every == 0`); other steps cost one Python call each."""
    layers: tuple[str, ...] = ()
    """fnmatch patterns of block names to report per layer (`layers.*`, `head`); empty = all. Totals and the
    embedding always cover the whole model; unselected blocks get no forward hooks."""
    embedding: str | None = None
    """Module path of the input embedding; None = the first `nn.Embedding`."""
    weights_every: int = 10
    """Record `param_norm` and `update_ratio` every N steps (a multiple of `every`; 0 = never). The exact update
    needs a copy of the weights before the optimizer step, which is what makes this the costly part."""
    attention: bool = True
    """Record attention-score ranges and entropy (hook points, `nn.MultiheadAttention`, SDPA)."""
    per_head: bool = False
    """Also record score range and entropy per head (`layers.3.head0`); a slower reduction."""
    entropy_rows: int = 32
    """Entropy from about this many evenly spaced query rows of the first sequence; 0 = every row (exact)."""
    sdpa: str = "auto"
    """How to see `F.scaled_dot_product_attention` calls: auto, patch, mode or off (see `probes/sdpa.py`).
    `auto` looks only when no hook point or `nn.MultiheadAttention` was found."""
    exact_every: int = 10
    """`F.scaled_dot_product_attention` calls and `nn.MultiheadAttention`: recompute the exact
    `attn_score_max/min`, the raw range and `attn_entropy` on every N-th logged step (0 = never); the recomputation
    is a second q.k^T per layer, which on a small model costs ~15 % of the step. Every logged step records
    `attn_lse_max` from SDPA's flash kernel on a CPU, an upper bound of the max within log(keys), at no extra
    matmul. Hook points (the scores the model computed anyway) and HF eager attention are exact on every logged
    step."""
    score_chunk_mb: float = DEFAULT_CHUNK_ELEMS * 4 / 2**20
    """Largest block of recomputed fp32 scores, in MiB: the extra memory of a logged step does not grow with T."""
    activations: bool = True
    """Record the absolute maximum of each block's output (`act_absmax`)."""
    sharded: bool | None = None
    """Treat every parameter as a shard whose squares add across ranks; None = detect (DTensor `Shard`
    placements, FSDP1 with `use_orig_params=True`). Replicated (DDP) parameters are not added."""
    process_group: Any = field(default=None, repr=False)
    """torch.distributed group to reduce over; None = the default group."""
    reduce: Any = field(default=None, repr=False)
    """`reduce(sums, maxes, group) -> (sums, maxes)` across ranks; None = one all_gather per logged step
    (`probes.distributed.reduce_packed`). An all-reduce pair moves less data at thousands of ranks."""

    def __post_init__(self):
        if isinstance(self.layers, str):
            self.layers = (self.layers,)
        self.layers = tuple(self.layers)
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.weights_every < 0 or (self.weights_every and self.weights_every % self.every):
            raise ValueError(f"weights_every must be 0 or a multiple of every ({self.every}), got {self.weights_every}")
        if self.entropy_rows < 0:
            raise ValueError(f"entropy_rows must be >= 0, got {self.entropy_rows}")
        if self.sdpa not in SDPA_MODES:
            raise ValueError(f"sdpa must be one of {', '.join(SDPA_MODES)}, got {self.sdpa!r}")
        if not isinstance(self.exact_every, int) or self.exact_every < 0:
            raise ValueError(f"exact_every must be an int >= 0, got {self.exact_every!r}")
        if not self.score_chunk_mb > 0:
            raise ValueError(f"score_chunk_mb must be > 0, got {self.score_chunk_mb!r}")

    @property
    def chunk_elems(self) -> int:
        return max(1, int(self.score_chunk_mb * 2**20) // 4)  # fp32 values


class NullMonitor:
    """The monitor protocol doing nothing: `--no-monitor`."""

    def start_step(self, step: int) -> None:
        pass

    def after_backward(self, step: int, scaler=None) -> None:
        pass

    def after_optimizer_step(self, step: int, **kwargs) -> Record | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Monitor:
    """Per-layer gradient norms, attention-score ranges, FP16 overflow counts and throughput of one model."""

    def __init__(self, model: nn.Module, config: MonitorConfig | None = None) -> None:
        self.config = cfg = config or MonitorConfig()
        self.model = model
        self.blocks, self.embedding = find_blocks(model, cfg.embedding, cfg.layers)
        first = next(iter(model.parameters()), None)
        self.device = torch.device("cpu") if first is None else G.local(first).device
        sharded = cfg.sharded if cfg.sharded is not None else uses_fsdp1(model)
        self.grads = G.GradNorms(self.blocks, sharded, self.device)
        self.scaler_probe = ScalerProbe()
        self.activations = ActivationProbe(self.blocks) if cfg.activations else None
        self.attention = self.hf_eager = self.sdpa = None
        if cfg.attention:
            args = (model, self.blocks, cfg.entropy_rows, cfg.per_head, cfg.chunk_elems)
            self.attention = AttentionProbe(*args)
            self.hf_eager = HFEagerProbe(*args)
            if cfg.sdpa != "off" and (cfg.sdpa != "auto" or not self.attention.sources):
                self.sdpa = SDPAProbe(model, self.blocks, cfg.sdpa, cfg.entropy_rows, cfg.per_head, cfg.chunk_elems)
        self.missing: list[str] = []
        """What was looked for and not found (also given as warnings)."""
        if not self.blocks:
            self._missing("trainable parameters: no gradient or parameter norms")
        if self.embedding is None:
            self._missing(f"nn.Embedding: no {M.GRAD_NORM}/{M.LAYER_EMBEDDING}")
        if cfg.attention and not self.attention.sources and not self.hf_eager.sources and self.sdpa is None:
            self._missing(f"attention (score_probe, nn.MultiheadAttention): no {M.ATTN_SCORE_MAX}")
        self._sdpa_checked = False
        self._reading: Reading | None = None
        self._step: int | None = None
        self._closed = False
        self._t_last: float | None = None
        self._steps_since = 0
        self._tokens_since = 0.0
        self.syncs = 0
        """Host-device synchronisations made (one per logged step, two when some gradient is non-finite)."""

    # -- the protocol -------------------------------------------------------------------------------------
    def start_step(self, step: int) -> None:
        """Before the forward: arms the forward hooks if `step` is sampled."""
        if self._t_last is None:
            self._t_last = time.perf_counter()
        reading = Reading() if not self._closed and step % self.config.every == 0 else None
        self._reading, self._step = reading, step
        self._arm(reading)

    def after_backward(self, step: int, scaler=None) -> None:
        """Gradients are final (unscaled if a GradScaler is used; if not yet unscaled, norms are divided by the
        scale). Reads gradient and weight norms on the device; nothing is moved to the host."""
        reading = self._reading
        self._arm(None)  # the forward is over; a recomputing backward must not record twice
        if reading is None or step != self._step:
            return
        if self.sdpa is not None and not self._sdpa_checked and self.sdpa.how == "off" and not self.hf_eager.calls:
            # `auto` looked during this first sampled forward and found no call either.
            self._missing(f"attention (score_probe, nn.MultiheadAttention, scaled_dot_product_attention): "
                          f"no {M.ATTN_SCORE_MAX}")
        self._sdpa_checked = True
        factor = self.scaler_probe.after_backward(scaler)
        w = self.config.weights_every
        self.grads.after_backward(reading, factor, track_weights=bool(w) and step % w == 0)

    def after_optimizer_step(
        self, step: int, loss=None, lr: float | None = None, tokens: float | None = None, optimizer=None,
        scaler=None,
    ) -> Record | None:
        """The record of a sampled step (one host sync), None on other steps. A NaN loss is recorded, not raised."""
        self._steps_since += 1
        self._tokens_since += float(tokens or 0)
        reading = self._reading
        self._reading = None
        if reading is None or step != self._step or self._closed:
            return None
        self.grads.after_optimizer_step(reading)
        self.scaler_probe.after_optimizer_step(reading, scaler)
        if loss is not None:
            t = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
            reading.add(("_loss", M.NO_LAYER), SUM, t.reshape(()).float())
            reading.add(("_ranks", M.NO_LAYER), SUM, torch.ones((), device=t.device))
        _, size = world(self.config.process_group)
        if tokens is not None and size > 1:
            reading.add(("_tokens", M.NO_LAYER), SUM, torch.tensor(self._tokens_since, device=self.device))
        values = reading.resolve(self.device, self.config.process_group, size > 1, self.config.reduce)
        self.syncs += 1
        bad = {b.name for b in self.blocks
               if not math.isfinite(G.combine(values, G.GRAD_SQ_SHARD, G.GRAD_SQ_REPL, b.name) or 0.0)}
        if bad:
            # Counting elements costs more than all the norms; only blocks with a non-finite norm can have any.
            extra = Reading()
            self.grads.count_nonfinite(extra, bad)
            values.update(extra.resolve(self.device, self.config.process_group, size > 1, self.config.reduce))
            self.syncs += 1
        self.grads.release()
        now = time.perf_counter()
        elapsed = now - (self._t_last or now)
        record = self._record(values)
        if loss is not None:
            record[(M.LOSS, M.NO_LAYER)] = values[("_loss", M.NO_LAYER)] / max(values[("_ranks", M.NO_LAYER)], 1.0)
        if lr is None and optimizer is not None and optimizer.param_groups:
            lr = optimizer.param_groups[0].get("lr")
        if lr is not None:
            record[(M.LR, M.NO_LAYER)] = float(lr)
        if self._steps_since and elapsed > 0:
            record[(M.STEP_TIME, M.NO_LAYER)] = elapsed / self._steps_since
            if tokens is not None:
                total = values.get(("_tokens", M.NO_LAYER), self._tokens_since)
                record[(M.TOKENS_PER_S, M.NO_LAYER)] = total / elapsed
        self._t_last, self._steps_since, self._tokens_since = now, 0, 0.0
        return record

    def close(self) -> None:
        """Remove every hook this monitor registered."""
        self._arm(None)
        self._reading = None
        for probe in (self.activations, self.attention, self.hf_eager, self.sdpa):
            if probe is not None:
                probe.close()
        self.grads.release()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers ------------------------------------------------------------------------------------------
    def _arm(self, reading: Reading | None) -> None:
        for probe in (self.activations, self.attention, self.hf_eager, self.sdpa):
            if probe is not None:
                probe.reading = reading
        if reading is None:
            forget_masks()  # the last mask chunk is kept for the next layer, not past the step
        if reading is not None:
            n = self.config.exact_every
            exact = bool(n) and (self._step // self.config.every) % n == 0
            for probe in (self.attention, self.sdpa):
                if probe is not None:
                    probe.exact = exact

    def _missing(self, what: str) -> None:
        self.missing.append(what)
        warnings.warn(f"probes: {type(self.model).__name__} has no {what}", stacklevel=3)

    def _record(self, values: dict) -> Record:
        out: Record = {}
        reported = [b for b in self.blocks if b.selected or b is self.embedding]
        G.finish(values, self.blocks, reported, out)
        for key in ((M.LOSS_SCALE, M.NO_LAYER), (M.SKIPPED_STEP, M.NO_LAYER)):
            if key in values:
                out[key] = values[key]
        if self.config.attention:
            finish_attention(values, self.config.per_head, out)
            # The raw range where it was measured: a non-fused fp16 kernel forms masked products too.
            for (metric, layer), v in list(out.items()):
                if metric == M.ATTN_SCORE_MAX:
                    hi = out.get((M.ATTN_RAW_SCORE_MAX, layer), v)
                    lo = out.get((M.ATTN_RAW_SCORE_MIN, layer), out.get((M.ATTN_SCORE_MIN, layer), v))
                    out[(M.ATTN_FP16_FRACTION, layer)] = max(abs(hi), abs(lo)) / M.FP16_MAX
        acts = finish_activations(values)
        if acts:
            out.update(((M.ACT_ABSMAX, layer), v) for layer, v in acts.items())
            out[(M.ACT_ABSMAX, M.LAYER_TOTAL)] = _nanmax(acts.values())
            over = {layer: float(not v <= M.FP16_MAX) for layer, v in acts.items()}
            out.update(((M.ACT_OVERFLOW, layer), v) for layer, v in over.items())
            out[(M.ACT_OVERFLOW, M.LAYER_TOTAL)] = sum(over.values())
        return out


def _nanmax(values) -> float:
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else max(values)
