"""`eval` for detectors: mAP of a loaded model or of a predictions file on a dataset split.

A model is run with benchmark post-processing (`MAP_POSTPROCESS`: score threshold 0.001, 100
detections per image, its own NMS threshold) through the one batch runner, exactly as training's
validation runs it (engine/validate.py calls `model_predictions` too), so `eval` reproduces the
numbers the run logged. A predictions file needs no image file at all: only the annotations are read.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.formats.detect import load_dataset
from boxforge.data.index import DatasetIndex
from boxforge.data.splits import eval_split
from boxforge.errors import BoxforgeError
from boxforge.evaluation import METRICS, Predictions, evaluate_detections, load_predictions, save_predictions
from boxforge.evaluation.errors import analyse_errors
from boxforge.evaluation.predictions import class_mapping
from boxforge.inference.backends import Backend
from boxforge.inference.batches import image_progress, predict_index
from boxforge.inference.load import LoadedModel

# Benchmark convention for mAP: keep low-score detections (they still add recall), at most 100 an image.
MAP_POSTPROCESS: dict[str, Any] = {"score_thresh": 0.001, "max_det": 100}


@dataclass
class EvalReport:
    results: dict[str, Any]
    data: str
    split: str | None
    images: int
    objects: int
    source: str
    predictions: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)  # with plots=DIR: PR curves, table.png and their CSVs

    def header(self) -> str:
        split = f" split {self.split}" if self.split else " (all images)"
        return (f"{self.data}{split}: {self.images} images, {self.objects} objects; "
                f"{self.predictions} detections from {self.source}")

    def to_json(self) -> dict[str, Any]:
        """The results, NaN (a class without ground truth) written as null."""
        return _nan_to_none(self.results)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _index(data: str | Path | Sequence[str | Path] | DatasetIndex, split: str | None,
           format: str | None) -> tuple[DatasetIndex, str]:
    """(the index to score, how to name it): DATA's split (the policy's when None), or an index as given."""
    if isinstance(data, DatasetIndex):
        return data, str(data.root)
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    split = split if split is not None else default_split(data, format)
    name = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    return load_dataset(data, split=split, format=format), name


def default_split(data: str | Path | Sequence[str | Path], format: str | None = None) -> str | None:
    """The split `eval` scores when none is given: the split policy's choice (data/splits.py): `test`, else
    `val`; `VOC2007/test` for a VOCdevkit of several years; None (every image) without splits."""
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    return eval_split(data, format=format)


def resolve_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """"all" or names from METRICS (a comma-separated string works too) -> a tuple in METRICS order."""
    names = metrics.split(",") if isinstance(metrics, str) else [m for item in metrics for m in item.split(",")]
    names = [n.strip() for n in names if n.strip()]
    if not names or "all" in names:
        return METRICS
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise BoxforgeError(f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}, all")
    return tuple(m for m in METRICS if m in names)


def model_predictions(index: DatasetIndex, backend: Backend, *, batch_size: int = 8, workers: int = 0,
                      progress: bool = False, strict_classes: bool = False) -> tuple[Predictions, list[str], list[str]]:
    """(detections on every image of `index`, labels mapped by class name onto the index's classes; notes;
    why each skipped image was skipped). The backend runs with MAP_POSTPROCESS.

    The model's classes the dataset lacks are ignored with a note, or with `strict_classes` an error.
    """
    backend.configure(**MAP_POSTPROCESS)
    notes = list(backend.notes)
    model_classes = list(backend.classes)
    mapping = class_mapping(model_classes, index.classes)
    source = backend.meta.source
    if (mapping < 0).all():
        raise BoxforgeError(f"{source}: the model's classes ({', '.join(model_classes)}) share no name with the "
                            f"dataset's ({', '.join(index.classes)})")
    extra = [c for c, m in zip(model_classes, mapping) if m < 0]
    if extra and strict_classes:
        raise BoxforgeError(f"{source}: the model's classes {', '.join(extra)} are not in the dataset "
                            f"({', '.join(index.classes)}); without --strict-classes their detections are ignored")
    if extra:
        notes.append(f"the model's classes {', '.join(extra)} are not in the dataset; their detections are ignored")
    missing = [c for c in index.classes if c not in model_classes]
    if missing:
        notes.append(f"the dataset's classes {', '.join(missing)} are unknown to the model (AP 0)")
    with image_progress(len(index), "eval", enabled=progress) as shown:
        found, skipped = predict_index(backend, index, batch_size=batch_size, workers=workers,
                                       progress=shown.update)
    preds = Predictions(list(index.classes))
    for image_id, p in found.images.items():
        labels = mapping[p.labels]
        keep = labels >= 0
        preds.add(image_id, p.boxes[keep], p.scores[keep], labels[keep])
    return preds, notes, skipped


def ignored_note(preds: Predictions) -> str:
    """One line naming the classes whose detections were left out, most detections first."""
    counts = sorted(preds.ignored.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{name} ({n})" for name, n in counts)
    return (f"{sum(preds.ignored.values())} detections of classes the dataset does not have are ignored "
            f"(as pycocotools and the VOC devkit ignore them): {named}; --strict-classes makes this an error")


def evaluate(data: str | Path | Sequence[str | Path] | DatasetIndex, *, model: LoadedModel | None = None,
             predictions: str | Path | None = None, split: str | None = None, format: str | None = None,
             metrics: str | Sequence[str] = "all", iou_thresh: float = 0.5, batch_size: int = 8, workers: int = 0,
             save_predictions_to: str | Path | None = None, progress: bool = True, plots: str | Path | None = None,
             strict_classes: bool = False, errors: bool = False) -> EvalReport:
    """Evaluate `model` (a loaded detector, run on the images) or a `predictions` file on DATA; see EvalReport.

    split: default `default_split(data)`: the split policy's evaluation split (data/splits.py).
    strict_classes: detections of classes the dataset lacks are an error; by default they are ignored
        (as pycocotools and the VOC devkit do) with a note naming the classes and counting them.
    plots: a folder for per-class precision/recall curves and the table as PNG (see plots/evaluation.py).
    errors: also break the lost AP down by error type (evaluation/errors.py), as `results["errors"]`.
    """
    if (model is None) == (predictions is None):
        raise BoxforgeError("give either a model (a checkpoint or .onnx) or predictions (a predictions file)")
    if save_predictions_to is not None and model is None:
        raise BoxforgeError("--save-predictions keeps a model's detections; with --predictions the file is already "
                            "there")
    chosen = tuple(resolve_metrics(metrics))
    start = time.perf_counter()
    index, name = _index(data, split, format)
    if index.task != "detect":
        raise BoxforgeError(f"{name}: a {index.task} dataset; eval needs boxes")
    notes: list[str] = []
    skipped: list[str] = []
    if predictions is not None:
        preds, source = load_predictions(predictions, index, strict_classes=strict_classes), str(predictions)
        if preds.ignored:
            notes.append(ignored_note(preds))
    else:
        preds, notes, skipped = model_predictions(index, model.backend, batch_size=batch_size, workers=workers,
                                                  progress=progress, strict_classes=strict_classes)
        source = model.meta.describe()
        if save_predictions_to:
            save_predictions(preds, index.classes, save_predictions_to)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        results = evaluate_detections(index, preds, chosen, iou_thresh=iou_thresh)
    notes.extend(results.get("coco", {}).get("notes", []))
    if errors:
        results["errors"] = analyse_errors(index, preds).to_json()
    if skipped:
        notes.append(f"{len(skipped)} images could not be read; their objects count as missed")
    drawn: list[Path] = []
    if plots is not None:
        from boxforge.plots.evaluation import plot_evaluation

        drawn = plot_evaluation(index, preds, results, plots, iou_thresh=iou_thresh, metrics=chosen)
    return EvalReport(results, name, index.split, len(index), index.num_objects,
                      source, len(preds), skipped, notes, time.perf_counter() - start, drawn)
