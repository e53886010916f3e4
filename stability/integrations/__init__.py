"""Adapters from training frameworks to `stability.watch`: `huggingface.StabilityCallback` (transformers.Trainer,
`pip install 'stability[hf]'`) and `lightning.StabilityCallback` (lightning.Trainer, `'stability[lightning]'`).

Each translates its framework's events into calls on the one `Guard` and holds no logic of its own. Import the
submodule you need; this package imports neither framework.
"""
