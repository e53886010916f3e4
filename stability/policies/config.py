"""The policy configuration and its file (TOML, JSON, or YAML when PyYAML is installed).

```toml
dry_run = false                 # record what would happen, touch nothing

[egs]
mode = "adaptive"               # off | always | adaptive
alpha = 0.1
on = ["warning", "critical"]

[rollback]
enabled = true
on = ["critical", "spike"]      # alert severities, and/or `spike` = an actual loss jump
interval = 25
skip_batches = 200
```

Every key is a field of one of the dataclasses below; the file only fills them (file_loader.py). An unknown
key, a value of the wrong type or an impossible value is refused with the file's line, before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from stability.policies.embedding_grad_shrink import EGSConfig
from stability.policies.file_loader import ConfigFileError, load_dataclass_file
from stability.policies.lr_backoff import LRBackoffConfig
from stability.policies.rollback import RollbackConfig
from stability.policies.skip_step import SkipStepConfig

SECTIONS = {"egs": EGSConfig, "rollback": RollbackConfig, "skip_step": SkipStepConfig, "lr_backoff": LRBackoffConfig}


@dataclass
class PolicyConfig:
    dry_run: bool = False
    """Record an EV_DRY_RUN event for every action a policy would take, and take none."""
    egs: EGSConfig = field(default_factory=EGSConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    skip_step: SkipStepConfig = field(default_factory=SkipStepConfig)
    lr_backoff: LRBackoffConfig = field(default_factory=LRBackoffConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))

    @property
    def any_enabled(self) -> bool:
        return (self.egs.mode != "off" or self.rollback.enabled or self.skip_step.enabled
                or self.lr_backoff.enabled)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PolicyFileError(ConfigFileError):
    """A policy file that cannot be used: `file:line: what is wrong`."""


def load_policy_file(path: str | Path) -> PolicyConfig:
    return load_dataclass_file(path, PolicyConfig, PolicyFileError, kind="policy")
