"""Validation during training: VOC07/VOC12/COCO mAP and the mean IoU of confident matches.

The live model runs through inference's one batch runner with `eval`'s post-processing
(`inference.evaluate.model_predictions`), in float32 like `eval` (not under the run's autocast), so
`boxforge eval` of a checkpoint reproduces the numbers its run logged. An unreadable validation
image is left out and its objects count as missed, as in `eval`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxforge.data.index import DatasetIndex
from boxforge.evaluation import evaluate_detections, mean_matched_iou, summary_metrics
from boxforge.evaluation.topk import TopKMeter
from boxforge.inference.backends import ModelMeta, TorchClassifier, TorchDetector
from boxforge.inference.batches import ImageSource, iter_probabilities
from boxforge.inference.evaluate import model_predictions
from boxforge.models.classification import ProbabilityModel


def _meta(model: nn.Module, classes: list[str]) -> ModelMeta:
    """What the runner needs to know of the model under training: its classes and input size."""
    return ModelMeta(Path("(training)"), "training", getattr(model, "name", type(model).__name__), list(classes),
                     int(model.img_size))


def validate(model: nn.Module, index: DatasetIndex, *, device: torch.device, batch_size: int = 8) -> dict[str, Any]:
    """Flat metrics for metrics.jsonl: voc07_map, voc12_map, coco_AP, coco_AP50, coco_AP75, mean_iou."""
    saved = model.postprocess_settings()
    try:
        preds, _, _ = model_predictions(index, TorchDetector(model, _meta(model, model.class_names), device),
                                        batch_size=batch_size)
    finally:
        model.set_postprocess(**saved)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_detections(index, preds, metrics=("voc07", "voc12", "coco"))
    return {**summary_metrics(results), "mean_iou": mean_matched_iou(index, preds)}


def validate_classifier(model: nn.Module, index: DatasetIndex, *, device: torch.device, batch_size: int = 32,
                        workers: int = 0) -> dict[str, float]:
    """loss, acc1, acc5 (percent) of the live classifier on `index`, as `eval --task classify` computes them."""
    backend = TorchClassifier(ProbabilityModel(model).to(device), _meta(model, index.classes), device)
    labels = torch.tensor([int(s.label) for s in index.samples], dtype=torch.int64)
    meter = TopKMeter(list(index.classes))
    for good, probs, _ in iter_probabilities(backend, ImageSource.index(index), batch_size=batch_size,
                                             workers=workers):
        if probs is not None:
            meter.update(probs, labels[good])
    return meter.summary()
