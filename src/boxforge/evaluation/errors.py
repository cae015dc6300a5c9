"""Where the AP goes: a detector's errors by type, each as the AP gained if it were fixed (TIDE, ECCV 2020).

Every detection (score order, per class, greedy as COCO matches) that is not a true positive gets one
error type, from its IoU with the ground truth of its image (continuous pixels, COCO's IoU), with the
foreground threshold `t_f` (0.5, or each of .50:.95) and the background threshold `t_b` = 0.1, checked
in this order:

    duplicate       IoU >= t_f with a box of its class that a higher-scoring detection already matched
    classification  IoU >= t_f with a box of another class (found, but named wrongly)
    localisation    t_b <= IoU < t_f with a box of its class (named right, drawn loosely)
    both            t_b <= IoU < t_f with a box of another class only
    background      IoU < t_b with every box (a detection of nothing)

A box no detection matched is `missed` unless a classification or localisation error points at it
(fixing that error would find it). A detection whose best box is difficult (VOC) or a crowd (COCO) is
ignored, as in both benchmarks.

Each error type is fixed on its own, the rest left as they are, and AP recomputed: a classification
error is relabelled (a localisation error given its box's coordinates) and becomes the true positive
of the box it points at, when no detection has that box yet (else it is dropped, as a duplicate would
be); duplicate, both and background errors are dropped; missed boxes leave the count of positives. dAP
is the mean over classes of AP(fixed) - AP, AP being COCO's 101-point interpolated AP per class. With
the ground truth given as predictions, AP is 1 and every dAP 0 (tested: the original TIDE code did not
give 0 there). "false positives" fixes every detection error at once, "false negatives" the missed ones.

Image ranking: each image's loss is its missed boxes plus the scores of its false positives (at t_f =
0.5): the detections that cost AP most are confident and wrong, and every missed box caps recall.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.predictions import Predictions
from boxforge.evaluation.voc import GroundTruth

ERROR_TYPES: tuple[str, ...] = ("classification", "localisation", "both", "duplicate", "background", "missed")
FG_THRESHOLDS = np.linspace(0.5, 0.95, 10)
BG_THRESH = 0.1
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
TOP_IMAGES = 20


def _iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xyxy boxes, continuous coordinates (COCO's, not the VOC devkit's +1)."""
    x1 = np.maximum(boxes[:, None, 0], gt[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], gt[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], gt[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], gt[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(boxes)[:, None] + area(gt)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coco_ap(scores: np.ndarray, tp: np.ndarray, positives: int) -> float:
    """COCO's 101-point interpolated AP of one class; nan without positives, 0 without detections."""
    if positives <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(tp[order])
    recall = hits / positives
    precision = hits / np.arange(1, len(order) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0).mean())


@dataclass
class Assignment:
    """One threshold's verdicts. status: (D,) one of "tp", "ignored" or an error type; target: (D,) the ground
    truth index a classification or localisation error points at (-1 otherwise); matched: (G,) bool."""

    status: np.ndarray
    target: np.ndarray
    matched: np.ndarray


def assign(gt: GroundTruth, det_image: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
           det_labels: np.ndarray, t_f: float) -> Assignment:
    """Greedy matching by score, per class and image, then one error type for every other detection."""
    status = np.full(len(det_scores), "", dtype=object)
    target = np.full(len(det_scores), -1, dtype=np.int64)
    matched = np.zeros(len(gt.labels), dtype=bool)
    order = np.lexsort((-det_scores, det_image))  # per image, highest score first
    starts = np.searchsorted(det_image[order], np.arange(gt.num_images + 1))
    gt_starts = np.searchsorted(gt.image, np.arange(gt.num_images + 1))
    for i in range(gt.num_images):
        dets = order[starts[i]:starts[i + 1]]
        g0, g1 = gt_starts[i], gt_starts[i + 1]
        if len(dets) == 0:
            continue
        if g1 == g0:
            status[dets] = "background"
            continue
        ious = _iou(det_boxes[dets], gt.boxes[g0:g1])
        same = det_labels[dets][:, None] == gt.labels[g0:g1][None, :]
        for row, d in enumerate(dets):
            status[d], target[d] = _verdict(ious[row], same[row], gt.difficult[g0:g1], matched[g0:g1], t_f, g0)
    return Assignment(status, target, matched)


def _verdict(iou: np.ndarray, same: np.ndarray, difficult: np.ndarray, matched: np.ndarray, t_f: float,
             offset: int) -> tuple[str, int]:
    """The status of one detection against its image's boxes (marking the box it matches)."""
    same_iou = np.where(same, iou, -1.0)
    free = same & ~matched & ~difficult
    best_free = np.where(free, iou, -1.0)
    if best_free.max(initial=-1.0) >= t_f:
        k = int(best_free.argmax())
        matched[k] = True
        return "tp", -1
    if same_iou.max(initial=-1.0) >= t_f:
        k = int(same_iou.argmax())
        return ("ignored", -1) if difficult[k] else ("duplicate", -1)
    other = np.where(~same & ~difficult, iou, -1.0)
    if other.max(initial=-1.0) >= t_f:
        return "classification", offset + int(other.argmax())
    if same_iou.max(initial=-1.0) >= BG_THRESH:
        k = int(same_iou.argmax())
        return ("ignored", -1) if difficult[k] else ("localisation", offset + k)
    if other.max(initial=-1.0) >= BG_THRESH:
        return "both", -1
    return "background", -1


def _mean_ap(labels: np.ndarray, scores: np.ndarray, tp: np.ndarray, positives: np.ndarray,
             num_classes: int) -> float:
    aps = [coco_ap(scores[labels == c], tp[labels == c], int(positives[c])) for c in range(num_classes)]
    finite = [a for a in aps if not np.isnan(a)]
    return float(np.mean(finite)) if finite else float("nan")


def _fixed(gt: GroundTruth, a: Assignment, labels: np.ndarray, scores: np.ndarray, positives: np.ndarray,
           fix: set[str], num_classes: int) -> float:
    """mAP with the errors of the types in `fix` fixed (see the module docstring)."""
    keep = (a.status != "ignored") & ~np.isin(a.status, list(fix - {"classification", "localisation"}))
    labels, tp = labels.copy(), (a.status == "tp").astype(float)
    claimed = a.matched.copy()
    for d in np.argsort(-scores, kind="stable"):
        if a.status[d] in fix and a.status[d] in ("classification", "localisation"):
            k = a.target[d]
            if claimed[k]:
                keep[d] = False
            else:
                claimed[k], labels[d], tp[d] = True, gt.labels[k], 1.0
    positives = positives.copy()
    if "missed" in fix:
        missed = ~a.matched & ~gt.difficult & ~np.isin(np.arange(len(gt.labels)), a.target[a.target >= 0])
        positives -= np.bincount(gt.labels[missed], minlength=num_classes)
    return _mean_ap(labels[keep], scores[keep], tp[keep], positives, num_classes)


@dataclass
class ErrorReport:
    """dAP per error type at IoU .50 and averaged over .50:.95 (fractions), counts and the worst images."""

    ap50: float
    ap: float
    dap50: dict[str, float]
    dap: dict[str, float]
    counts: dict[str, int]  # error type -> detections (missed: boxes), at IoU .50
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> {"fp", "fn", "tp"} at .50
    worst_images: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ap50": self.ap50, "ap": self.ap, "dap50": self.dap50, "dap": self.dap, "counts": self.counts,
                "per_class_counts": self.per_class, "worst_images": self.worst_images,
                "thresholds": {"foreground": [float(t) for t in FG_THRESHOLDS], "background": BG_THRESH}}


