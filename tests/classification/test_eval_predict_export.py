"""eval --task classify, predict (top-k) and export (ONNX, softmax inside) on a trained classifier."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import onnx
import pytest
import torch

from boxforge import api
from boxforge.cli import main
from boxforge.engine.fit import TrainResult
from boxforge.errors import BoxforgeError
from boxforge.inference.load import load_model
from boxforge.progress import ENV
from tests.terminal import Terminal


def test_eval_matches_training_validation_and_prints_reference_lines(short_run: TrainResult, small_set: Path,
                                                                     tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--data", str(small_set), "--weights", str(short_run.best), "--batch-size", "4",
            "--device", "cpu", "--json", str(out)]
    assert main(args) == 0  # task inferred from the checkpoint; split: val
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("Test: [")]
    assert lines and lines[-1].startswith("Test: [3/3] eta: 0:00:00 loss ")
    assert " acc1 " in lines[-1] and " acc5 100.0 (100.0) time " in lines[-1] and " max mem " in lines[-1]
    doc = json.loads(out.read_text())
    assert text.count(f" * Acc@1 {doc['acc1']:.3f} Acc@5 100.000") == 1
    assert doc["images"] == 12 and doc["split"] == "val"
    # best.pt holds the EMA weights validation scored: eval reproduces that score (one image = 8.3 points)
    assert abs(doc["acc1"] - short_run.best_metric) < 1e-6
    matrix = doc["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == 12 and [sum(row) for row in matrix] == [4, 4, 4]
    assert sum(matrix[i][i] for i in range(3)) == round(doc["acc1"] * 12 / 100)
    assert set(doc["per_class"]) == {"circle", "square", "triangle"}
    assert all(v["images"] == 4 for v in doc["per_class"].values())


def test_eval_on_a_terminal_shows_a_bar_over_the_batches(short_run: TrainResult, small_set: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the `Test: [...]` lines: a tqdm bar with the running loss and accuracies, then the closing line."""
    monkeypatch.delenv(ENV, raising=False)
    term = Terminal(columns=120)
    monkeypatch.setattr(sys, "stdout", term.open_writer())
    code = main(["eval", "--data", str(small_set), "--weights", str(short_run.best), "--batch-size", "4",
                 "--device", "cpu"])
    monkeypatch.undo()
    shown = term.close()
    assert code == 0
    assert re.search(r"\r(?!\n)", shown) and "Test: 100%|" in shown and "3/3" in shown, repr(shown)
    assert "batch/s" in shown and "acc1=" in shown and "Test: [" not in shown, repr(shown)
    assert " * Acc@1 " in shown


def test_predict_gives_top_k_probabilities(short_run: TrainResult, small_set: Path, tmp_path: Path) -> None:
    report = api.predict(short_run.best, [small_set / "val"], out=tmp_path / "pred", top_k=2, device="cpu")
    assert report.images == 12 and sum(report.counts.values()) == 12
    doc = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert doc["task"] == "classify" and doc["top_k"] == 2 and len(doc["predictions"]) == 12
    for entry in doc["predictions"]:
        scores = [t["score"] for t in entry["top"]]
        assert len(scores) == 2 and scores[0] >= scores[1] and sum(scores) <= 1.0 + 1e-5
        assert {t["label"] for t in entry["top"]} <= {"circle", "square", "triangle"}


def test_export_onnx_with_softmax_matches_checkpoint(short_run: TrainResult, small_set: Path,
                                                     tmp_path: Path) -> None:
    onnx_path = tmp_path / "cls.onnx"
    images = sorted((small_set / "val" / "square").glob("*.jpg"))[:2]
    report = api.export_onnx(short_run.best, onnx_path, dynamic_batch=True, check_images=images)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props["task"] == "classify" and json.loads(props["class_names"]) == ["circle", "square", "triangle"]
    assert props["img_size"] == "32"
    batch = torch.rand(3, 3, 32, 32)
    probs = load_model(onnx_path).backend.run(batch)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)  # softmax is in the graph
    torch.testing.assert_close(probs, load_model(short_run.best).backend.run(batch), atol=1e-4, rtol=0)
    from_onnx = api.evaluate(small_set, weights=onnx_path, device="cpu", progress=False)
    assert from_onnx.meter.acc1 == pytest.approx(short_run.best_metric)
    with pytest.raises(BoxforgeError, match="an exported classify model, not a detector"):
        load_model(onnx_path, task="detect")


def test_detection_options_do_not_apply_and_wrong_data_is_one_error(short_run: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(BoxforgeError, match="eval --task classify needs --weights"):
        api.evaluate(tmp_path, predictions=tmp_path / "p.json", task="classify")
    voc = tmp_path / "voc"
    api.synth(voc, images=4, classes=1)
    with pytest.raises(BoxforgeError, match="a detect dataset; eval --task classify needs class folders"):
        api.evaluate(voc, weights=short_run.best, device="cpu", progress=False)
