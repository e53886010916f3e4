"""A Hugging Face `Trainer` with the whole stability pipeline: one callback.

    python examples/hf_trainer.py --store runs --run gpt2-tiny                  # tiny GPT-2 (sdpa attention)
    python examples/hf_trainer.py --store runs --run llama-tiny --model llama --attn eager
    stability runs --store runs; stability spikes gpt2-tiny --store runs; stability dashboard --store runs

The models are built from a config (nothing is downloaded); the data are token sequences with a repeating
pattern, so the loss falls within a few steps.
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from stability.integrations.huggingface import StabilityCallback

VOCAB = 96


def tiny_model(kind: str = "gpt2", attn: str = "sdpa", layers: int = 2, width: int = 32):
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=width, n_layer=layers, n_head=2,
                         bos_token_id=None, eos_token_id=None,
                         attn_implementation=attn)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False, attn_implementation=attn)
    return LlamaForCausalLM(cfg)


def dataset(n: int = 64, length: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        period = int(torch.randint(2, 6, (), generator=g))
        motif = torch.randint(0, VOCAB, (period,), generator=g)
        ids = motif.repeat(length // period + 1)[:length]
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    ap.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--store", default="runs")
    ap.add_argument("--run", default=None)
    ap.add_argument("--policy", default=None, help="policy file (.toml)")
    ap.add_argument("--out", default=None, help="Trainer output_dir (default: a temporary folder)")
    args = ap.parse_args(argv)

    import tempfile

    torch.manual_seed(0)
    model = tiny_model(args.model, args.attn)
    targs = TrainingArguments(output_dir=args.out or tempfile.mkdtemp(prefix="hf-example-"), max_steps=args.steps,
                              per_device_train_batch_size=4, learning_rate=3e-3, max_grad_norm=1.0,
                              logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
                              disable_tqdm=True, seed=0)
    callback = StabilityCallback(store=args.store, run=args.run, policies=args.policy)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(), callbacks=[callback])
    trainer.train()
    print(f"run {callback.guard.run_name}: {callback.guard.host.step} steps recorded in {args.store}")
    return trainer, callback


if __name__ == "__main__":
    main()