def analyse_errors(index: DatasetIndex, preds: Predictions) -> ErrorReport:
    """The TIDE breakdown of `preds` (labels indexing `index.classes`) on `index`."""
    gt = GroundTruth.from_index(index)
    flat = preds.flatten([s.image_id for s in index.samples])
    k = len(index.classes)
    positives = np.bincount(gt.labels[~gt.difficult], minlength=k)
    fixes = {name: {name} for name in ERROR_TYPES}
    fixes["false positives"] = set(ERROR_TYPES) - {"missed"}
    fixes["false negatives"] = {"missed"}
    per_threshold = []
    for t_f in FG_THRESHOLDS:
        a = assign(gt, flat.image, flat.boxes, flat.scores, flat.labels, float(t_f))
        base = _fixed(gt, a, flat.labels, flat.scores, positives, set(), k)
        gains = {name: _fixed(gt, a, flat.labels, flat.scores, positives, fix, k) - base for name, fix in fixes.items()}
        per_threshold.append((base, gains, a))
    base50, gains50, a50 = per_threshold[0]
    report = ErrorReport(base50, float(np.mean([b for b, _, _ in per_threshold])), gains50,
                         {name: float(np.mean([g[name] for _, g, _ in per_threshold])) for name in fixes}, {})
    _counts(report, index, gt, flat, a50)
    return report


