"""boxforge: from a folder of labelled images to a trained, evaluated, exported detector.

The public API; the CLI (`boxforge ...`) is a thin shell over these functions.
"""

from __future__ import annotations

from boxforge.api import check, convert, load_dataset, synth, train
from boxforge.api import evaluate, export_onnx, predict
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError, DatasetError

__version__ = "0.1.0"
__all__ = ["BoxforgeError", "DatasetError", "DatasetIndex", "Sample", "check", "convert", "load_dataset", "synth", "train"]
__all__ += ["evaluate", "export_onnx", "predict"]
