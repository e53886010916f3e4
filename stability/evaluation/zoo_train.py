"""One zoo run: a tiny model trained from scratch by a small loop that records the store's metric names through
`probes.Monitor` (the same probes `stability train` uses), for the three architectures and both data sources.

The loop is deliberately plain (AdamW, linear warm-up then constant or ramped learning rate, optional clipping,
z-loss and FP16 loss scaling): each zoo mechanism is one of these knobs set where the literature says it breaks.
Bad batches (OLMo 2) are swapped in at fixed steps: one token n-gram repeated over every row.
"""

from __future__ import annotations

import math
import time

import numpy as np

from stability import metrics as M

# Stop a run this many logged steps after its loss went non-finite (or past `blowup` x its initial loss):
# the rest would only cost CPU.
PATIENCE = 10


def lr_at(step: int, r) -> float:
    """Linear warm-up to `r.lr`, then constant; from `r.ramp_from` on multiplied by `r.ramp` per step."""
    lr = r.lr * min(1.0, (step + 1) / r.warmup) if r.warmup else r.lr
    if r.ramp != 1.0 and step >= r.ramp_from:
        lr *= r.ramp ** (step - r.ramp_from + 1)
    return lr


class _Data:
    """Causal-LM batches (tokens, targets) of a token stream; batch i is a function of (seed, i) only."""

    def __init__(self, stream: np.ndarray, batch: int, seq: int, seed: int):
        self.stream, self.batch, self.seq, self.seed = stream, batch, seq, seed

    def at(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, i])
        starts = rng.integers(0, len(self.stream) - self.seq - 1, self.batch)
        x = np.stack([self.stream[s: s + self.seq + 1] for s in starts])
        x = torch.from_numpy(x.astype(np.int64))
        return x[:, :-1], x[:, 1:]

    def bad(self, i: int, vocab: int):
        """OLMo 2's bad batch: one short n-gram repeated across every row and position."""
        import torch

        rng = np.random.default_rng([self.seed, i, 7])
        gram = rng.integers(0, vocab, int(rng.integers(2, 5)))
        x = np.resize(gram, (self.batch, self.seq + 1))
        x = torch.from_numpy(x.astype(np.int64))
        return x[:, :-1], x[:, 1:]


def _stream(data: str, seed: int) -> tuple[np.ndarray, int]:
    if data == "markov":
        from stability.evaluation.language import markov_stream

        # The language itself depends on the data seed: a different chain per seed, not only a different order.
        return markov_stream(200_000, vocab=64, successors=6, seed=seed), 64
    from stability.reference.corpus import load_corpus_bytes

    return np.frombuffer(load_corpus_bytes(), dtype=np.uint8).astype(np.int64), 256


def build(r):
    """(model, loss_fn(batch) -> (loss, logits or None), batch_fn(step) -> batch) for one recipe run."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(r.seed)
    if r.arch == "glm":
        from stability.reference.config import ModelConfig
        from stability.reference.data import BlankInfillingLoader
        from stability.reference.model import GLM

        cfg = ModelConfig(d_model=r.d_model, n_layer=r.n_layer, n_head=r.n_head, ln=r.ln,
                          max_seq_len=2 * r.seq_len)
        model = GLM(cfg)
        loader = BlankInfillingLoader(r.batch_size, r.seq_len, seed=r.seed)

        def loss_fn(batch):
            return model.loss(batch), None

        def batch_fn(step):
            return loader.batch_at(step)

        return model, loss_fn, batch_fn
    stream, vocab = _stream(r.data, r.seed)
    if r.arch == "llama":
        model, forward = _llama(r, vocab)
    else:
        from stability.reference.nanogpt import NanoGPT, NanoGPTConfig

        model = NanoGPT(NanoGPTConfig(vocab_size=vocab, block_size=r.seq_len, n_layer=r.n_layer, n_head=r.n_head,
                                      n_embd=r.d_model, qk_layernorm=r.qk_layernorm))
        forward = model
    data = _Data(stream, r.batch_size, r.seq_len, r.seed)
    bad = set(r.bad_steps)

    def loss_fn(batch):
        x, y = batch
        logits = forward(x)  # (B, T, V)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)), logits

    def batch_fn(step):
        return data.bad(step, vocab) if step in bad else data.at(step)

    return model, loss_fn, batch_fn


def _llama(r, vocab: int):
    """A Llama-style causal LM (pre-RMSNorm, SwiGLU, rotary, untied head, SDPA attention) from `transformers`,
    built from a config (nothing is downloaded): the zoo's third architecture, one that none of the detector's
    choices looked at. Returns (model, tokens -> logits)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        raise RuntimeError(f"zoo run {r.name}: the llama recipes need transformers "
                           "(pip install 'stability[hf]')") from e

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=r.d_model, intermediate_size=4 * r.d_model,
                      num_hidden_layers=r.n_layer, num_attention_heads=r.n_head, num_key_value_heads=r.n_head,
                      max_position_embeddings=r.seq_len, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    return model, lambda x: model(input_ids=x, use_cache=False).logits


def train_run(r) -> tuple[dict[tuple[int, str, str], float], str]:
    """Train recipe run `r`; return ({(step, metric, layer): value}, status)."""
    import torch

    import probes
    from stability.reference.train import autocast_context

    torch.set_num_threads(1)
    model, loss_fn, batch_fn = build(r)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=r.betas, eps=r.eps)
    fp16 = r.precision == "fp16"
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=fp16)
    mon = probes.Monitor(model, probes.MonitorConfig(every=1, weights_every=0, activations=False))
    out: dict[tuple[int, str, str], float] = {}
    status, bad_run, first = M.ST_FINISHED, 0, None
    try:
        for step in range(r.steps):
            lr = lr_at(step, r)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = batch_fn(step)
            mon.start_step(step)
            with autocast_context(r.precision):
                loss, logits = loss_fn(batch)
            total = loss
            if r.z_loss and logits is not None:
                # PaLM's z-loss: pushes log Z of the output softmax towards 0, so the logits cannot drift up.
                total = loss + r.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            mon.after_backward(step, scaler=scaler)
            if r.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            scaler.step(opt)
            scaler.update()
            rec = mon.after_optimizer_step(step, loss=loss, lr=lr, optimizer=opt, scaler=scaler)
            for (metric, layer), v in (rec or {}).items():
                out[(step, metric, layer)] = float(v)
            value = float(loss.detach())  # one sync per step: the stop rule needs it
            first = value if first is None and math.isfinite(value) else first
            blown = not math.isfinite(value) or (first is not None and value > r.blowup * first)
            bad_run = bad_run + 1 if blown else 0
            if bad_run >= PATIENCE:
                status = M.ST_DIVERGED
                break
    finally:
        mon.close()
    return out, status


def timed(r) -> dict:
    t0 = time.perf_counter()
    values, status = train_run(r)
    return {"values": values, "status": status, "seconds": round(time.perf_counter() - t0, 1)}
