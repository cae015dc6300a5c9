"""Pascal VOC detection AP, exactly as the devkit (`VOCevaldet.m`) and py-faster-rcnn's `voc_eval.py` compute it.

Per class, detections of all images are sorted by score, highest first. Each is
compared with every ground-truth box of its class in its image (matched ones
included) using the devkit's inclusive-pixel IoU (`iw = min(x2) - max(x1) + 1`,
areas `(x2 - x1 + 1) * (y2 - y1 + 1)`, only boxes with iw > 0 and ih > 0
overlap), and takes the first box of highest IoU. If that IoU >= `iou_thresh`:
a difficult box makes the detection ignored (neither TP nor FP), an unmatched
box makes it a TP and marks the box, an already matched box makes it a FP
(a duplicate). Otherwise it is a FP. Recall counts non-difficult boxes only.

Where the two reference codes differ we follow the devkit: the match test is
`>=` (py-faster-rcnn writes `>`), and equal scores keep a fixed order (MATLAB's
`sort` is stable; py-faster-rcnn's `np.argsort` is not): the order of the images
in the index, then the order of detections within an image.

`voc07` is the 11-point interpolated AP at recalls `np.arange(0, 1.1, 0.1)`,
py-faster-rcnn's exact float thresholds (0.30000000000000004 and
0.6000000000000001 included, so recall 3/10 does not reach the 0.3 point,
exactly as there); `voc12` is the area under the monotone precision envelope.

The matching is vectorised over all images of a class: each detection is
paired with the boxes of its image and class, the first IoU maximum is found
per detection, and "first detection in score order on a box" is the first
occurrence of that box among candidate detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.predictions import FlatPredictions, Predictions

VOC_METRICS: tuple[str, ...] = ("voc07", "voc12")
VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)


@dataclass
class GroundTruth:
    """All boxes of an index as parallel arrays, in index order then annotation order.

    image: (G,) int64 image position; boxes: (G, 4) float64 xyxy; labels: (G,) int64;
    difficult: (G,) bool.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    num_images: int

    @classmethod
    def from_index(cls, index: DatasetIndex) -> GroundTruth:
        samples = index.samples
        counts = [s.num_objects for s in samples]
        if not samples or sum(counts) == 0:
            return cls(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool), len(samples))
        return cls(image=np.repeat(np.arange(len(samples), dtype=np.int64), counts),
                   boxes=np.concatenate([s.boxes for s in samples]).astype(np.float64),
                   labels=np.concatenate([s.labels for s in samples]),
                   difficult=np.concatenate([s.difficult for s in samples]),
                   num_images=len(samples))


def pair_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Devkit IoU of row i of `det` with row i of `gt` (both (P, 4) xyxy); 0 where they do not overlap."""
    iw = np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]) + 1.0
    ih = np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]) + 1.0
    inters = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = ((det[:, 2] - det[:, 0] + 1.0) * (det[:, 3] - det[:, 1] + 1.0)
             + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
    return np.divide(inters, union, out=np.zeros_like(inters), where=inters > 0)


def match_class(det_image: np.ndarray, det_boxes: np.ndarray, gt_image: np.ndarray, gt_boxes: np.ndarray,
                gt_difficult: np.ndarray, num_images: int, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags ((D,) float64 each) of one class's detections, given already in score order.

    gt_image must be sorted (boxes grouped by image, annotation order kept).
    """
    d = len(det_image)
    counts = np.bincount(gt_image, minlength=num_images)
    starts = np.cumsum(counts) - counts
    n = counts[det_image]
    first_pair = np.cumsum(n) - n
    det_of_pair = np.repeat(np.arange(d), n)
    gt_of_pair = np.arange(int(n.sum())) - np.repeat(first_pair - starts[det_image], n)
    iou = pair_iou(det_boxes[det_of_pair], gt_boxes[gt_of_pair])

    has_gt = n > 0
    ovmax = np.full(d, -np.inf)
    if iou.size:
        ovmax[has_gt] = np.maximum.reduceat(iou, first_pair[has_gt])
    at_max = np.flatnonzero(iou == np.repeat(ovmax, n))
    first_at_max = np.ones(len(at_max), dtype=bool)
    first_at_max[1:] = det_of_pair[at_max[1:]] != det_of_pair[at_max[:-1]]
    jmax = np.full(d, -1, dtype=np.int64)
    jmax[det_of_pair[at_max[first_at_max]]] = gt_of_pair[at_max[first_at_max]]

    matched = (ovmax >= iou_thresh) & (ovmax > 0) & (jmax >= 0)
    candidate = matched & ~gt_difficult[np.where(matched, jmax, 0)] if len(gt_difficult) else matched
    cand = np.flatnonzero(candidate)
    _, first = np.unique(jmax[cand], return_index=True)
    tp = np.zeros(d)
    tp[cand[first]] = 1.0
    fp = (~matched | (candidate & (tp == 0))).astype(np.float64)
    return tp, fp


