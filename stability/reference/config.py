"""Configuration dataclasses for the reference model and trainer.

CLI flags and saved runs only fill these; each field is checked in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

LN_VARIANTS = ("pre", "post", "sandwich", "deepnorm")
PRECISIONS = ("fp32", "bf16", "fp16")
WARMUP_SHAPES = ("linear", "exponential")


@dataclass
class ModelConfig:
    vocab_size: int = 264
    """Byte vocabulary (256) plus special tokens, rounded up to a multiple of 8."""
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 0
    """GeGLU hidden width; 0 means 8/3 * d_model rounded to a multiple of 8 (same parameters as a 4x MLP)."""
    max_seq_len: int = 512
    ln: str = "pre"
    """LayerNorm placement: pre, post, sandwich or deepnorm (Post-LN with GLM-130B's DeepNorm scaling)."""
    fp32_softmax: bool = False
    """GLM-130B's trick: scale q by 1/(sqrt(d)*(layer+1)), upcast scores, multiply back, softmax in fp32."""
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    """Untied by default, so the input embedding's gradient is its own (what the detector watches)."""
    qk_init_std: float = 0.0
    """Init std of the query and key projections; 0 = the model's own (0.02, DeepNorm's Xavier). A larger one
    pushes attention scores (which grow as its square) towards FP16's 65504: the study's FP32-softmax test."""

    def __post_init__(self):
        if self.ln not in LN_VARIANTS:
            raise ValueError(f"ln must be one of {', '.join(LN_VARIANTS)}, got {self.ln!r}")
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        if self.qk_init_std < 0:
            raise ValueError(f"qk_init_std must be >= 0, got {self.qk_init_std}")
        if self.d_ff < 0:
            raise ValueError(f"d_ff must be >= 0, got {self.d_ff}")
        if self.d_ff == 0:
            self.d_ff = ((8 * self.d_model // 3) + 7) // 8 * 8

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 200
    lr: float = 1e-3
    warmup: int = 20
    """Warm-up steps (shaped by `warmup_shape`), then cosine decay to `min_lr_ratio * lr`."""
    warmup_shape: str = "linear"
    """`linear` (from lr / warmup) or `exponential`: from `warmup_start * lr`, the rate grows by the same factor
    every step, as in a learning-rate range test (Smith 2017): the model learns for long at a small rate, then the
    rate outgrows what it can take and the instability builds up over tens of steps instead of striking at once."""
    warmup_start: float = 0.01
    """Exponential warm-up only: the first step's rate as a fraction of `lr`."""
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """Clip the total gradient norm to this value; 0 turns clipping off."""
    clip_embedding: bool = True
    """False: clipping leaves the input embedding out (its gradient neither sets the clip factor nor is
    clipped), the study's test of whether EGS acts through global-norm clipping."""
    adam_eps: float = 1e-8
    embedding_eps: float = 0.0
    """Adam epsilon of the input embedding (with tied embeddings: also the head); 0 = adam_eps. Under Adam,
    EGS alone (g -> alpha g) is the same as eps -> eps / alpha on the embedding: the study's ablation."""
    batch_size: int = 16
    seq_len: int = 128
    precision: str = "fp32"
    init_loss_scale: float = 2.0**16
    """GradScaler's initial loss scale (fp16 only)."""
    seed: int = 0
    log_every: int = 1
    """Monitor and log every N steps."""
    threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        self.betas = tuple(self.betas)
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0 or self.lr != self.lr:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.warmup_shape not in WARMUP_SHAPES:
            raise ValueError(f"warmup_shape must be one of {', '.join(WARMUP_SHAPES)}, got {self.warmup_shape!r}")
        if not 0 < self.warmup_start < 1:
            raise ValueError(f"warmup_start must be in (0, 1), got {self.warmup_start}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size <= 0 or self.seq_len < 16:
            raise ValueError("batch_size must be positive and seq_len >= 16")
        if self.seq_len * 2 > self.model.max_seq_len:
            self.model.max_seq_len = self.seq_len * 2
        if self.log_every <= 0:
            raise ValueError(f"log_every must be positive, got {self.log_every}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if not self.adam_eps > 0 or self.embedding_eps < 0:
            raise ValueError(f"adam_eps must be positive and embedding_eps >= 0, got {self.adam_eps}, "
                             f"{self.embedding_eps}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        # Flattened copies of the fields every reader filters on.
        d["ln"] = self.model.ln
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d.pop("ln", None)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
