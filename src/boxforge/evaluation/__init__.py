"""Detection metrics over a `DatasetIndex` and `Predictions`: VOC07, VOC12 (devkit-exact), COCO (pycocotools).

Everything here speaks the index and the predictions file; no model, no image
file, no torch. `evaluate_detections` is what the `evaluate` command calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.coco import evaluate_coco, summary_lines
from boxforge.evaluation.matching import mean_matched_iou
from boxforge.evaluation.predictions import (FlatPredictions, ImagePredictions, Predictions, PredictionsError,
                                             load_predictions, save_predictions)
from boxforge.evaluation.table import format_table
from boxforge.evaluation.voc import VOC_METRICS, evaluate_voc

__all__ = ["BEST_METRIC", "DETECT_BEST", "METRICS", "mean_matched_iou", "summary_metrics", "FlatPredictions",
           "ImagePredictions", "Predictions", "PredictionsError", "evaluate_coco", "evaluate_detections",
           "evaluate_voc", "format_table", "load_predictions", "save_predictions", "summary_lines"]

METRICS: tuple[str, ...] = ("voc07", "voc12", "coco")
# The metric that chooses a run's best.pt, per task, and how logs name it (higher is better): training
# (engine/tasks.py) and `eval --weights A B ...` (inference/compare.py) choose by the same one.
BEST_METRIC: dict[str, tuple[str, str]] = {"detect": ("voc12_map", "VOC12 mAP"), "classify": ("acc1", "Acc@1")}
# `train --best-metric`: what may choose a detector's best.pt. voc12 rewards loose boxes; fitness is Ultralytics'
# 0.1 AP50 + 0.9 AP, which weights the tight COCO metric.
DETECT_BEST: dict[str, tuple[str, str]] = {"voc12": BEST_METRIC["detect"], "coco": ("coco_AP", "COCO AP"),
                                           "fitness": ("fitness", "fitness (0.1 AP50 + 0.9 AP)")}
FITNESS_WEIGHTS = {"coco_AP50": 0.1, "coco_AP": 0.9}


def summary_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The flat numbers of metrics.jsonl (`voc07_map`, `voc12_map`, `coco_AP`, `coco_AP50`, `coco_AP75`, `fitness`)
    from `evaluate_detections` results; NaN for a metric not computed."""
    coco = results.get("coco", {})
    out = {"voc07_map": results.get("voc07", {}).get("map"), "voc12_map": results.get("voc12", {}).get("map")}
    out.update({f"coco_{key}": coco.get(key) for key in ("AP", "AP50", "AP75")})
    flat = {k: float(v) if v is not None else math.nan for k, v in out.items()}
    flat["fitness"] = sum(w * flat[k] for k, w in FITNESS_WEIGHTS.items())
    return flat


def evaluate_detections(index: DatasetIndex, preds: Predictions, metrics: Sequence[str] = METRICS,
                        iou_thresh: float = 0.5, *, verbose: bool = False) -> dict[str, Any]:
    """`{"voc07": {"map", "per_class", ...}, "voc12": {...}, "coco": {"stats", "AP", ..., "per_class"}}`.

    iou_thresh: the VOC match threshold (COCO always uses its 0.50:0.95 range).
    preds: labels must index `index.classes` (what `load_predictions` gives).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise PredictionsError(f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}")
    if index.task != "detect":
        raise PredictionsError(f"{index.root}: a {index.task} dataset has no boxes to evaluate detections on")
    if list(preds.classes) != list(index.classes):
        raise PredictionsError(f"predictions are labelled with classes {preds.classes} but the dataset has "
                               f"{index.classes}; load them with load_predictions(path, index) to map names")
    if not 0.0 < iou_thresh <= 1.0:
        raise PredictionsError(f"iou_thresh {iou_thresh} is outside (0, 1]")
    results: dict[str, Any] = {}
    voc = [m for m in metrics if m in VOC_METRICS]
    if voc:
        results.update(evaluate_voc(index, preds, iou_thresh=iou_thresh, metrics=voc))
    if "coco" in metrics:
        results["coco"] = evaluate_coco(index, preds, verbose=verbose)
    return {m: results[m] for m in metrics}
