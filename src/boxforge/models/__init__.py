"""Models: one table of typed builders (`MODELS`, `get_model`) and the `Detector` wrapper.

Labels are 0-based dataset class indexes everywhere outside `Detector` (see detector.py).
"""

from __future__ import annotations

from boxforge.models.detector import Detector
from boxforge.models.registry import MODEL_TASKS, MODELS, get_model, models_for
from boxforge.models.transfer import TransferReport, freeze_backbone, load_matching

__all__ = ["MODELS", "MODEL_TASKS", "Detector", "TransferReport", "freeze_backbone", "get_model",
           "load_matching", "models_for"]
