"""Suspected label mistakes, from out-of-fold predictions and the labels: four kinds, one score to order them.

Every image is judged by a model that never saw its labels (audit/oof.py), so where the model and the
labels disagree confidently, the labels are suspect. Per image, with IoU between predictions and labels:

    missing_box   a prediction of score s >= CONFIDENT that no label explains: none of its class near it (best
                  IoU u < NEAR), not on a label of another class the model has no own-class support for (that
                  is a wrong_class), not a second guess on an object a surer, matched prediction covers:
                  score s * (1 - u); suggested box and class: the prediction's (an object occluded by
                  another of another class is found too)
    wrong_class   a label whose box a prediction of another class covers (IoU >= MATCH) with score s_o while
                  its own class scores at most s_same there: score s_o - s_same (> 0); suggested: that class
    bad_box       a label whose own-class prediction (score s >= CONFIDENT) overlaps it only partly
                  (NEAR <= IoU u < TIGHT) and none overlaps tightly: score s * (1 - u); suggested: that box
    spurious_box  a label no prediction supports: support = the best score x IoU of any prediction on it;
                  score (1 - support) * SPURIOUS_WEIGHT (a box the model missed is more often the model's
                  fault than the label's, so these rank below equally strong evidence of the other kinds)

A label gets at most one issue (wrong_class, else bad_box, else spurious_box). An image's score is its
highest issue score. Everything is in the index's own pixel coordinates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.errors import _iou as pairwise_iou
from boxforge.evaluation.predictions import Predictions

KINDS: tuple[str, ...] = ("missing_box", "spurious_box", "bad_box", "wrong_class")
CONFIDENT = 0.3  # a prediction this sure is evidence
MATCH = 0.5  # IoU at which a prediction is "on" a label
NEAR = 0.3  # below this IoU a prediction is on nothing (missing) / a loose box starts
TIGHT = 0.7  # at or above this IoU a box agrees with the label
SAME_OBJECT = 0.8  # two predictions this close are two guesses at one object (occluded objects overlap less)
SPURIOUS_WEIGHT = 0.7


@dataclass
class Issue:
    """One suspected mistake. Boxes are [x1, y1, x2, y2] in the image's pixels (None where there is none);
    classes are names. `label` is the label's position in its image (None for a missing box)."""

    image: str
    kind: str
    score: float
    label_box: list[float] | None
    suggested_box: list[float] | None
    label_class: str | None
    suggested_class: str | None
    label: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _image_issues(image_id: str, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, pred: Any,
                  classes: list[str]) -> list[Issue]:
    issues: list[Issue] = []
    pb = pred.boxes if pred is not None else np.zeros((0, 4))
    ps = pred.scores if pred is not None else np.zeros(0)
    pl = pred.labels if pred is not None else np.zeros(0, np.int64)
    iou = pairwise_iou(pb, boxes) if len(pb) and len(boxes) else np.zeros((len(pb), len(boxes)))
    for p in _unexplained(ps, pl, pb, iou, labels):
        near = iou[p][labels == pl[p]].max(initial=0.0)
        issues.append(Issue(image_id, "missing_box", float(ps[p] * (1 - near)), None, pb[p].tolist(), None,
                            classes[int(pl[p])]))
    for g in range(len(boxes)):
        if difficult[g]:
            continue
        issue = _label_issue(g, iou[:, g], ps, pl, pb, int(labels[g]))
        if issue is not None:
            kind, score, box, cls = issue
            issues.append(Issue(image_id, kind, score, boxes[g].tolist(), box, classes[int(labels[g])],
                                classes[cls] if cls is not None else None, g))
    return _dedupe_missing(issues)


def _unexplained(scores: np.ndarray, classes: np.ndarray, boxes: np.ndarray, iou: np.ndarray,
                 labels: np.ndarray) -> list[int]:
    """Confident predictions that no label explains: none of their class near them (IoU < NEAR), not a label of
    another class the model names wrongly (a wrong_class issue), not a second guess on an object another,
    surer prediction already matches."""
    same = classes[:, None] == labels[None, :]
    matched = ((iou >= MATCH) & same).any(axis=1)
    supported = np.array([bool(((iou[:, g] >= MATCH) & (classes == labels[g])).any()) for g in range(len(labels))],
                         dtype=bool)
    between = pairwise_iou(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    found = []
    for p in np.flatnonzero(scores >= CONFIDENT):
        if (np.where(same[p], iou[p], 0.0).max(initial=0.0) >= NEAR
                or ((iou[p] >= MATCH) & ~same[p] & ~supported).any()
                or ((between[p] >= SAME_OBJECT) & matched & (scores >= scores[p])
                    & (np.arange(len(scores)) != p)).any()):
            continue
        found.append(int(p))
    return found


def _label_issue(g: int, iou: np.ndarray, scores: np.ndarray, classes: np.ndarray, boxes: np.ndarray,
                 label: int) -> tuple[str, float, list[float] | None, int | None] | None:
    """(kind, score, suggested box, suggested class) for label g, or None when the model agrees with it."""
    on = iou >= MATCH
    same = classes == label
    s_same = scores[on & same].max(initial=0.0)
    other = on & ~same & (scores >= CONFIDENT)
    if other.any():
        o = int(np.flatnonzero(other)[np.argmax(scores[other])])
        if scores[o] > s_same:
            return "wrong_class", float(scores[o] - s_same), boxes[o].tolist(), int(classes[o])
    tight = same & (iou >= TIGHT) & (scores >= CONFIDENT)
    loose = same & (iou >= NEAR) & (iou < TIGHT) & (scores >= CONFIDENT)
    if loose.any() and not tight.any():
        p = int(np.flatnonzero(loose)[np.argmax(scores[loose])])
        return "bad_box", float(scores[p] * (1 - iou[p])), boxes[p].tolist(), label
    support = float((scores * iou).max(initial=0.0))
    if support < CONFIDENT * MATCH:
        return "spurious_box", float((1 - support) * SPURIOUS_WEIGHT), None, None
    return None


def _dedupe_missing(issues: list[Issue]) -> list[Issue]:
    """One missing_box per place: predictions of several classes on one unlabelled object become one issue."""
    missing = sorted((i for i in issues if i.kind == "missing_box"), key=lambda i: -i.score)
    kept: list[Issue] = []
    for issue in missing:
        box = np.array([issue.suggested_box])
        if all(pairwise_iou(box, np.array([k.suggested_box]))[0, 0] < MATCH for k in kept):
            kept.append(issue)
    return [i for i in issues if i.kind != "missing_box"] + kept


def rank_issues(index: DatasetIndex, preds: Predictions) -> tuple[list[Issue], list[dict[str, Any]]]:
    """(issues, highest score first; images with their score, highest first) for `preds` (labels indexing
    index.classes) judged against `index`'s labels."""
    issues: list[Issue] = []
    for s in index.samples:
        issues += _image_issues(s.image_id, s.boxes.astype(np.float64), s.labels, s.difficult,
                                preds.images.get(s.image_id), list(index.classes))
    issues.sort(key=lambda i: (-i.score, i.image, i.kind))
    best: dict[str, float] = {}
    for issue in issues:
        best.setdefault(issue.image, issue.score)
    images = [{"image": image, "score": score} for image, score in best.items()]
    images += [{"image": s.image_id, "score": 0.0} for s in index.samples if s.image_id not in best]
    return issues, images
