"""`eval --errors`: TIDE's breakdown of the lost AP (evaluation/errors.py), on predictions made to have known errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from boxforge.cli import main
from boxforge.data.formats.detect import load_dataset
from boxforge.data.synth import synthesize_detection
from boxforge.evaluation import Predictions, evaluate_coco, save_predictions
from boxforge.evaluation.errors import ERROR_TYPES, ROWS, analyse_errors, coco_ap


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("errors") / "synth"
    synthesize_detection(root, images=30, classes=3, seed=1, image_size=(160, 120))
    return load_dataset(root)


def _preds(index, make) -> Predictions:
    preds = Predictions(list(index.classes))
    rng = np.random.default_rng(0)
    for s in index.samples:
        boxes, labels = make(s, rng)
        if len(boxes):
            preds.add(s.image_id, boxes, rng.uniform(0.3, 1.0, len(boxes)), labels)
    return preds


def _largest(report, exclude=("false positives", "false negatives")) -> str:
    return max((t for t in report.dap50 if t not in exclude), key=lambda t: report.dap50[t])


def test_ground_truth_as_predictions_has_ap_1_and_no_error(index) -> None:
    report = analyse_errors(index, _preds(index, lambda s, rng: (s.boxes, s.labels)))
    assert report.ap50 == 1.0 and report.ap == 1.0
    assert all(v == 0.0 for v in [*report.dap50.values(), *report.dap.values()])
    assert all(report.counts[t] == 0 for t in ERROR_TYPES) and not report.worst_images


def _shift(s, rng):
    """Each box moved by half its width: IoU with its truth falls to about 1/3, into [0.1, 0.5)."""
    width = (s.boxes[:, 2] - s.boxes[:, 0])[:, None]
    return s.boxes + np.array([[0.5, 0.0, 0.5, 0.0]]) * width, s.labels


@pytest.mark.parametrize("kind, make, expected", [
    ("shifted", _shift, "localisation"),
    ("dropped", lambda s, rng: (s.boxes[::2], s.labels[::2]), "missed"),
    ("relabelled", lambda s, rng: (s.boxes, (s.labels + 1) % 3), "classification"),
    ("background", lambda s, rng: (np.concatenate([s.boxes, np.tile([[0.0, 0.0, 3.0, 3.0]], (3, 1))]),
                                   np.concatenate([s.labels, [0, 1, 2]])), "background"),
])
def test_planted_errors_are_named_by_the_largest_dap(index, kind: str, make, expected: str) -> None:
    report = analyse_errors(index, _preds(index, make))
    assert _largest(report) == expected, (kind, report.dap50)
    assert report.counts[expected] > 0 and report.dap50[expected] > 0.1
    if kind != "background":  # the boxes' own errors; the tiny corner boxes may touch a real one
        others = [t for t in ERROR_TYPES if t not in (expected, "missed", "classification", "localisation")]
        assert all(report.dap50[t] == 0 for t in others), report.dap50


def test_duplicates_above_the_true_positives_cost_ap_and_fixing_them_gives_it_back(index) -> None:
    preds = Predictions(list(index.classes))
    rng = np.random.default_rng(0)
    for s in index.samples:  # each box twice: the copy nudged by a pixel, scored just below its original, so
        first = rng.uniform(0.2, 1.0, len(s.boxes))  # above the true positives of other images
        preds.add(s.image_id, np.concatenate([s.boxes, s.boxes + 1.0]), np.concatenate([first, first - 0.01]),
                  np.concatenate([s.labels] * 2))
    report = analyse_errors(index, preds)
    assert report.counts["duplicate"] == index.num_objects
    assert report.ap50 < 1.0 and report.ap50 + report.dap50["duplicate"] == pytest.approx(1.0)


def test_ap_agrees_with_pycocotools(index) -> None:
    """Our AP (101 points, greedy matching, COCO's IoU) is COCO's AP50 and AP on ordinary detections."""
    def jitter(s, rng):
        boxes = s.boxes + rng.normal(0, 4, s.boxes.shape)
        extra = rng.uniform(0, 100, (2, 2))
        fp = np.concatenate([extra, extra + 30], axis=1)
        return np.concatenate([boxes, fp]), np.concatenate([s.labels, rng.integers(0, 3, 2)])

    preds = _preds(index, jitter)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = evaluate_coco(index, preds, backend="pycocotools")
    report = analyse_errors(index, preds)
    assert report.ap50 == pytest.approx(coco["AP50"], abs=1e-9)
    assert report.ap == pytest.approx(coco["AP"], abs=1e-9)


def test_coco_ap_edge_cases() -> None:
    assert np.isnan(coco_ap(np.zeros(0), np.zeros(0), 0))
    assert coco_ap(np.zeros(0), np.zeros(0), 3) == 0.0
    assert coco_ap(np.array([0.9, 0.8]), np.array([1.0, 1.0]), 2) == 1.0


def test_eval_errors_prints_writes_and_draws_the_breakdown(index, tmp_path: Path, capsys) -> None:
    test = load_dataset(index.root, split="test")  # what `eval --data ROOT` scores by the split policy
    preds = _preds(test, _shift)
    path = save_predictions(preds, test.classes, tmp_path / "p.json")
    out = tmp_path / "e.json"
    assert main(["eval", "--data", str(index.root), "--predictions", str(path), "--errors", "--json", str(out),
                 "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "errors (TIDE" in text and all(row in text for row in ROWS)
    doc = json.loads(out.read_text())["errors"]
    assert set(doc["dap50"]) == set(ROWS) and doc["counts"]["localisation"] > 0
    assert doc["thresholds"]["background"] == 0.1 and len(doc["worst_images"]) > 0
    assert (tmp_path / "plots" / "errors.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "errors.csv").read_text().startswith("type,count,dAP50_points,dAP_points")
