"""boxforge: from a folder of labelled images to a trained, evaluated, exported detector.

The public API; the CLI (`boxforge ...`) is a thin shell over these functions.
"""

from __future__ import annotations

from boxforge.api import apply_audit, audit, check, convert, load_dataset, pack, plan_splits, report, synth, train
from boxforge.api import evaluate, export_onnx, predict, train_plan
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError, DatasetError

__version__ = "0.1.0"
__all__ = ["BoxforgeError", "DatasetError", "DatasetIndex", "Sample", "check", "convert", "load_dataset", "synth", "train"]
__all__ += ["apply_audit", "audit", "evaluate", "export_onnx", "pack", "plan_splits", "predict", "report", "train_plan"]
