"""Every peer's spike rule as a baseline, each written from its own source with its published defaults.

API (stable; what the evaluation uses):

    from stability.evaluation.peers import PEERS, make_peer
    for name in PEERS:                          # the eight names of issue #14, in a fixed order
        rule = make_peer(name, gate, total_steps=n)   # gate: GateConfig (threshold 1.0 = the rule's own level)
        alerts = rule.update(step, metrics)     # metrics: {flat_key: value}, like OnlineDetector.update
        rule.score                              # the rule's score at this step, in units of its own threshold
        rule.scores                             # {name: score}, empty while the rule has no opinion (warm-up)
        rule.parts                              # per-series scores (e.g. {"loss": .., "grad_norm": ..})
        rule.state_dict() / rule.load_state_dict(state)
    PEERS[name].reads                           # the flat metric keys the rule reads
    PEERS[name].source                          # repository, file and commit it was written from

Every rule keeps bounded state, never looks ahead, and turns scores into alerts through the detector's
`AlertGate`, so `evaluate.trace` / `gate_alerts` sweep it like any other method: a gate threshold t is the rule
with its own level multiplied by t (its state still evolves as at the published level; see each module for what
that means for rules whose state depends on their verdict: ZClip, Lightning). `total_steps` (the run's planned
length in logged steps) matters only to llm-foundry, whose window is 5 % of the run; other rules ignore it.
docs/detector.md ("Peers") lists each rule, its defaults, its source commit and what had to be interpreted.
"""

from __future__ import annotations

from dataclasses import fields

from stability.detector.alert import GateConfig
from stability.evaluation.peers.base import Peer
from stability.evaluation.peers.emb_grad_z import EmbGradZ, EmbGradZConfig
from stability.evaluation.peers.lightning import LightningSpikeDetection, LightningSpikeDetectionConfig
from stability.evaluation.peers.llm_foundry import LlmFoundryKillLossSpike, LlmFoundryKillLossSpikeConfig
from stability.evaluation.peers.megatron import MegatronSpikyLoss, MegatronSpikyLossConfig
from stability.evaluation.peers.olmo2 import Olmo2SpikeScore, Olmo2SpikeScoreConfig
from stability.evaluation.peers.olmo_core import (
    OlmoCoreMonitor,
    OlmoCoreMonitorConfig,
    OlmoCoreSkipStep,
    OlmoCoreSkipStepConfig,
)
from stability.evaluation.peers.zclip import ZClip, ZClipConfig

_RULES: tuple[tuple[type[Peer], type], ...] = (
    (ZClip, ZClipConfig),
    (OlmoCoreMonitor, OlmoCoreMonitorConfig),
    (OlmoCoreSkipStep, OlmoCoreSkipStepConfig),
    (MegatronSpikyLoss, MegatronSpikyLossConfig),
    (LlmFoundryKillLossSpike, LlmFoundryKillLossSpikeConfig),
    (LightningSpikeDetection, LightningSpikeDetectionConfig),
    (Olmo2SpikeScore, Olmo2SpikeScoreConfig),
    (EmbGradZ, EmbGradZConfig),
)

PEERS: dict[str, type[Peer]] = {cls.name: cls for cls, _ in _RULES}
"""Rule name -> class (`cls(cfg)`; `cls.reads`, `cls.source`)."""
CONFIGS: dict[str, type] = {cls.name: cfg for cls, cfg in _RULES}
"""Rule name -> its config dataclass (published defaults)."""


def make_peer(name: str, gate: GateConfig | None = None, *, total_steps: int | None = None, **overrides) -> Peer:
    """A fresh rule at its published defaults, alerting through `gate`; `overrides` set config fields."""
    if name not in PEERS:
        raise ValueError(f"unknown peer rule {name!r}; known: {', '.join(PEERS)}")
    cfg_cls = CONFIGS[name]
    kwargs = dict(overrides)
    if total_steps is not None and "total_steps" in {f.name for f in fields(cfg_cls)}:
        kwargs["total_steps"] = int(total_steps)
    return PEERS[name](cfg_cls(gate=gate or GateConfig(), **kwargs))


__all__ = ["CONFIGS", "PEERS", "Peer", "make_peer"]
