"""VOC07 / VOC12 AP: hand-computed cases, and agreement with a literal transcription of py-faster-rcnn's voc_eval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from boxforge.data.index import DatasetIndex, Sample
from boxforge.evaluation import Predictions, evaluate_voc
from boxforge.evaluation.voc import pair_iou
from tests.evaluation._synthetic import random_index, random_predictions


def make_index(classes: list[str], images: dict[str, list[tuple]], fmt: str = "voc") -> DatasetIndex:
    """images: id -> [(class name, x1, y1, x2, y2[, difficult])]; no image file exists."""
    samples = []
    for image_id, objects in images.items():
        samples.append(Sample(image_id, Path(f"/nonexistent/{image_id}.jpg"), 0, 0,
                              boxes=[o[1:5] for o in objects], labels=[classes.index(o[0]) for o in objects],
                              difficult=[bool(o[5]) if len(o) > 5 else False for o in objects]))
    return DatasetIndex(classes, samples, fmt, Path("/nonexistent"))


def make_preds(classes: list[str], dets: list[tuple]) -> Predictions:
    """dets: (image id, class name, score, x1, y1, x2, y2), added one at a time in this order."""
    preds = Predictions(classes)
    for image_id, name, score, *box in dets:
        preds.add(image_id, [box], [score], [classes.index(name)])
    return preds


CLASSES = ["cat", "dog", "bird"]
HAND_INDEX = {
    "a": [("cat", 1, 1, 10, 10), ("cat", 21, 1, 30, 10, 1), ("dog", 1, 1, 10, 10)],
    "b": [("cat", 1, 1, 20, 20), ("dog", 1, 1, 10, 10)],
}
HAND_DETS = [
    # cat, npos 2 (the difficult box in `a` does not count). In score order:
    ("a", "cat", 0.90, 1, 1, 10, 10),    # IoU 1 with the first cat of a: TP
    ("a", "cat", 0.80, 1, 1, 10, 10),    # the same box again: duplicate, FP
    ("a", "cat", 0.70, 21, 1, 30, 10),   # on the difficult box: ignored
    ("a", "cat", 0.65, 21, 1, 30, 10),   # on the difficult box again: still ignored (not a duplicate FP)
    ("b", "cat", 0.60, 40, 40, 50, 50),  # overlaps nothing: FP
    ("b", "cat", 0.50, 1, 1, 20, 20),    # TP
    # tp = 1 1 1 1 1 2, fp = 0 1 1 1 2 2 -> rec = .5 .5 .5 .5 .5 1, prec = 1 .5 .5 .5 1/3 .5
    # voc07: recall points 0, .1, .2, .3, .4, .5 reach max precision 1; .6 .. 1.0 only the last
    #        detection (prec .5): AP = (6 * 1 + 5 * .5) / 11 = 8.5 / 11 = 0.772727...
    # voc12: envelope 1 up to recall .5, then .5 up to 1: AP = .5 * 1 + .5 * .5 = 0.75
    # dog, npos 2, both TPs only thanks to the devkit's +1 pixel convention:
    ("a", "dog", 0.90, 1, 1, 10, 20),    # +1: inter 10*10 = 100, union 10*20 = 200, IoU exactly 0.5 -> TP (>=)
    #                                      without +1: 81 / 171 = 0.474 -> FP; with py-faster-rcnn's `>`: FP
    ("b", "dog", 0.80, 2, 1, 10, 18),    # +1: inter 9*10 = 90, union 9*18 + 100 - 90 = 172, IoU 0.523 -> TP
    #                                      without +1: 72 / (136 + 81 - 72) = 0.4966 -> FP
    # dog AP = 1 for both metrics
    ("b", "bird", 0.99, 1, 1, 5, 5),     # bird has no ground truth: AP nan, left out of the mean
]


def test_hand_computed_voc07_and_voc12():
    index = make_index(CLASSES, HAND_INDEX)
    res = evaluate_voc(index, make_preds(CLASSES, HAND_DETS))
    assert res["voc07"]["per_class"]["cat"] == pytest.approx(8.5 / 11, abs=1e-12)
    assert res["voc12"]["per_class"]["cat"] == pytest.approx(0.75, abs=1e-12)
    assert res["voc07"]["per_class"]["dog"] == pytest.approx(1.0, abs=1e-12)
    assert res["voc12"]["per_class"]["dog"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(res["voc07"]["per_class"]["bird"]) and math.isnan(res["voc12"]["per_class"]["bird"])
    assert res["voc07"]["map"] == pytest.approx((8.5 / 11 + 1) / 2, abs=1e-12)  # 0.886363...
    assert res["voc12"]["map"] == pytest.approx((0.75 + 1) / 2, abs=1e-12)      # 0.875
    assert res["voc07"]["num_gt"] == {"cat": 2, "dog": 2, "bird": 0}


def test_devkit_iou_uses_inclusive_pixels():
    det = np.array([[1, 1, 10, 20], [2, 1, 10, 18], [11, 1, 20, 10], [1, 1, 10, 10]], dtype=np.float64)
    gt = np.array([[1, 1, 10, 10]] * 4, dtype=np.float64)
    # 100/200; 90/172; touching at x=10|11: iw = 10 - 11 + 1 = 0, no overlap; identical
    assert pair_iou(det, gt).tolist() == pytest.approx([0.5, 90 / 172, 0.0, 1.0], abs=1e-15)


def test_threshold_is_inclusive_and_an_option():
    index = make_index(["dog"], {"a": [("dog", 1, 1, 10, 10)]})
    preds = make_preds(["dog"], [("a", "dog", 0.9, 1, 1, 10, 20)])  # IoU exactly 0.5
    assert evaluate_voc(index, preds)["voc12"]["map"] == 1.0
    assert evaluate_voc(index, preds, iou_thresh=0.51)["voc12"]["map"] == 0.0


def test_best_match_may_be_an_already_matched_box():
    # A = [1,1,10,10], B = [4,1,13,10]; det 2 = [2,1,11,10] has IoU 90/110 = .818 with A, 80/120 = .667 with B.
    # The devkit takes the highest IoU (A, already matched by det 1) and calls it a duplicate FP,
    # although B is free and above 0.5 (a COCO-style matcher would make it a TP, AP 1).
    # tp = 1 1, fp = 0 1, rec = .5 .5, prec = 1 .5 -> voc12 = .5 * 1 = 0.5, voc07 = 6 / 11
    index = make_index(["cat"], {"a": [("cat", 1, 1, 10, 10), ("cat", 4, 1, 13, 10)]})
    preds = make_preds(["cat"], [("a", "cat", 0.9, 1, 1, 10, 10), ("a", "cat", 0.8, 2, 1, 11, 10)])
    res = evaluate_voc(index, preds)
    assert res["voc12"]["map"] == pytest.approx(0.5, abs=1e-12)
    assert res["voc07"]["map"] == pytest.approx(6 / 11, abs=1e-12)


def test_equal_scores_keep_index_order_then_detection_order():
    # Index order x, y. Both dets score .5: the FP in x comes before the TP in y, even though y's
    # detections were added first. Then a TP in x at .4.
    # tp = 0 1 2, fp = 1 1 1, rec = 0 .5 1, prec = 0 .5 2/3 -> voc12 = .5 * 2/3 + .5 * 2/3 = 2/3
    # (the other order, TP first, would give .5 * 1 + .5 * 2/3 = 5/6)
    index = make_index(["cat"], {"x": [("cat", 1, 1, 10, 10)], "y": [("cat", 1, 1, 10, 10)]})
    preds = make_preds(["cat"], [("y", "cat", 0.5, 1, 1, 10, 10), ("x", "cat", 0.5, 30, 30, 40, 40),
                                 ("x", "cat", 0.4, 1, 1, 10, 10)])
    assert evaluate_voc(index, preds)["voc12"]["map"] == pytest.approx(2 / 3, abs=1e-12)
    # within one image: the first of two equal-score detections on one box is the TP, the second a duplicate
    preds = make_preds(["cat"], [("x", "cat", 0.5, 1, 1, 10, 10), ("x", "cat", 0.5, 30, 30, 40, 40)])
    assert evaluate_voc(index, preds)["voc12"]["map"] == pytest.approx(0.5, abs=1e-12)


def test_voc07_uses_py_faster_rcnn_recall_points():
    # npos 10, three TPs: recall .1 .2 .3, precision 1. np.arange(0, 1.1, .1)[3] is 0.30000000000000004 > 3/10,
    # so only the points 0, .1, .2 count: AP07 = 3/11 (not 4/11). AP12 = .3.
    index = make_index(["cat"], {f"i{k}": [("cat", 1, 1, 10, 10)] for k in range(10)})
    preds = make_preds(["cat"], [(f"i{k}", "cat", 0.9 - k / 10, 1, 1, 10, 10) for k in range(3)])
    res = evaluate_voc(index, preds)
    assert res["voc07"]["map"] == pytest.approx(3 / 11, abs=1e-12)
    assert res["voc12"]["map"] == pytest.approx(0.3, abs=1e-12)


def test_no_detections_and_first_detection_on_difficult():
    index = make_index(["cat", "dog"], {"a": [("cat", 1, 1, 10, 10), ("dog", 1, 1, 10, 10, 1), ("dog", 30, 30, 40, 40)]})
    res = evaluate_voc(index, Predictions(["cat", "dog"]))
    assert res["voc07"]["per_class"] == {"cat": 0.0, "dog": 0.0}
    # dog: ignored (prec 0/eps = 0 at recall 0), then TP: AP 1
    preds = make_preds(["cat", "dog"], [("a", "dog", 0.9, 1, 1, 10, 10), ("a", "dog", 0.8, 30, 30, 40, 40)])
    res = evaluate_voc(index, preds)
    assert res["voc07"]["per_class"]["dog"] == pytest.approx(1.0) and res["voc12"]["per_class"]["dog"] == 1.0


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="voc07, voc12"):
        evaluate_voc(make_index(["cat"], {"a": []}), Predictions(["cat"]), metrics=("voc2010",))


# --- the reference: py-faster-rcnn's voc_eval.py (Bharath Hariharan), transcribed line by line -----------------
# Deviations, both the devkit's VOCevaldet.m behaviour that boxforge documents:
#   `np.argsort(-confidence, kind="stable")` (py-faster-rcnn: default quicksort, tie order unspecified),
#   `if ovmax >= ovthresh` (py-faster-rcnn: `>`).
# Ground truth comes from `recs` (a dict image -> objects) instead of XML files, detections from a list of
# lines "image_id confidence x1 y1 x2 y2" per class instead of a text file.

def ref_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.
    else:
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def ref_voc_eval(lines, recs, imagenames, classname, ovthresh=0.5, use_07_metric=False):
    class_recs = {}
    npos = 0
    for imagename in imagenames:
        R = [obj for obj in recs[imagename] if obj['name'] == classname]
        bbox = np.array([x['bbox'] for x in R])
        difficult = np.array([x['difficult'] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {'bbox': bbox, 'difficult': difficult, 'det': det}

    splitlines = [x.strip().split(' ') for x in lines]
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines])

    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :] if BB.size != 0 else BB
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R['bbox'].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1., 0.)
            ih = np.maximum(iymax - iymin + 1., 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                   (BBGT[:, 2] - BBGT[:, 0] + 1.) *
                   (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)

        if ovmax >= ovthresh:
            if not R['difficult'][jmax]:
                if not R['det'][jmax]:
                    tp[d] = 1.
                    R['det'][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = ref_voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap


def to_reference(index: DatasetIndex, preds: Predictions):
    """recs and per-class detection lines, lines in index order then detection order (the documented tie order)."""
    recs = {s.image_id: [{"name": index.classes[int(lab)], "bbox": box.tolist(), "difficult": int(dif)}
                         for box, lab, dif in zip(s.boxes.astype(np.float64), s.labels, s.difficult)]
            for s in index.samples}
    lines = {name: [] for name in index.classes}
    for s in index.samples:
        p = preds.images.get(s.image_id)
        if p is None:
            continue
        for box, score, lab in zip(p.boxes, p.scores, p.labels):
            lines[index.classes[int(lab)]].append(f"{s.image_id} {float(score)!r} " + " ".join(repr(float(v)) for v in box))
    return recs, lines


@pytest.mark.parametrize("seed, iou_thresh", [(0, 0.5), (1, 0.5), (2, 0.3), (3, 0.7)])
def test_agrees_with_py_faster_rcnn_reference_on_random_data(seed, iou_thresh):
    rng = np.random.default_rng(seed)
    index = random_index(rng, 100, 3)
    preds = random_predictions(rng, index, per_image=8)
    res = evaluate_voc(index, preds, iou_thresh=iou_thresh)
    recs, lines = to_reference(index, preds)
    imagenames = [s.image_id for s in index.samples]
    for name in index.classes:
        for metric, use07 in (("voc07", True), ("voc12", False)):
            _, _, ap = ref_voc_eval(lines[name], recs, imagenames, name, iou_thresh, use07)
            assert abs(res[metric]["per_class"][name] - ap) <= 1e-9, (name, metric)
    # the random data must exercise every branch, or agreement proves little
    assert 0.05 < res["voc12"]["map"] < 0.95
    assert len({float(s) for p in preds.images.values() for s in p.scores}) < len(preds)  # ties occur
