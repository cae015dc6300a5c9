"""Suspected label mistakes, from out-of-fold predictions and the labels: four kinds, one score to order them.

Every image is judged by a model that never saw its labels (audit/oof.py), so where the model and the
labels disagree confidently, the labels are suspect. Per image, with IoU between predictions and labels,
and a prediction's score s read as its sureness r = s / (s + c) (c, the confident score, below):

    wrong_class   a label whose box a confident prediction of another class covers (IoU >= MATCH) with score
                  s_o while its own class scores at most s_same there: score r(s_o) - r(s_same) (> 0);
                  suggested: that class
    bad_box       a label that no confident own-class prediction overlaps tightly (IoU >= TIGHT) but one overlaps
                  partly (LOOSE <= IoU u < TIGHT), one that overlaps no other label more: score r(s) * (1 - u);
                  suggested: that box. The bound is low on purpose: a box drawn a third of its width off the
                  object meets the model's box on the object at IoU 0.1-0.5 (the model's own box is loose too);
                  read as two faults, a spurious label and a missing box, it was a wrong pair of both
    spurious_box  a label no prediction supports: support = the best score x IoU of any prediction on it, below
                  c * MATCH; score (1 - support) * SPURIOUS_WEIGHT (a box the model missed is more
                  often the model's fault than the label's, so these rank below equally strong evidence)
    missing_box   a confident prediction no label explains: none of its class near it (best IoU u < NEAR), not
                  the suggestion of a label's issue above, not a second guess on an object a surer, matched
                  prediction covers: score r(s) * (1 - u); suggested box and class: the prediction's (an
                  object occluded by another of another class is found too)

A label gets at most one issue (wrong_class, else bad_box, else spurious_box), and a prediction backs at most
one. An image's score is its highest issue score. Everything is in the index's own pixel coordinates.

"Confident" follows the fold models, not a constant: c is the score threshold at which their predictions agree
best with the labels (the highest F1 at IoU MATCH, each label matched once, highest score first: the
threshold Ultralytics reports as a model's F1-optimal confidence). A few wrong labels move it little, and
models whose scores run low (a short run, many classes) or high are read on their own scale: with a fixed
0.3, 4.5-minute fold models on microcontroller gave 11 predictions that sure in 149 images and found no
missing box. r puts the prediction kinds on one scale across models (one half at c) beside the spurious
score. c goes to issues.json ("confident"). What each rule bought on bench/audit.py's planted sets is in the
README's audit section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.errors import _iou as pairwise_iou
from boxforge.evaluation.predictions import Predictions

KINDS: tuple[str, ...] = ("missing_box", "spurious_box", "bad_box", "wrong_class")
MATCH = 0.5  # IoU at which a prediction is "on" a label
NEAR = 0.3  # below this IoU a prediction is on nothing of its class (a missing box, unless it is a loose box's fix)
LOOSE = 0.1  # from this IoU an own-class prediction can be the fix of a label no prediction fits tightly
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
                  classes: list[str], confident: float) -> list[Issue]:
    issues: list[Issue] = []
    pb = pred.boxes if pred is not None else np.zeros((0, 4))
    ps = pred.scores if pred is not None else np.zeros(0)
    pl = pred.labels if pred is not None else np.zeros(0, np.int64)
    iou = pairwise_iou(pb, boxes) if len(pb) and len(boxes) else np.zeros((len(pb), len(boxes)))
    fixes: set[int] = set()  # predictions given as a label's fix (its box or class): not also a missing box
    for g in range(len(boxes)):
        if difficult[g]:
            continue
        issue = _label_issue(g, iou, ps, pl, int(labels[g]), confident)
        if issue is not None:
            kind, score, p, cls = issue
            if p is not None:
                fixes.add(p)
            issues.append(Issue(image_id, kind, score, boxes[g].tolist(), pb[p].tolist() if p is not None else None,
                                classes[int(labels[g])], classes[cls] if cls is not None else None, g))
    for p in _unexplained(ps, pl, pb, iou, labels, confident):
        if p in fixes:
            continue
        near = iou[p][labels == pl[p]].max(initial=0.0)
        issues.append(Issue(image_id, "missing_box", float(sureness(ps[p], confident) * (1 - near)), None,
                            pb[p].tolist(), None, classes[int(pl[p])]))
    return _dedupe_missing(issues)


def _unexplained(scores: np.ndarray, classes: np.ndarray, boxes: np.ndarray, iou: np.ndarray,
                 labels: np.ndarray, confident: float) -> list[int]:
    """Confident predictions that no label explains: none of their class near them (IoU < NEAR), not a label of
    another class the model names wrongly (a wrong_class issue), not a second guess on an object another,
    surer prediction already matches."""
    same = classes[:, None] == labels[None, :]
    matched = ((iou >= MATCH) & same).any(axis=1)
    supported = np.array([bool(((iou[:, g] >= MATCH) & (classes == labels[g])).any()) for g in range(len(labels))],
                         dtype=bool)
    between = pairwise_iou(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    found = []
    for p in np.flatnonzero(scores >= confident):
        if (np.where(same[p], iou[p], 0.0).max(initial=0.0) >= NEAR
                or ((iou[p] >= MATCH) & ~same[p] & ~supported).any()
                or ((between[p] >= SAME_OBJECT) & matched & (scores >= scores[p])
                    & (np.arange(len(scores)) != p)).any()):
            continue
        found.append(int(p))
    return found


def _label_issue(g: int, ious: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 label: int, confident: float) -> tuple[str, float, int | None, int | None] | None:
    """(kind, score, the prediction suggested, suggested class) for label g (column g of the image's
    predictions x labels `ious`), or None when the model agrees with it."""
    iou = ious[:, g]
    on = iou >= MATCH
    same = classes == label
    s_same = scores[on & same].max(initial=0.0)
    other = on & ~same & (scores >= confident)
    if other.any():
        o = int(np.flatnonzero(other)[np.argmax(scores[other])])
        if scores[o] > s_same:
            score = sureness(scores[o], confident) - sureness(s_same, confident)
            return "wrong_class", float(score), o, int(classes[o])
    tight = same & (iou >= TIGHT) & (scores >= confident)
    loose = same & (iou >= LOOSE) & (iou < TIGHT) & (scores >= confident) & (ious.argmax(axis=1) == g)
    if loose.any() and not tight.any():
        p = int(np.flatnonzero(loose)[np.argmax((scores * iou)[loose])])
        return "bad_box", float(sureness(scores[p], confident) * (1 - iou[p])), p, label
    support = float((scores * iou).max(initial=0.0))
    if support < confident * MATCH:
        return "spurious_box", float((1 - support) * SPURIOUS_WEIGHT), None, None
    return None


def sureness(score: float, confident: float) -> float:
    """A prediction's score on the fold models' own scale: s / (s + c), one half at the confident score c."""
    return float(score) / (float(score) + confident) if score > 0 else 0.0


def _dedupe_missing(issues: list[Issue]) -> list[Issue]:
    """One missing_box per place: predictions of several classes on one unlabelled object become one issue."""
    missing = sorted((i for i in issues if i.kind == "missing_box"), key=lambda i: -i.score)
    kept: list[Issue] = []
    for issue in missing:
        box = np.array([issue.suggested_box])
        if all(pairwise_iou(box, np.array([k.suggested_box]))[0, 0] < MATCH for k in kept):
            kept.append(issue)
    return [i for i in issues if i.kind != "missing_box"] + kept


def confident_score(index: DatasetIndex, preds: Predictions) -> float:
    """The score threshold with the highest F1 of `preds` against `index`'s labels (module docstring); 1.0
    when no prediction matches a label (a model that finds none of the labelled objects is no evidence)."""
    scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    for s in index.samples:
        p = preds.images.get(s.image_id)
        if p is None or not len(p):
            continue
        order = np.argsort(-p.scores, kind="stable")
        iou = pairwise_iou(p.boxes[order], s.boxes.astype(np.float64)) if s.num_objects else np.zeros((len(p), 0))
        iou = np.where(p.labels[order][:, None] == s.labels[None, :], iou, 0.0)
        free = np.ones(s.num_objects, dtype=bool)
        hit = np.zeros(len(p), dtype=bool)
        for j in range(len(p)):
            candidates = np.where(free, iou[j], 0.0)
            if candidates.size and candidates.max() >= MATCH:
                free[int(np.argmax(candidates))] = False
                hit[j] = True
        scores.append(p.scores[order])
        hits.append(hit)
    if not scores:
        return 1.0
    all_scores, all_hits = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-all_scores, kind="stable")
    tp = np.cumsum(all_hits[order])
    if not tp[-1]:
        return 1.0
    f1 = 2 * tp / (np.arange(1, len(tp) + 1) + index.num_objects)
    return float(all_scores[order][int(np.argmax(f1))])


def rank_issues(index: DatasetIndex, preds: Predictions) -> tuple[list[Issue], list[dict[str, Any]], float]:
    """(issues, highest score first; images with their score, highest first; the confident score c) for
    `preds` (labels indexing index.classes) judged against `index`'s labels."""
    confident = confident_score(index, preds)
    issues: list[Issue] = []
    for s in index.samples:
        issues += _image_issues(s.image_id, s.boxes.astype(np.float64), s.labels, s.difficult,
                                preds.images.get(s.image_id), list(index.classes), confident)
    issues.sort(key=lambda i: (-i.score, i.image, i.kind))
    best: dict[str, float] = {}
    for issue in issues:
        best.setdefault(issue.image, issue.score)
    images = [{"image": image, "score": score} for image, score in best.items()]
    images += [{"image": s.image_id, "score": 0.0} for s in index.samples if s.image_id not in best]
    return issues, images, confident
