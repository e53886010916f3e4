"""A plain PyTorch training loop with the stability monitor attached: the five added lines are marked `# +`.

    python examples/probes_loop.py               # fp32
    python examples/probes_loop.py --fp16        # autocast fp16 + GradScaler (skipped steps, loss scale)

Any nn.Module works; this one is the small causal transformer of examples/plain_loop.py. The whole pipeline
(store, detector, policies, alerts) on top of these probes is `stability.watch`: see examples/plain_loop.py.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import probes  # +
from plain_loop import TinyLM  # the model of the stability.watch example, beside this file


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fp16", action="store_true", help="autocast to fp16 with a GradScaler")
    ap.add_argument("--init-scale", type=float, default=2.0**16, help="GradScaler's initial loss scale")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = TinyLM().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(device, init_scale=args.init_scale, enabled=args.fp16)
    data = torch.randint(0, 64, (args.steps, 8, 32), device=device)

    with probes.Monitor(model, probes.MonitorConfig(every=1)) as mon:  # + attach; leaving the block detaches
        for step in range(args.steps):
            mon.start_step(step)  # +
            x = data[step]
            with torch.autocast(device, dtype=torch.float16, enabled=args.fp16):
                logits = model(x)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, 64), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # so that the monitor (and clipping) see true gradients
            mon.after_backward(step, scaler=scaler)  # +
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            rec = mon.after_optimizer_step(step, loss=loss, tokens=x.numel(), optimizer=opt, scaler=scaler)  # +
            if rec is not None:
                line = (f"step {step:3d}  loss {rec[('loss', '')]:.3f}  "
                        f"grad_norm {rec[('grad_norm', 'total')]:.3f}  "
                        f"embedding {rec[('grad_norm', 'embedding')]:.3f}  "
                        f"attn_max {rec.get(('attn_score_max', 'encoder.layers.1'), math.nan):.2f}  "
                        f"nonfinite {rec[('nonfinite_grads', 'total')]:.0f}")
                if args.fp16:
                    line += f"  scale {rec[('loss_scale', '')]:.3g}  skipped {rec[('skipped_step', '')]:.0f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
