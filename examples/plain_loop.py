"""A plain PyTorch training loop with the whole stability pipeline attached: the added lines are marked `# +`.

    python examples/plain_loop.py --store runs --run plain           # fp32
    python examples/plain_loop.py --store runs --run plain16 --fp16  # autocast fp16 + GradScaler
    stability runs --store runs; stability spikes plain --store runs; stability dashboard --store runs

Probes, the run in the store, the spike detector, the policies and the alerts come from `stability.watch`;
the loop calls `guard.step(loss)` once per step. Any nn.Module works; this one is a small causal transformer
built from torch.nn parts.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import stability  # +


class TinyLM(nn.Module):
    def __init__(self, vocab=64, d=64, heads=4, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        t = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        x = self.encoder(self.embed(tokens), mask=causal, is_causal=True)
        return self.head(self.norm(x))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--store", default="runs", help="run store folder")
    ap.add_argument("--run", default=None, help="run name (default: from the model and the time)")
    ap.add_argument("--policy", default=None, help="policy file (.toml), e.g. stability/policies/examples/*")
    ap.add_argument("--fp16", action="store_true", help="autocast to fp16 with a GradScaler")
    ap.add_argument("--init-scale", type=float, default=2.0**16, help="GradScaler's initial loss scale")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = TinyLM().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(device, init_scale=args.init_scale, enabled=args.fp16)
    data = torch.randint(0, 64, (args.steps, 8, 32), device=device)

    with stability.watch(model, opt, store=args.store, run=args.run, policies=args.policy,  # +
                         scaler=scaler) as guard:  # +
        for step in range(args.steps):
            x = data[step]
            with torch.autocast(device, dtype=torch.float16, enabled=args.fp16):
                logits = model(x)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, 64), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # so that clipping sees true gradients (the guard read them before it)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            guard.step(loss)  # +
            print(f"step {step:3d}  loss {loss.item():.3f}", flush=True)
    print(f"run {guard.run_name}: {guard.host.step} steps recorded in {args.store}")  # +


if __name__ == "__main__":
    main()
