"""A synthetic language: a random sparse Markov chain over a small vocabulary, generated from a seed.

The second data source of the instability zoo, so that nothing is tuned to the shipped English/Python corpus: each
state has a handful of successors with Zipf-like probabilities (Dirichlet weights, concentration < 1), so the
language has real structure to learn (its entropy rate is far below log V) and a different loss scale from bytes.
"""

from __future__ import annotations

import numpy as np


def markov_stream(n_tokens: int, vocab: int = 64, successors: int = 6, seed: int = 0) -> np.ndarray:
    """`n_tokens` tokens (int64 in [0, vocab)) of a first-order Markov chain drawn from `seed`."""
    if vocab < 2 or not 1 <= successors <= vocab or n_tokens < 1:
        raise ValueError("need vocab >= 2, 1 <= successors <= vocab, n_tokens >= 1")
    rng = np.random.default_rng([seed, 0xC0DE])
    nxt = np.stack([rng.choice(vocab, successors, replace=False) for _ in range(vocab)])  # (V, k)
    prob = rng.dirichlet(np.full(successors, 0.5), size=vocab)  # (V, k)
    cum = np.cumsum(prob, axis=1)
    u = rng.random(n_tokens)
    out = np.empty(n_tokens, dtype=np.int64)
    s = int(rng.integers(vocab))
    for i in range(n_tokens):
        s = int(nxt[s, min(int(np.searchsorted(cum[s], u[i])), successors - 1)])
        out[i] = s
    return out


def entropy_rate(vocab: int = 64, successors: int = 6, seed: int = 0) -> float:
    """The chain's entropy rate in nats per token: the loss a perfect model reaches."""
    rng = np.random.default_rng([seed, 0xC0DE])
    nxt = np.stack([rng.choice(vocab, successors, replace=False) for _ in range(vocab)])
    prob = rng.dirichlet(np.full(successors, 0.5), size=vocab)
    P = np.zeros((vocab, vocab))
    for s in range(vocab):
        P[s, nxt[s]] += prob[s]
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi = pi / pi.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(P * np.log(np.where(P > 0, P, 1)), axis=1)
    return float(pi @ h)