def voc_ap(rec: np.ndarray, prec: np.ndarray, *, use_07_metric: bool) -> float:
    """AP from the recall/precision curve of detections in score order (py-faster-rcnn's `voc_ap`)."""
    if use_07_metric:
        # rec is non-decreasing, so `rec >= t` is a suffix and its max precision a suffix maximum
        if len(rec) == 0:
            return 0.0
        suffix_max = np.maximum.accumulate(prec[::-1])[::-1]
        start = np.searchsorted(rec, VOC07_RECALLS, side="left")
        p = np.where(start < len(rec), suffix_max[np.minimum(start, len(rec) - 1)], 0.0)
        ap = 0.0
        for value in (p / 11.0).tolist():  # summed in order, as the reference loop does, for bit-equal results
            ap += value
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def class_curves(gt: GroundTruth, det: FlatPredictions, num_classes: int,
                 iou_thresh: float = 0.5) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per class: (recall, precision, npos), detections in score order; recall is empty-safe (npos 0 gives nan)."""
    small = det.labels.astype(np.int16) if num_classes < 2**15 else det.labels  # int16: numpy's radix sort
    by_label = np.argsort(small, kind="stable")
    det_bounds = np.searchsorted(det.labels[by_label], np.arange(num_classes + 1))
    image, boxes, scores = det.image[by_label], det.boxes[by_label], det.scores[by_label]
    gt_order = np.argsort(gt.labels, kind="stable")
    gt_bounds = np.searchsorted(gt.labels[gt_order], np.arange(num_classes + 1))
    curves = []
    for c in range(num_classes):
        lo, hi = det_bounds[c], det_bounds[c + 1]
        di = lo + np.argsort(-scores[lo:hi], kind="stable")  # stable: equal scores keep index order
        gi = gt_order[gt_bounds[c]:gt_bounds[c + 1]]
        tp, fp = match_class(image[di], boxes[di], gt.image[gi], gt.boxes[gi], gt.difficult[gi],
                             gt.num_images, iou_thresh)
        npos = int((~gt.difficult[gi]).sum())
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        curves.append((rec, prec, npos))
    return curves


def evaluate_voc(index: DatasetIndex, preds: Predictions, *, iou_thresh: float = 0.5,
                 metrics: Sequence[str] = VOC_METRICS) -> dict[str, dict]:
    """`{"voc07": {"map", "per_class", "num_gt", "iou_thresh"}, "voc12": {...}}` for the metrics asked.

    per_class: AP in [0, 1] per class name; nan for a class without non-difficult
    ground truth, which is also left out of `map` (the devkit's mean over classes
    with positives). A class with ground truth and no detections has AP 0.
    """
    unknown = [m for m in metrics if m not in VOC_METRICS]
    if unknown:
        raise ValueError(f"unknown VOC metric {unknown[0]!r}; choose from: {', '.join(VOC_METRICS)}")
    gt = GroundTruth.from_index(index)
    det = preds.flatten([s.image_id for s in index.samples])
    curves = class_curves(gt, det, len(index.classes), iou_thresh)
    results = {}
    for metric in metrics:
        per_class = {name: (voc_ap(rec, prec, use_07_metric=metric == "voc07") if npos else math.nan)
                     for name, (rec, prec, npos) in zip(index.classes, curves)}
        valid = [ap for ap in per_class.values() if not math.isnan(ap)]
        results[metric] = {"map": float(np.mean(valid)) if valid else math.nan, "per_class": per_class,
                           "num_gt": {name: npos for name, (_, _, npos) in zip(index.classes, curves)},
                           "iou_thresh": iou_thresh}
    return results
