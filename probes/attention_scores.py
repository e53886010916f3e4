"""Attention-score range and entropy from q and k (or from given scores), over the pairs that enter the softmax.

Definitions, shared by every source (hook points, `nn.MultiheadAttention`, `F.scaled_dot_product_attention`,
Hugging Face eager attention):

- the logits of query i and key j are q_i.k_j * scale, plus the finite value of an additive mask;
- a pair *enters the softmax* unless the mask hides it: `is_causal` hides key j > query i (top-left aligned, as
  torch's `is_causal`); a boolean mask hides False (SDPA's convention; callers flip `nn.MultiheadAttention`'s);
  an additive float mask hides -inf and its dtype's lowest value (Hugging Face fills with `finfo.min`);
- `attn_score_max/min` are the max/min logit over the pairs that enter the softmax; `attn_raw_score_max/min` the
  max/min of q.k^T*scale over all pairs, masked or not; `attn_entropy` the mean over query rows of
  -sum_j p_ij log p_ij (rows with no key left out).

Memory: scores are formed in fp32 chunks of (batch x query rows) holding at most `chunk_elems` values, so the
extra memory of a recomputation is a few chunks plus one sequence's k in fp32, whatever the sequence length.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

DEFAULT_CHUNK_ELEMS = 2 << 20
"""Scores per chunk: 2 Mi fp32 values = 8 MiB."""


@dataclass(frozen=True)
class Mask:
    """Which (query, key) pairs enter the softmax, and what is added to their logits."""

    keep: torch.Tensor | None = None
    """bool, broadcastable to (B, H, T, S): True = enters the softmax."""
    bias: torch.Tensor | None = None
    """float, broadcastable to (B, H, T, S): added to the logits (an additive mask)."""
    causal: bool = False
    """key j enters for query i iff j <= i."""

    @staticmethod
    def of(mask: torch.Tensor | None = None, causal: bool = False, true_means_keep: bool = True) -> "Mask":
        """From an SDPA-style mask (bool: True = keep; float: additive) or a causal flag."""
        if mask is None:
            return Mask(causal=causal)
        if mask.dtype == torch.bool:
            return Mask(keep=_4d(mask if true_means_keep else ~mask), causal=causal)
        return Mask(keep=_4d(mask > torch.finfo(mask.dtype).min), bias=_4d(mask), causal=causal)

    def __and__(self, other: "Mask") -> "Mask":
        keep = self.keep if other.keep is None else other.keep if self.keep is None else self.keep & other.keep
        bias = self.bias if other.bias is None else other.bias if self.bias is None else self.bias + other.bias
        return Mask(keep, bias, self.causal or other.causal)

    def rows(self, b0: int, b1: int, rows, positions: torch.Tensor, s: int, device) -> "Rows":
        """The mask of batches b0:b1 and query rows `rows` (a slice or an index), broadcastable to the chunk
        (b, H, c, S); `positions` are those rows' indices (c,), on the host."""
        keep, bias = (_slice(m, b0, b1, rows) for m in (self.keep, self.bias))
        if keep is None and not self.causal:
            return Rows(None, bias, None)
        if keep is None and positions.numel() * s <= _CACHED_ELEMS:
            # Causal alone, a small chunk (the sampled entropy rows, short sequences): the same few tensors at
            # every step, so they are kept; large chunks of long sequences are made afresh and freed.
            key = (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else tuple(positions.tolist())
            return Rows(None, None, _causal_hide(key, s, device))
        if keep is None:
            return Rows(None, None, _hide(_causal_keep(positions, s, device)))
        # Every layer of a step passes the same mask tensor: its chunk's Rows are kept for the next layer (with a
        # reference to the mask, so its memory cannot be reused by another tensor; `_version` sees edits).
        key = (b0, b1, (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else tuple(positions.tolist()),
               s, self.causal)
        memo = _LAST.get("rows")
        if memo is not None and memo[0] is self.keep and memo[1] == self.keep._version and memo[2] == key \
                and memo[3] is self.bias:
            return memo[4]
        if self.causal:
            keep = keep & _causal_keep(positions, s, device)
        # A hidden pair is hidden by `hide`; the additive mask's -inf there would give NaN against +inf.
        out = Rows(keep, None if bias is None else bias.masked_fill(~keep, 0.0), _hide(keep))
        _LAST["rows"] = (self.keep, self.keep._version, key, self.bias, out)
        return out


@dataclass(frozen=True)
class Rows:
    """A mask for one chunk of query rows."""

    keep: torch.Tensor | None
    """bool, True = enters the softmax; None when every pair does or the mask is causal alone."""
    bias: torch.Tensor | None
    """float added to the logits, 0 at hidden pairs."""
    hide: torch.Tensor | None
    """fp32, 0 where a pair enters the softmax and -inf where it is hidden: adding it is several times faster
    than masked_fill on a CPU."""


def _causal_keep(positions: torch.Tensor, s: int, device) -> torch.Tensor:
    return (positions.to(device)[:, None] >= torch.arange(s, device=device)[None, :])[None, None]  # (1, 1, c, S)


_LAST: dict = {}
"""The last boolean-mask chunk: (mask, its version, chunk key, bias, Rows); emptied by `forget()`."""


def forget() -> None:
    """Drop the kept mask chunk (the monitor calls this when a logged forward is over)."""
    _LAST.clear()


def _hide(keep: torch.Tensor) -> torch.Tensor:
    return torch.zeros(keep.shape, device=keep.device).masked_fill_(~keep, -math.inf)


_CACHED_ELEMS = 1 << 17
"""Causal masks of chunks up to this size (512 KiB in fp32) are cached, 8 of them at most."""


@functools.lru_cache(maxsize=8)
def _causal_hide(key: tuple, s: int, device) -> torch.Tensor:
    positions = torch.arange(key[0], key[1], key[2]) if len(key) == 3 and key[2] else torch.tensor(key)
    return _hide(_causal_keep(positions, s, device))


def _4d(m: torch.Tensor) -> torch.Tensor:
    return m.reshape((1,) * (4 - m.dim()) + tuple(m.shape)) if m.dim() < 4 else m


def _slice(m: torch.Tensor | None, b0: int, b1: int, rows) -> torch.Tensor | None:
    if m is None:
        return None
    if m.shape[0] > 1:
        m = m[b0:b1]
    return m[:, :, rows] if m.shape[2] > 1 else m


def chunks(batch: int, rows: torch.Tensor, per_row: int, budget: int):
    """(b0, b1, rows, positions) pieces covering `batch` x `rows` (a host tensor of row indices), each with at
    most `budget` elements of `per_row` each (at least one row). Evenly spaced rows are sliced with a step, so
    q chunks are views and no index op runs."""
    n = rows.numel()
    step = int(rows[1] - rows[0]) if n > 1 else 1
    even = n > 0 and step > 0 and int(rows[-1] - rows[0]) == (n - 1) * step

    def part(a, b):
        return slice(int(rows[a]), int(rows[a]) + (b - a - 1) * step + 1, step) if even else rows[a:b]

    if batch * n * per_row <= budget:
        yield 0, batch, part(0, n), rows
        return
    if n * per_row <= budget:
        nb = max(1, budget // (n * per_row))
        for b0 in range(0, batch, nb):
            yield b0, min(batch, b0 + nb), part(0, n), rows
        return
    c = max(1, budget // per_row)
    for b0 in range(batch):
        for r0 in range(0, n, c):
            yield b0, b0 + 1, part(r0, min(n, r0 + c)), rows[r0 : r0 + c]


def scores_of(q: torch.Tensor, k32: torch.Tensor, scale: float, rows) -> torch.Tensor:
    """fp32 q.k^T*scale for the query rows `rows` of q (b, Hq, T, d) against k32 (b, Hk, S, d) fp32: (b, Hq, c, S).
    Grouped-query attention (Hk < Hq, query head h uses key head h // (Hq/Hk)) without repeating k."""
    qc = q[:, :, rows].float() * scale  # (b, Hq, c, d): scaling q is c*d multiplies instead of c*S
    b, hq, c, d = qc.shape
    hk, s = k32.shape[1], k32.shape[2]
    out = qc.reshape(b, hk, (hq // hk) * c, d) @ k32.transpose(-2, -1)  # (b, Hk, g*c, S)
    return out.view(b, hq, c, s)


class Accumulator:
    """Running max/min (per head or whole-layer) and entropy sums of one attention call, kept on the device."""

    def __init__(self, per_head: bool) -> None:
        self.per_head = per_head
        self.values: dict[str, torch.Tensor] = {}

    def _put(self, name: str, value: torch.Tensor, pick) -> None:
        prev = self.values.get(name)
        self.values[name] = value if prev is None else pick(prev, value)

    def raw(self, s: torch.Tensor) -> None:
        if self.per_head:
            self._put("raw_max", s.amax((0, 2, 3)), torch.maximum)
            self._put("raw_min", s.amin((0, 2, 3)), torch.minimum)
        else:
            lo, hi = torch.aminmax(s)
            self._put("raw_max", hi, torch.maximum)
            self._put("raw_min", lo, torch.minimum)

    def kept(self, s: torch.Tensor, m: Rows, owned: bool, raw: bool) -> None:
        """Range of s (+ bias) over the pairs `m` keeps, and the raw range of s if `raw`. `owned`: s may be
        modified in place."""
        if m.bias is not None:
            if raw:
                self.raw(s)
                raw = False
            s = s.add_(m.bias) if owned else s + m.bias
            owned = True
        if m.hide is None:
            if raw:
                self.raw(s)
            self._put("max", self.values["raw_max"] if raw else _amax(s, self.per_head), torch.maximum)
            self._put("min", self.values["raw_min"] if raw else _amin(s, self.per_head), torch.minimum)
            return
        if not self.per_head and m.hide.shape[1] == 1:
            # The mask is the same for every head: reduce over heads first, then mask an H-times smaller tensor.
            hi, lo = s.amax(1, keepdim=True), s.amin(1, keepdim=True)  # (b, 1, c, S)
            if raw:
                self._put("raw_max", hi.amax(), torch.maximum)
                self._put("raw_min", lo.amin(), torch.minimum)
            self._put("max", hi.add_(m.hide).amax(), torch.maximum)
            self._put("min", lo.sub_(m.hide).amin(), torch.minimum)
            return
        if raw:
            self.raw(s)
        self._put("max", _amax(s + m.hide, self.per_head), torch.maximum)
        self._put("min", _amin(s.sub_(m.hide) if owned else s - m.hide, self.per_head), torch.minimum)

    def entropy(self, s: torch.Tensor, m: Rows) -> None:
        """Sum over query rows of the softmax entropy of logits s (b, H, c, S) (+ bias, over the kept pairs),
        per head; s is modified."""
        if m.bias is not None:
            s = s.add_(m.bias)
        if m.hide is not None:
            s = s.add_(m.hide)
        h = row_entropy(s.softmax(-1))  # (b, H, c)
        if m.keep is None:  # every row keeps a key (a causal row keeps key 0)
            self._put("ent_sum", h.sum((0, 2)), torch.add)
            self._put("ent_rows", torch.full_like(h[0, :, 0], h.shape[0] * h.shape[2]), torch.add)
            return
        live = m.keep.any(-1).expand_as(h)  # a row with no key has no distribution (softmax gives NaN)
        self._put("ent_sum", h.masked_fill(~live, 0.0).sum((0, 2)), torch.add)
        self._put("ent_rows", live.sum((0, 2)).to(h.dtype), torch.add)


def row_entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum_j p_j log p_j over the last dimension, with 0 log 0 = 0 (hidden keys)."""
    return torch.special.entr(p).sum(-1)


def _amax(s: torch.Tensor, per_head: bool) -> torch.Tensor:
    return s.amax((0, 2, 3)) if per_head else s.amax()


def _amin(s: torch.Tensor, per_head: bool) -> torch.Tensor:
    return s.amin((0, 2, 3)) if per_head else s.amin()


def sample_rows(t: int, rows: int) -> torch.Tensor:
    """About `rows` evenly spaced query rows out of t (all of them if rows is 0), on the host."""
    stride = 1 if rows <= 0 else max(1, math.ceil(t / rows))
    return torch.arange(0, t, stride)


def from_qk(
    acc: Accumulator, q: torch.Tensor, k: torch.Tensor, scale: float, mask: Mask, *, ranges: bool,
    entropy_rows: int, chunk_elems: int = DEFAULT_CHUNK_ELEMS, entropy: bool = True,
) -> None:
    """Recompute from q (B, Hq, T, d) and k (B, Hk, S, d), in chunks: the exact ranges (all rows of all
    sequences) if `ranges`, and if `entropy` the entropy of ~`entropy_rows` evenly spaced rows of the first
    sequence (0 = every row of every sequence). Works on detached tensors: nothing joins the autograd graph."""
    if torch.is_autocast_enabled(q.device.type):  # the matmuls must stay in fp32
        with torch.autocast(q.device.type, enabled=False):
            return from_qk(acc, q, k, scale, mask, ranges=ranges, entropy_rows=entropy_rows, chunk_elems=chunk_elems,
                           entropy=entropy)
    q, k = q.detach(), k.detach()
    B, H, T, _ = q.shape
    S = k.shape[-2]
    if ranges:
        for b0, b1, rows, pos in chunks(B, torch.arange(T), H * S, chunk_elems):
            s = scores_of(q[b0:b1], k[b0:b1].float(), scale, rows)
            acc.kept(s, mask.rows(b0, b1, rows, pos, S, s.device), owned=True, raw=True)
    if not entropy:
        return
    if entropy_rows > 0:
        q, k, B = q[:1], k[:1], 1
    for b0, b1, rows, pos in chunks(B, sample_rows(T, entropy_rows), H * S, chunk_elems):
        s = scores_of(q[b0:b1], k[b0:b1].float(), scale, rows)
        acc.entropy(s, mask.rows(b0, b1, rows, pos, S, s.device))


def from_scores(acc: Accumulator, scores: torch.Tensor, mask: Mask, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Ranges of scores (B, H, T, S) that exist already (a hook point): raw and kept, in chunks of rows so that
    the masked copies stay small. `scores` is not modified."""
    s = scores.detach()
    B, H, T, S = s.shape
    for b0, b1, rows, pos in chunks(B, torch.arange(T), H * S, chunk_elems):
        acc.kept(s[b0:b1, :, rows], mask.rows(b0, b1, rows, pos, S, s.device), owned=False, raw=True)
