"""Training with Hugging Face Accelerate.

The names load their module on first use: `dynamic-atss train --help` reads the recipe dataclasses
(`engine.config`) without importing the trainer (torch, accelerate)."""

import importlib
from typing import Any

_HOMES = {"DataConfig": "config", "OptimConfig": "config", "TrainConfig": "config", "load_config": "config",
          "NonFiniteLossError": "trainer", "evaluate": "trainer", "train": "trainer"}

__all__ = ["DataConfig", "NonFiniteLossError", "OptimConfig", "TrainConfig", "evaluate", "load_config", "train"]


def __getattr__(name: str) -> Any:  # PEP 562
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
