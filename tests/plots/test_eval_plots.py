"""`boxforge eval --plots DIR`: per-class precision/recall curves (VOC, COCO at IoU .50 and .50:.95) and the
results table as a PNG, each checked against the numbers the evaluation itself reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import boxforge
from boxforge.cli import main
from boxforge.evaluation import Predictions, evaluate_detections
from boxforge.evaluation.voc import voc_ap
from boxforge.plots.common import read_csv
from boxforge.plots.evaluation import coco_curves, plot_evaluation, voc_curves
from tests.conftest import make_voc
from tests.plots._png import assert_png
from tests.plots.conftest import Run


def per_class(columns: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    rows = columns["class"] == name
    return {k: v[rows] for k, v in columns.items() if k != "class"}


def test_eval_plots_of_a_trained_checkpoint(trained_run: Run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, results_file, preds_file = tmp_path / "plots", tmp_path / "eval.json", tmp_path / "preds.json"
    assert main(["eval", "--data", str(trained_run.data), "--split", "test", "--weights",
                 str(trained_run.dir / "best.pt"), "--plots", str(out), "--json", str(results_file),
                 "--save-predictions", str(preds_file)]) == 0
    printed = capsys.readouterr().out
    for name in ("pr_voc.png", "pr_voc.csv", "pr_coco.png", "pr_coco.csv", "table.png"):
        assert f"plot written to {out / name}" in printed
    assert_png(out / "pr_voc.png")
    assert_png(out / "pr_coco.png")
    assert_png(out / "table.png", min_size=(300, 100))
    results = json.loads(results_file.read_text())

    # VOC: the devkit's AP computed back from the plotted curve is the AP eval reports, class by class
    voc = read_csv(out / "pr_voc.csv", text=("class",))
    for name, ap in results["voc12"]["per_class"].items():
        curve = per_class(voc, name)
        assert np.all(np.diff(curve["recall"]) >= 0), "recall must grow along the detections"
        assert voc_ap(curve["recall"], curve["precision"], use_07_metric=False) == pytest.approx(ap, abs=1e-12)
        assert voc_ap(curve["recall"], curve["precision"], use_07_metric=True) == pytest.approx(
            results["voc07"]["per_class"][name], abs=1e-12)

    # COCO: the mean of the .50:.95 curve is the class's COCO AP; the mean over classes at .50 is AP50
    coco = read_csv(out / "pr_coco.csv", text=("class",))
    at50 = []
    for name, ap in results["coco"]["per_class"].items():
        curve = per_class(coco, name)
        assert len(curve["recall"]) == 101 and curve["recall"][0] == 0.0 and curve["recall"][-1] == 1.0
        assert curve["precision_50_95"].mean() == pytest.approx(ap, abs=1e-9)
        at50.append(curve["precision_50"].mean())
    assert np.mean(at50) == pytest.approx(results["coco"]["AP50"], abs=1e-9)

    # the same plots from the saved predictions file, without the model: the same curves
    again = tmp_path / "again"
    assert main(["eval", "--data", str(trained_run.data), "--split", "test", "--predictions", str(preds_file),
                 "--plots", str(again), "--metric", "voc12"]) == 0
    assert not (again / "pr_coco.png").exists(), "COCO curves drawn although only voc12 was asked"
    assert_png(again / "table.png", min_size=(300, 100))
    redo = read_csv(again / "pr_voc.csv", text=("class",))
    assert np.allclose(redo["precision"], voc["precision"]) and np.allclose(redo["recall"], voc["recall"])


def test_perfect_detections_give_perfect_curves(tiny_voc: Path, tmp_path: Path) -> None:
    """Ground truth as detections: precision 1 at every recall (difficult boxes ignored, not false positives)."""
    index = boxforge.load_dataset(tiny_voc)
    preds = Predictions(list(index.classes))
    for sample in index.samples:
        preds.add(sample.image_id, sample.boxes, np.ones(sample.num_objects), sample.labels)
    curves = voc_curves(index, preds)
    for name, (rec, prec, npos) in curves.items():
        assert npos > 0 and rec[-1] == 1.0, name
        assert voc_ap(rec, prec, use_07_metric=False) == 1.0, name
    rec, prec, _ = curves["cat"]  # no difficult cat: every detection is a true positive
    assert np.all(prec == 1.0) and np.allclose(rec, np.arange(1, len(rec) + 1) / len(rec))
    recall, coco = coco_curves(index, preds)
    for name, (at50, mean) in coco.items():
        assert np.all(at50 == 1.0) and np.all(mean == 1.0), name
    results = evaluate_detections(index, preds)
    written = plot_evaluation(index, preds, results, tmp_path / "perfect")
    assert [p.name for p in written] == ["pr_voc.png", "pr_voc.csv", "pr_coco.png", "pr_coco.csv", "table.png"]
    for path in written:
        if path.suffix == ".png":
            assert_png(path, min_size=(300, 100))


def test_a_class_without_ground_truth_is_left_out_of_the_curves(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"c": [("cat", 20.5, 10, 40.25, 20)]})
    (root / "classes.txt").write_text("cat\ndog\n")  # dog is a class, with no box anywhere
    index = boxforge.load_dataset(root)
    assert index.classes == ["cat", "dog"]
    preds = Predictions(list(index.classes))
    preds.add("c", np.array([[20.5, 10, 40.25, 20], [0, 0, 10, 10]]), np.array([0.9, 0.8]), np.array([0, 1]))
    voc = voc_curves(index, preds)
    assert voc["dog"][2] == 0 and voc["cat"][2] == 1
    _, coco = coco_curves(index, preds)
    assert np.isnan(coco["dog"][0]).all() and np.isnan(coco["dog"][1]).all()
    assert np.all(coco["cat"][0] == 1.0)
