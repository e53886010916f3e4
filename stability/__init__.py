"""stability: watch LLM pretraining runs, predict loss spikes before they happen, act on them."""

__version__ = "0.1.0"
