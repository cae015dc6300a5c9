"""`evaluate_detections` and `format_table`: the front door of the evaluation package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boxforge.evaluation import Predictions, PredictionsError, evaluate_detections, format_table
from tests.evaluation._synthetic import random_index
from tests.evaluation.test_voc import CLASSES, HAND_DETS, HAND_INDEX, make_index, make_preds


def perfect(index) -> Predictions:
    preds = Predictions(list(index.classes))
    for s in index.samples:
        preds.add(s.image_id, s.boxes, np.linspace(1.0, 0.5, s.num_objects), s.labels)
    return preds


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_perfect_predictions_score_one_everywhere(fmt):
    index = random_index(np.random.default_rng(5), 40, 4, difficult_rate=0.0, fmt=fmt)
    res = evaluate_detections(index, perfect(index))
    assert res.keys() == {"voc07", "voc12", "coco"}
    for metric in ("voc07", "voc12"):
        assert res[metric]["map"] == pytest.approx(1.0, abs=1e-12)
        assert all(ap == pytest.approx(1.0, abs=1e-12) for ap in res[metric]["per_class"].values())
    assert res["coco"]["AP"] == pytest.approx(1.0) and res["coco"]["AP50"] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for ap in res["coco"]["per_class"].values())


def test_metric_selection_and_table():
    index = make_index(CLASSES, HAND_INDEX)
    preds = make_preds(CLASSES, HAND_DETS)
    res = evaluate_detections(index, preds, metrics=("voc12",))
    assert list(res) == ["voc12"] and res["voc12"]["map"] == pytest.approx(0.875)
    res = evaluate_detections(index, preds)
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "gt", "voc07", "AP", "voc12", "AP", "coco", "AP"]
    assert lines[2].split()[:4] == ["cat", "2", "0.7727", "0.7500"]
    assert lines[4].split()[:4] == ["bird", "0", "-", "-"]
    assert lines[6].split()[:4] == ["mean", "4", "0.8864", "0.8750"]
    assert "AP50" in table and "AR100" in table


def test_refusals_name_what_is_allowed():
    index = make_index(["cat"], {"a": [("cat", 1, 1, 10, 10)]})
    with pytest.raises(PredictionsError, match="unknown metric 'map'; choose from: voc07, voc12, coco"):
        evaluate_detections(index, Predictions(["cat"]), metrics=("map",))
    with pytest.raises(PredictionsError, match=r"classes \['dog'\] but the dataset has \['cat'\]"):
        evaluate_detections(index, Predictions(["dog"]))
    with pytest.raises(PredictionsError, match="not in the dataset: 'zzz'"):
        evaluate_detections(index, make_preds(["cat"], [("zzz", "cat", 0.5, 1, 1, 2, 2)]))


def test_empty_dataset_gives_nan_not_a_crash():
    index = make_index(["cat"], {"a": []})
    res = evaluate_detections(index, Predictions(["cat"]), metrics=("voc07", "voc12"))
    assert math.isnan(res["voc07"]["map"]) and math.isnan(res["voc12"]["per_class"]["cat"])
