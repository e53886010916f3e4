"""A Lightning module trained by `lightning.Trainer` with the whole stability pipeline: one callback.

    python examples/lightning_module.py --store runs --run lit
    stability runs --store runs; stability spikes lit --store runs; stability dashboard --store runs

The model is the small causal transformer of examples/plain_loop.py.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from plain_loop import TinyLM
from torch.utils.data import DataLoader

from stability.integrations.lightning import StabilityCallback


class LitLM(pl.LightningModule):
    """TinyLM's layers held by the LightningModule itself, so that per-layer metrics name them (`encoder.layers.0`)."""

    forward = TinyLM.forward

    def __init__(self, lr: float = 3e-3):
        super().__init__()
        tiny = TinyLM()
        self.embed, self.encoder, self.norm, self.head = tiny.embed, tiny.encoder, tiny.norm, tiny.head
        self.lr = lr

    def training_step(self, tokens, batch_idx):
        logits = self(tokens)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--store", default="runs")
    ap.add_argument("--run", default=None)
    ap.add_argument("--policy", default=None, help="policy file (.toml)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    data = DataLoader(torch.randint(0, 64, (8 * args.steps, 32)), batch_size=8)
    callback = StabilityCallback(store=args.store, run=args.run, policies=args.policy)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    module = LitLM()
    trainer.fit(module, data)
    print(f"run {callback.guard.run_name}: {callback.guard.host.step} steps recorded in {args.store}")
    return trainer, callback, module


if __name__ == "__main__":
    main()