def _counts(report: ErrorReport, index: DatasetIndex, gt: GroundTruth, flat: Any, a: Assignment) -> None:
    """Error counts, per-class TP/FP/FN and the images that lose the most, at IoU .50."""
    targeted = np.isin(np.arange(len(gt.labels)), a.target[a.target >= 0])
    missed = ~a.matched & ~gt.difficult & ~targeted
    counts = Counter(a.status.tolist())
    report.counts = {name: int(counts.get(name, 0)) for name in ERROR_TYPES}
    report.counts["missed"] = int(missed.sum())
    fp = ~np.isin(a.status, ["tp", "ignored"])
    for c, name in enumerate(index.classes):
        mine = flat.labels == c
        report.per_class[name] = {"tp": int((mine & (a.status == "tp")).sum()), "fp": int((mine & fp).sum()),
                                  "fn": int((~a.matched & ~gt.difficult & (gt.labels == c)).sum())}
    loss = np.bincount(gt.image[missed], minlength=gt.num_images).astype(float)
    loss += np.bincount(flat.image[fp], weights=flat.scores[fp], minlength=gt.num_images)
    for i in np.argsort(-loss, kind="stable")[:TOP_IMAGES]:
        if loss[i] <= 0:
            break
        errors = Counter(a.status[(flat.image == i) & fp].tolist())
        errors["missed"] = int(missed[gt.image == i].sum())
        report.worst_images.append({"image": index.samples[i].image_id, "loss": float(loss[i]),
                                    "errors": {t: int(errors.get(t, 0)) for t in ERROR_TYPES if errors.get(t)}})


ROWS: tuple[str, ...] = (*ERROR_TYPES, "false positives", "false negatives")


def error_rows(doc: dict[str, Any]) -> list[list[str]]:
    """[type, count, dAP50, dAP] per row (points of AP) of an `ErrorReport.to_json()`: the terminal table, the
    run report's and the chart's numbers."""
    return [[name, str(doc["counts"].get(name, "")), f"{100 * doc['dap50'][name]:.2f}", f"{100 * doc['dap'][name]:.2f}"]
            for name in ROWS]


def format_errors(doc: dict[str, Any]) -> str:
    """The table `eval --errors` prints: dAP (points of AP) per error type at .50 and averaged over .50:.95."""
    width = max(len(n) for n in ROWS)
    lines = [f"errors (TIDE; AP50 {doc['ap50']:.4f}, AP {doc['ap']:.4f}); dAP = points of AP gained if fixed",
             f"  {'type':<{width}}  {'count':>6}  {'dAP50':>7}  {'dAP':>7}"]
    lines += [f"  {n:<{width}}  {c:>6}  {a:>7}  {b:>7}" for n, c, a, b in error_rows(doc)]
    if doc["worst_images"]:
        shown = ", ".join(f"{w['image']} ({w['loss']:.1f})" for w in doc["worst_images"][:5])
        lines.append(f"  images that lose the most (missed + FP scores at .50): {shown}")
    return "\n".join(lines)
