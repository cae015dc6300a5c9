"""The 12 COCO bbox numbers, computed by pycocotools itself (not a re-implementation).

The ground truth (coco_truth.py) is the index's COCO file as it is when the index was read from
one, so the numbers equal pycocotools run on the user's files; other indexes get one built from
their boxes (no annotation file, no image file needed). The detections: a COCO results list read
by `load_predictions` goes to pycocotools' `loadRes` as it is (entries unchanged, category ids the
dataset lacks included: pycocotools ignores them, see `to_coco_results`); any other detections
(a model's, a boxforge predictions file) become a results list with the ground truth's ids.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from typing import Any

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.coco_truth import coco_ids, ground_truth, index_to_coco, xywh
from boxforge.evaluation.predictions import Predictions

__all__ = ["BACKENDS", "STAT_NAMES", "coco_ids", "evaluate_coco", "index_to_coco", "precision_curves",
           "run_cocoeval", "summary_lines", "to_coco_results"]

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (AP or AR, IoU threshold or None for .50:.95, area range, max detections) of each stat, as summarize() has them
_SUMMARY_ROWS: tuple[tuple[bool, float | None, str, int], ...] = (
    (True, None, "all", 100), (True, 0.5, "all", 100), (True, 0.75, "all", 100),
    (True, None, "small", 100), (True, None, "medium", 100), (True, None, "large", 100),
    (False, None, "all", 1), (False, None, "all", 10), (False, None, "all", 100),
    (False, None, "small", 100), (False, None, "medium", 100), (False, None, "large", 100))


def summary_lines(stats: list[float]) -> list[str]:
    """The 12 lines pycocotools' `COCOeval.summarize()` prints for these stats (default parameters), character
    for character, e.g. ` Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.504`."""
    lines = []
    for value, (ap, iou, area, max_dets) in zip(stats, _SUMMARY_ROWS):
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {title:<18} {kind} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] "
                     f"= {value:0.3f}")
    return lines


def to_coco_results(preds: Predictions, index: DatasetIndex) -> list[dict[str, Any]]:
    """The detections as a COCO results list with the ids of the ground truth (`coco_ids`).

    Predictions read from a COCO results list give that list back, each entry a shallow copy (loadRes
    writes `id`, `area` and `iscrowd` into them) of the file's: the same bbox floats, scores and order,
    so pycocotools scores exactly what it would read from the file. Entries whose category id the
    ground truth lacks are left out: pycocotools' `_prepare` never selects them (only `params.catIds`),
    so the numbers are the same, and an id such as [3] cannot break its index.
    """
    images, categories = coco_ids(index)
    preds.flatten(list(images))  # raises on image ids the index does not have
    if preds.coco_results is not None:
        known = set(categories)
        return [dict(entry) for entry in preds.coco_results
                if _is_id(entry.get("category_id")) and entry["category_id"] in known]
    results = []
    for image_id, p in preds.images.items():
        coco_image = images[image_id]
        for bbox, score, label in zip(xywh(p.boxes), p.scores.tolist(), p.labels.tolist()):
            results.append({"image_id": coco_image, "category_id": categories[label], "bbox": bbox, "score": score})
    return results


def _is_id(value: Any) -> bool:
    """A results entry's category id that can key a lookup. Wider than the dataset reader's `coco.is_id` on
    purpose: a results file's `3.0` is category 3 to pycocotools (3.0 == 3 as a dict key), so it is scored as
    pycocotools would score it; only unhashable or boolean ids are left out."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


BACKENDS: tuple[str, ...] = ("auto", "pycocotools", "faster-coco-eval")


def _cocoeval_classes(backend: str) -> tuple[Any, Any]:
    """(COCO, COCOeval) of `backend`; "auto" is faster-coco-eval when installed, else pycocotools.

    faster-coco-eval runs pycocotools' algorithm in C++ (7.5x faster on 500 images x 100
    detections, bench/eval_speed.py) and gives the same numbers (tests/evaluation/test_coco_backends.py
    compares every stat and the precision array, also against pycocotools run on COCO- and
    Roboflow-style files, annotation id 0 included); pycocotools stays the reference.
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


def run_cocoeval(index: DatasetIndex, preds: Predictions, *, verbose: bool = False, backend: str = "auto",
                 notes: list[str] | None = None) -> Any:
    """pycocotools' `COCOeval` after evaluate(), accumulate() and summarize(), for callers that need more
    than the 12 numbers (`eval --plots` reads its `eval["precision"]` array).

    pycocotools' printing (and faster-coco-eval's warnings) are swallowed unless `verbose`.
    backend: see `_cocoeval_classes`. notes: receives what the ground truth needs said (coco_truth.py).
    """
    COCO, COCOeval = _cocoeval_classes(backend)
    doc, truth_notes = ground_truth(index)
    if notes is not None:
        notes.extend(truth_notes)
    results = to_coco_results(preds, index)
    out = io.StringIO()
    quiet = contextlib.ExitStack()
    if not verbose:
        quiet.enter_context(contextlib.redirect_stdout(out))
        quiet.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
    with quiet:
        gt = COCO()
        gt.dataset = doc
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
    """`{"stats": [12 floats], "AP": ..., "ARl": ..., "per_class": {name: AP}, "notes": [str]}`, fractions in [0, 1].

    per_class: detectron2's per-category AP, the mean of `eval["precision"]` over
    IoU thresholds and recall points at area "all" and 100 detections, -1 entries
    left out; nan for a class without (non-crowd) ground truth.
    notes: facts about the ground truth file a user should know (coco_truth.py), usually none.
    pycocotools' printing is swallowed unless `verbose`; `summary_lines(stats)` is its text.
    """
    notes: list[str] = []
    evaluator = run_cocoeval(index, preds, verbose=verbose, backend=backend, notes=notes)
    stats = [float(v) for v in evaluator.stats[:12]]
    report: dict[str, Any] = {"stats": stats, **dict(zip(STAT_NAMES, stats))}
    report["per_class"] = _per_class_ap(evaluator, index.classes, coco_ids(index)[1])
    report["notes"] = notes
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
