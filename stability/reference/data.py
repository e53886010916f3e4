"""Byte-level tokenizer, GLM blank-infilling batches and a loader whose position can be saved and advanced.

Blank infilling (GLM, GLM-130B): a text is split into Part A, the context with blanks, and Part B, the blanks'
contents. Part A attends bidirectionally to itself; Part B attends to all of Part A and causally to itself, and is
trained autoregressively: input `[sop] x1 .. xn`, target `x1 .. xn [eop]` for each blank.

- `[MASK]` (30% of sequences): short spans, lengths ~ Poisson(3), about 15% of the tokens, each replaced by one
  `[MASK]` in Part A.
- `[gMASK]` (70%): one blank from a uniformly drawn point to the end of the sequence.

Positions: a Part A token has its index; a Part B token has its blank's `[MASK]` position plus its offset in the
span, so rotary embeddings see the span where it was cut out.

Batch `i` is a pure function of `(seed, i)`, so a loader's whole state is its position: saving, restoring and
skipping K batches (PaLM's remedy after a spike) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stability.reference.corpus import load_corpus_bytes

# Special tokens follow the 256 byte values.
PAD, MASK, GMASK, SOP, EOP = 256, 257, 258, 259, 260
SPECIAL = {"[pad]": PAD, "[MASK]": MASK, "[gMASK]": GMASK, "[sop]": SOP, "[eop]": EOP}
IGNORE = -100

MASK_PROB = 0.30          # share of sequences that use short [MASK] spans; the rest use [gMASK]
MASK_RATIO = 0.15         # share of tokens hidden in [MASK] sequences
POISSON_LAMBDA = 3.0


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    out = bytearray()
    for i in ids:
        i = int(i)
        if i < 256:
            out.append(i)
        else:
            name = next((k for k, v in SPECIAL.items() if v == i), f"[{i}]")
            out.extend(name.encode())
    return out.decode("utf-8", errors="replace")


@dataclass
class Batch:
    tokens: torch.Tensor       # (B, T) int64 input ids
    targets: torch.Tensor      # (B, T) int64, IGNORE outside Part B
    positions: torch.Tensor    # (B, T) int64 rotary positions
    attn_mask: torch.Tensor    # (B, 1, T, T) bool, True = may attend
    kind: torch.Tensor         # (B,) 0 = [MASK], 1 = [gMASK]
    n_targets: int

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())


def _spans_for_mask(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, length) spans covering ~MASK_RATIO of n tokens, Poisson(3) lengths."""
    budget = max(1, int(round(MASK_RATIO * n)))
    lengths = []
    while sum(lengths) < budget:
        lengths.append(max(1, int(rng.poisson(POISSON_LAMBDA))))
    # Trim the last span so the masked share matches the budget.
    lengths[-1] -= sum(lengths) - budget
    lengths = [l for l in lengths if l > 0]
    # Place spans in random order with at least one unmasked token between them.
    free = n - sum(lengths) - (len(lengths) - 1)
    if free < 0:
        lengths = lengths[: max(1, len(lengths) // 2)]
        free = n - sum(lengths) - (len(lengths) - 1)
    gaps = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    spans, offset = [], 0
    prev = 0
    for g, l in zip(gaps, lengths):
        start = offset + (g - prev)
        spans.append((int(start), int(l)))
        offset = start + l + 1
        prev = g
    return spans


def make_sample(text: np.ndarray, rng: np.random.Generator, seq_len: int, use_mask: bool):
    """One blank-infilling sample padded to seq_len: (tokens, targets, positions, len_a, kind)."""
    if use_mask:
        n_raw = int(seq_len / (1 + 2 * MASK_RATIO / POISSON_LAMBDA)) - 2
        raw = text[:n_raw]
        spans = _spans_for_mask(rng, len(raw))
        # Keep spans that fit: total length = n_raw + 2 * len(spans) must be <= seq_len.
        while len(raw) + 2 * len(spans) > seq_len:
            spans.pop()
        part_a, mask_pos = [], []
        cursor = 0
        for start, length in spans:
            part_a.extend(raw[cursor:start])
            mask_pos.append(len(part_a))
            part_a.append(MASK)
            cursor = start + length
        part_a.extend(raw[cursor:])
        blanks = [raw[s : s + l] for s, l in spans]
        kind = 0
    else:
        n_raw = seq_len - 2
        raw = text[:n_raw]
        # [gMASK]: a uniformly drawn split; the context keeps at least one token, the blank at least one.
        split = int(rng.integers(1, len(raw)))
        part_a = list(raw[:split]) + [GMASK]
        mask_pos = [split]
        blanks = [raw[split:]]
        kind = 1
    len_a = len(part_a)
    tokens, targets, positions = list(part_a), [IGNORE] * len_a, list(range(len_a))
    for mpos, blank in zip(mask_pos, blanks):
        blank = list(blank)
        tokens += [SOP] + blank
        targets += blank + [EOP]
        positions += [mpos + j for j in range(len(blank) + 1)]
    pad = seq_len - len(tokens)
    assert pad >= 0, (len(tokens), seq_len)
    tokens += [PAD] * pad
    targets += [IGNORE] * pad
    positions += [0] * pad
    return tokens, targets, positions, len_a, len(tokens) - pad, kind


def attention_mask(len_a: np.ndarray, length: np.ndarray, seq_len: int) -> torch.Tensor:
    """(B, 1, T, T) bool: every query sees Part A; Part B queries also see earlier Part B keys; pads see themselves."""
    i = torch.arange(seq_len).view(1, seq_len, 1)
    j = torch.arange(seq_len).view(1, 1, seq_len)
    la = torch.as_tensor(len_a).view(-1, 1, 1)
    ln = torch.as_tensor(length).view(-1, 1, 1)
    see_a = j < la
    causal_b = (j >= la) & (j <= i) & (i >= la)
    valid_q = i < ln
    mask = (see_a | causal_b) & valid_q
    mask |= (i == j)  # pads attend to themselves, so no softmax row is empty
    return mask.unsqueeze(1)


class BlankInfillingLoader:
    """Deterministic batches: batch `position` is a function of (seed, position) only."""

    def __init__(self, batch_size: int, seq_len: int, seed: int = 0, split: str = "train",
                 corpus: bytes | None = None, holdout: float = 0.05):
        data = np.frombuffer(corpus if corpus is not None else load_corpus_bytes(), dtype=np.uint8)
        cut = int(len(data) * (1 - holdout))
        self.data = data[:cut] if split == "train" else data[cut:]
        if len(self.data) < seq_len * 2:
            raise ValueError(f"corpus split {split!r} has {len(self.data)} bytes, too few for seq_len {seq_len}")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.split_id = 0 if split == "train" else 1
        self.position = 0

    def batch_at(self, position: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.split_id, position])
        toks, tgts, poss, las, lens, kinds = [], [], [], [], [], []
        for _ in range(self.batch_size):
            start = int(rng.integers(0, len(self.data) - self.seq_len))
            text = self.data[start : start + self.seq_len]
            use_mask = bool(rng.random() < MASK_PROB)
            t, g, p, la, n, k = make_sample(text, rng, self.seq_len, use_mask)
            toks.append(t); tgts.append(g); poss.append(p); las.append(la); lens.append(n); kinds.append(k)
        targets = torch.tensor(tgts, dtype=torch.long)
        return Batch(
            tokens=torch.tensor(toks, dtype=torch.long),
            targets=targets,
            positions=torch.tensor(poss, dtype=torch.long),
            attn_mask=attention_mask(np.array(las), np.array(lens), self.seq_len),
            kind=torch.tensor(kinds, dtype=torch.long),
            n_targets=int((targets != IGNORE).sum()),
        )

    def next(self) -> Batch:
        b = self.batch_at(self.position)
        self.position += 1
        return b

    def skip(self, k: int) -> None:
        """Advance past k batches without building them (rollback with data skip)."""
        if k < 0:
            raise ValueError(f"cannot skip a negative number of batches ({k})")
        self.position += k

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "split_id": self.split_id}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state.get("split_id", self.split_id) != self.split_id:
            raise ValueError("loader state belongs to a different seed or split")
        self.position = int(state["position"])
