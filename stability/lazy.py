"""Package attributes loaded on first use (PEP 562), so that importing a package does not import every module in it:
the command line builds its flags and the dashboard reads the store without loading torch or pandas for parts they
do not use.

    __getattr__ = lazy_attributes(__name__, {"Notifier": ".notifier", ...})
"""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, where: dict[str, str]):
    """A module `__getattr__` that returns `name` from the module `where[name]` names (relative to `package` when it
    starts with a dot), importing that module the first time."""

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
