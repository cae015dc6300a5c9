"""Models: one table (`MODELS`: name -> ModelSpec), the builders it names, and the `Detector` wrapper.

Labels are 0-based dataset class indexes everywhere outside `Detector` (see detector.py). Importing
this package does not import torch (the CLI reads the table to list model names); `Detector` and
the transfer helpers are imported on first use.
"""

from __future__ import annotations

from typing import Any

from boxforge.models.registry import MODELS, ModelSpec, get_model, models_for, spec

_LAZY = {"Detector": "boxforge.models.detector", "TransferReport": "boxforge.models.transfer",
         "freeze_backbone": "boxforge.models.transfer", "load_matching": "boxforge.models.transfer"}

__all__ = ["MODELS", "Detector", "ModelSpec", "TransferReport", "freeze_backbone", "get_model", "load_matching",
           "models_for", "spec"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'boxforge.models' has no attribute {name!r}")
