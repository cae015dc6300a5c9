"""Running a trained model, one way for every command: `load_model` opens a checkpoint or an exported
`.onnx` once (inference/load.py), a backend runs it (backends.py), and one batch runner (batches.py)
feeds it images for training's validation, `eval` (evaluate.py, classify.py, compare.py) and
`predict` (predict.py, classify.py). No training code is imported here.
"""

from __future__ import annotations

from boxforge.inference.load import LoadedModel, load_detector, load_model, load_pretrained_classifier

__all__ = ["LoadedModel", "load_detector", "load_model", "load_pretrained_classifier"]
