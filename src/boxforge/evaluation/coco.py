"""The 12 COCO bbox numbers, computed by pycocotools itself (not a re-implementation), from an index in memory.

The ground truth is built from the `DatasetIndex`, so no annotation file and no
image file is needed (width and height come from the index; 0 is fine for boxes).

Ids: a COCO index keeps its original category ids and image ids (from
`index.meta`), so numbers match those of any other tool run on the same JSON;
other indexes get category ids 1..K in class order and image ids 1..N in index order.

Areas are the box areas w * h (xywh, no +1), used for the small/medium/large
ranges. Real COCO files hold the segmentation area instead, so APs/APm/APl of a
COCO index can differ slightly from an evaluation on the original JSON; AP,
AP50, AP75 and AR do not depend on areas.

Difficult boxes: a COCO index's `difficult` is COCO's `iscrowd` and is written
back as such. VOC `difficult` boxes also become `iscrowd=1`, which is the one
way to make pycocotools ignore a box: its `_prepare` overwrites any `ignore`
field with `iscrowd`. Consequences, all close to the VOC devkit: a difficult
box never counts toward recall, detections matched to it are ignored (not
false positives), and any number of detections may match it. Unlike VOC, crowd
IoU is intersection over the detection's area, so a small detection inside a
difficult box is ignored too.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from typing import Any

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.predictions import Predictions

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_ids(index: DatasetIndex) -> tuple[dict[str, Any], list[Any]]:
    """(image id -> COCO image id, COCO category id per class): the original ids when the index has them all."""
    meta = index.meta
    original_images = meta.get("coco_image_ids") or {}
    if index.format == "coco" and original_images and all(s.image_id in original_images for s in index.samples):
        images = {s.image_id: original_images[s.image_id] for s in index.samples}
    else:
        images = {s.image_id: number for number, s in enumerate(index.samples, start=1)}
    categories = meta.get("category_ids")
    if index.format != "coco" or not categories or len(categories) != len(index.classes):
        categories = list(range(1, len(index.classes) + 1))
    return images, list(categories)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).tolist()


def index_to_coco(index: DatasetIndex) -> dict[str, Any]:
    """The ground truth as a COCO instances dict (images, categories, annotations with area and iscrowd)."""
    images, categories = coco_ids(index)
    doc: dict[str, Any] = {
        "images": [{"id": images[s.image_id], "file_name": s.image_id, "width": s.width, "height": s.height}
                   for s in index.samples],
        "categories": [{"id": cid, "name": name} for cid, name in zip(categories, index.classes)],
        "annotations": [],
    }
    for s in index.samples:
        for bbox, label, crowd in zip(_xywh(s.boxes), s.labels.tolist(), s.difficult.tolist()):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": images[s.image_id],
                                       "category_id": categories[label], "bbox": bbox,
                                       "area": bbox[2] * bbox[3], "iscrowd": int(crowd)})
    return doc


def to_coco_results(preds: Predictions, index: DatasetIndex) -> list[dict[str, Any]]:
    """The detections as a COCO results list, with the ids `index_to_coco` uses."""
    images, categories = coco_ids(index)
    preds.flatten(list(images))  # raises on image ids the index does not have
    results = []
    for image_id, p in preds.images.items():
        coco_image = images[image_id]
        for bbox, score, label in zip(_xywh(p.boxes), p.scores.tolist(), p.labels.tolist()):
            results.append({"image_id": coco_image, "category_id": categories[label], "bbox": bbox, "score": score})
    return results


BACKENDS: tuple[str, ...] = ("auto", "pycocotools", "faster-coco-eval")


def _cocoeval_classes(backend: str) -> tuple[Any, Any]:
    """(COCO, COCOeval) of `backend`; "auto" is faster-coco-eval when installed, else pycocotools.

    faster-coco-eval runs pycocotools' algorithm in C++ (7.5x faster on 500 images x 100
    detections, bench/eval_speed.py) and gives the same numbers (tests/evaluation/test_coco.py
    compares every stat and the precision array); pycocotools stays the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "pycocotools":
        try:
            from faster_coco_eval import COCO as FastCOCO, COCOeval_faster
        except ImportError:
            if backend == "faster-coco-eval":
                raise
        else:
            return FastCOCO, functools.partial(COCOeval_faster, print_function=lambda *args: None)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def run_cocoeval(index: DatasetIndex, preds: Predictions, *, verbose: bool = False, backend: str = "auto") -> Any:
    """pycocotools' `COCOeval` after evaluate(), accumulate() and summarize(), for callers that need more
    than the 12 numbers (`eval --plots` reads its `eval["precision"]` array).

    pycocotools' printing is swallowed unless `verbose`. backend: see `_cocoeval_classes`.
    """
    COCO, COCOeval = _cocoeval_classes(backend)
    results = to_coco_results(preds, index)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if not verbose else contextlib.nullcontext():
        gt = COCO()
        gt.dataset = index_to_coco(index)
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluate_coco(index: DatasetIndex, preds: Predictions, *, verbose: bool = False,
                  backend: str = "auto") -> dict[str, Any]:
    """`{"stats": [12 floats], "AP": ..., "ARl": ..., "per_class": {name: AP}}`, fractions in [0, 1].

    per_class: detectron2's per-category AP, the mean of `eval["precision"]` over
    IoU thresholds and recall points at area "all" and 100 detections, -1 entries
    left out; nan for a class without (non-crowd) ground truth.
    pycocotools' printing is swallowed unless `verbose`.
    """
    evaluator = run_cocoeval(index, preds, verbose=verbose, backend=backend)
    stats = [float(v) for v in evaluator.stats[:12]]
    report: dict[str, Any] = {"stats": stats, **dict(zip(STAT_NAMES, stats))}
    report["per_class"] = _per_class_ap(evaluator, index.classes, coco_ids(index)[1])
    return report


def precision_curves(evaluator: Any, index: DatasetIndex) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(recall points (R,), IoU thresholds (T,), {class: precision (T, R) float64}) at area "all" and
    100 detections, from an accumulated `COCOeval`; pycocotools' -1 (no ground truth) becomes nan.

    Each class's mean over every finite entry is its `per_class` AP in `evaluate_coco`.
    """
    precision = evaluator.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    cat_ids = list(evaluator.params.catIds)
    curves = {}
    for name, cid in zip(index.classes, coco_ids(index)[1]):
        values = precision[:, :, cat_ids.index(cid), 0, -1].astype(np.float64)
        curves[name] = np.where(values > -1, values, np.nan)
    return np.asarray(evaluator.params.recThrs, np.float64), np.asarray(evaluator.params.iouThrs, np.float64), curves


def _per_class_ap(evaluator: Any, classes: list[str], categories: list[Any]) -> dict[str, float]:
    precision = evaluator.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    cat_ids = list(evaluator.params.catIds)
    per_class = {}
    for name, cid in zip(classes, categories):
        values = precision[:, :, cat_ids.index(cid), 0, -1]
        values = values[values > -1]
        per_class[name] = float(np.mean(values)) if values.size else math.nan
    return per_class
