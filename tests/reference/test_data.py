"""Blank-infilling batches: masks, ratios, reconstruction, and a loader whose position is its whole state."""

import numpy as np
import pytest
import torch

from stability.reference.data import (EOP, GMASK, IGNORE, MASK, PAD, SOP, BlankInfillingLoader, POISSON_LAMBDA, decode,
                            encode)


def _len_a(tokens):
    return tokens.index(SOP)


def _reconstruct(tokens, targets):
    """Rebuild the original text from Part A and the blanks' targets, the way a reader of the paper would."""
    la = _len_a(tokens)
    part_a = tokens[:la]
    blanks, cur = [], None
    for t, g in zip(tokens[la:], targets[la:]):
        if t == SOP:
            cur = []
            blanks.append(cur)
        if g == EOP:
            cur = None
        elif g != IGNORE:
            cur.append(g)
    out, bi = [], 0
    for t in part_a:
        if t in (MASK, GMASK):
            out.extend(blanks[bi])
            bi += 1
        else:
            out.append(t)
    assert bi == len(blanks)
    return out


@pytest.fixture(scope="module")
def batches():
    loader = BlankInfillingLoader(batch_size=64, seq_len=128, seed=7)
    return [loader.next() for _ in range(16)]  # 1,024 samples


def test_attention_mask_is_bidirectional_over_context_and_causal_over_blanks(batches):
    b = batches[0]
    for s in range(8):
        toks = b.tokens[s].tolist()
        la = _len_a(toks)
        n = sum(1 for t in toks if t != PAD)
        mask = b.attn_mask[s, 0]
        for i in range(128):
            for j in range(128):
                if i >= n:
                    expected = i == j
                elif i < la:
                    expected = j < la
                else:
                    expected = j < la or la <= j <= i
                assert bool(mask[i, j]) == expected, (s, i, j, la, n)


def test_mask_and_gmask_ratios(batches):
    kinds = torch.cat([b.kind for b in batches]).float()
    assert abs(kinds.eq(0).float().mean().item() - 0.30) < 0.045  # 1,024 samples: 3 sigma ~ 0.043

    masked_share, span_lengths, gmask_fraction = [], [], []
    for b in batches:
        for s in range(b.tokens.shape[0]):
            toks, tgts = b.tokens[s].tolist(), b.targets[s].tolist()
            original = _reconstruct(toks, tgts)
            n_blank = sum(1 for g in tgts if g not in (IGNORE, EOP))
            if b.kind[s] == 0:
                masked_share.append(n_blank / len(original))
                la = _len_a(toks)
                # Span lengths: count target tokens between each [sop] and its [eop].
                length = 0
                for t, g in zip(toks[la:], tgts[la:]):
                    if g == EOP:
                        span_lengths.append(length)
                        length = 0
                    elif g != IGNORE:
                        length += 1
            else:
                assert toks.count(GMASK) == 1 and toks.count(MASK) == 0
                gmask_fraction.append(n_blank / len(original))
    assert abs(np.mean(masked_share) - 0.15) < 0.01
    # Poisson(3) floored at 1: E[max(1, X)] = 3 + P(X = 0) = 3 + e^-3.
    assert abs(np.mean(span_lengths) - (POISSON_LAMBDA + np.exp(-3))) < 0.3
    # [gMASK] split point is uniform: the blank's share is uniform on (0, 1), mean 1/2, variance 1/12.
    assert abs(np.mean(gmask_fraction) - 0.5) < 0.03
    assert abs(np.var(gmask_fraction) - 1 / 12) < 0.01


def test_blanks_reconstruct_the_original_text(batches):
    loader = BlankInfillingLoader(batch_size=64, seq_len=128, seed=7)
    b = batches[0]
    for s in range(64):
        original = _reconstruct(b.tokens[s].tolist(), b.targets[s].tolist())
        text = bytes(original)
        assert text in loader.data.tobytes(), decode(original)


def test_positions_follow_the_blank(batches):
    b = batches[0]
    for s in range(16):
        toks, pos = b.tokens[s].tolist(), b.positions[s].tolist()
        la = _len_a(toks)
        mask_positions = [i for i, t in enumerate(toks[:la]) if t in (MASK, GMASK)]
        sops = [i for i, t in enumerate(toks) if t == SOP]
        assert [pos[i] for i in sops] == mask_positions


def test_loader_position_is_its_state():
    a = BlankInfillingLoader(4, 64, seed=3)
    for _ in range(5):
        a.next()
    state = a.state_dict()
    expected = a.next()
    b = BlankInfillingLoader(4, 64, seed=3)
    b.load_state_dict(state)
    got = b.next()
    assert torch.equal(expected.tokens, got.tokens) and torch.equal(expected.attn_mask, got.attn_mask)
    b.skip(7)
    assert torch.equal(b.next().tokens, a.batch_at(state["position"] + 1 + 7).tokens)
    with pytest.raises(ValueError):
        BlankInfillingLoader(4, 64, seed=4).load_state_dict(state)


def test_byte_tokenizer_round_trip():
    text = "Loss spikes — and how to stop them."
    assert decode(encode(text)) == text
