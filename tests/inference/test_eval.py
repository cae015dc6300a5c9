"""`boxforge eval`: from a predictions file (no images needed), from a checkpoint, from ONNX; default split."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from boxforge.cli import main
from boxforge.data.formats.detect import load_dataset
from boxforge.api import evaluate
from boxforge.engine.validate import validate
from boxforge.evaluation import Predictions, evaluate_detections, load_predictions, save_predictions
from boxforge.inference import load_detector
from boxforge.inference.evaluate import default_split


def _close(a, b) -> bool:
    """Equal numbers, nested; NaN (JSON null) equals NaN."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == pytest.approx(b, abs=1e-12)


def _jitter_predictions(index, seed: int = 0) -> Predictions:
    """Ground truth moved a little, plus false positives: an imperfect detector's output."""
    rng = np.random.default_rng(seed)
    preds = Predictions(list(index.classes))
    for s in index.samples:
        boxes = s.boxes + rng.normal(0, 3, s.boxes.shape)
        fp = rng.uniform(0, 100, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + 20], 1)])
        labels = np.concatenate([s.labels, rng.integers(0, len(index.classes), 2)])
        preds.add(s.image_id, boxes, rng.uniform(0.05, 1, len(boxes)), labels)
    return preds


def _eval_json(args: list[str], tmp_path: Path, capsys) -> tuple[dict, str, str]:
    """(results JSON, stdout, stderr) of `boxforge eval ARGS --json FILE`."""
    out = tmp_path / "results.json"
    assert main(["eval", *args, "--json", str(out)]) == 0
    captured = capsys.readouterr()
    return json.loads(out.read_text()), captured.out, captured.err


def test_eval_predictions_file_equals_evaluate_detections(synth: Path, tmp_path: Path, capsys) -> None:
    index = load_dataset(synth, split="test")
    preds_file = save_predictions(_jitter_predictions(index), index.classes, tmp_path / "preds.json")
    direct = evaluate_detections(index, load_predictions(preds_file, index))
    got, text, _ = _eval_json(["--data", str(synth), "--predictions", str(preds_file)], tmp_path, capsys)
    assert set(got) == {"voc07", "voc12", "coco"}
    for metric in ("voc07", "voc12"):
        assert _close(got[metric]["map"], direct[metric]["map"])
        assert _close(got[metric]["per_class"], direct[metric]["per_class"])
    for key in ("stats", "AP", "AP50", "AP75", "per_class"):
        assert _close(got["coco"][key], direct["coco"][key])
    assert "split test" in text and "voc07 AP" in text and "COCO: AP" in text
    assert f"{direct['voc12']['map']:.4f}" in text


def test_eval_needs_no_image_files_and_honours_metric_and_iou(synth: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "annotations-only"
    shutil.copytree(synth, copy, ignore=shutil.ignore_patterns("*.jpg"))
    index = load_dataset(copy, split="test")
    preds_file = save_predictions(_jitter_predictions(index, 1), index.classes, tmp_path / "preds.json")
    got, _, _ = _eval_json(["--data", str(copy), "--predictions", str(preds_file), "--metric", "voc07",
                         "--iou-thresh", "0.7"], tmp_path, capsys)
    direct = evaluate_detections(index, load_predictions(preds_file, index), ("voc07",), iou_thresh=0.7)
    assert set(got) == {"voc07"} and _close(got["voc07"]["map"], direct["voc07"]["map"])


def test_eval_reads_a_coco_results_list(synth: Path, tmp_path: Path, capsys) -> None:
    coco_root = tmp_path / "coco"
    assert main(["convert", str(synth), str(coco_root), "--to", "coco"]) == 0
    ann = next(coco_root.rglob("*.json"))
    index = load_dataset(ann)
    preds = _jitter_predictions(index, 2)
    ids, cats = index.meta["coco_image_ids"], index.meta["category_ids"]
    results = [{"image_id": ids[image_id], "category_id": cats[int(label)], "score": float(score),
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for image_id, p in preds.images.items() for b, score, label in zip(p.boxes.tolist(), p.scores, p.labels)]
    (tmp_path / "results.coco.json").write_text(json.dumps(results))
    capsys.readouterr()
    args = ["--data", str(ann), "--predictions", str(tmp_path / "results.coco.json"), "--metric", "coco"]
    got, _, _ = _eval_json(args, tmp_path, capsys)
    direct = evaluate_detections(index, preds, ("coco",))
    assert _close(got["coco"]["AP"], direct["coco"]["AP"]) and got["coco"]["AP"] > 0.3


def test_default_split(tmp_path: Path, synth: Path) -> None:
    assert default_split(synth) == "test"
    root = tmp_path / "voc"
    shutil.copytree(synth, root)
    (root / "ImageSets" / "Main" / "test.txt").rename(root / "ImageSets" / "Main" / "val.txt")
    assert default_split(root) == "val"
    for name in ("val", "train", "trainval"):
        (root / "ImageSets" / "Main" / f"{name}.txt").unlink()
    shutil.rmtree(root / "ImageSets")
    assert default_split(root) is None
    assert default_split(root / "classes.txt") is None


def test_eval_weights_matches_the_engine_and_onnx(synth: Path, trained: Path, exported: Path, tmp_path: Path,
                                                  capsys) -> None:
    """eval --weights = what training validates with (engine.validate); ONNX within 0.005."""
    index = load_dataset(synth)  # all 12 images: more detections to compare than the 2 test images
    model, _ = load_detector(trained)
    logged = validate(model, index, device=torch.device("cpu"))  # the numbers a run writes to metrics.jsonl
    direct = {"voc07": {"map": logged["voc07_map"]}, "voc12": {"map": logged["voc12_map"]},
              "coco": {"AP": logged["coco_AP"]}}
    saved = tmp_path / "saved.json"
    got, text, _ = _eval_json(["--data", str(synth), "--split", "test", "--weights", str(trained),
                               "--save-predictions", str(saved)], tmp_path, capsys)
    test_index = load_dataset(synth, split="test")
    on_test = evaluate_detections(test_index, load_predictions(saved, test_index))
    assert _close(got["voc12"]["map"], on_test["voc12"]["map"])
    onnx_preds = tmp_path / "onnx.json"
    torch_report = evaluate(index, weights=trained, device="cpu", progress=False)
    onnx_report = evaluate(index, weights=exported, device="cpu", progress=False, save_predictions_to=onnx_preds)
    for metric in ("voc07", "voc12"):
        assert _close(torch_report.results[metric]["map"], direct[metric]["map"])
        assert abs(onnx_report.results[metric]["map"] - direct[metric]["map"]) < 0.005
    assert abs(onnx_report.results["coco"]["AP"] - direct["coco"]["AP"]) < 0.005
    assert direct["voc07"]["map"] > 0.0  # the comparison means something: the model finds some objects
    assert len(load_predictions(onnx_preds, index)) == torch_report.predictions == onnx_report.predictions
    assert "ssd_tiny, checkpoint" in text and saved.is_file()


def test_eval_weights_skips_unreadable_images(synth: Path, trained: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(synth, copy)
    index = load_dataset(copy, split="test")
    index.samples[0].image_path.write_bytes(b"not a jpeg")
    got, text, err = _eval_json(["--data", str(copy), "--weights", str(trained), "--metric", "voc12"], tmp_path,
                                capsys)
    assert "voc12" in got and "split test" in text
    assert "1 images could not be read" in err and f"skipped: {index.samples[0].image_path}" in err
