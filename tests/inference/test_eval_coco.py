"""`boxforge eval` on COCO files: pycocotools' numbers and its printed block; classes the dataset lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from boxforge.cli import main
from tests.conftest import write_image
from tests.evaluation._coco_files import pycocotools_on_files, write_coco_files


def _eval(args: list[str], tmp_path: Path, capsys) -> tuple[int, dict | None, str, str]:
    out = tmp_path / "out.json"
    code = main(["eval", *args, "--json", str(out)])
    captured = capsys.readouterr()
    return code, json.loads(out.read_text()) if out.exists() else None, captured.out, captured.err


def test_eval_on_a_coco_file_and_results_list_is_pycocotools(tmp_path, capsys):
    gt_path, res_path = write_coco_files(tmp_path, 0, extra_categories=(2, 95))
    reference, printed = pycocotools_on_files(gt_path, res_path)
    code, got, out, err = _eval(["--data", str(gt_path), "--predictions", str(res_path), "--metric", "coco"],
                                tmp_path, capsys)
    assert code == 0
    assert np.allclose(got["coco"]["stats"], reference.stats, rtol=0, atol=1e-9)
    assert printed in out  # the 12 lines, character for character
    extra = [r["category_id"] for r in json.loads(res_path.read_text()) if r["category_id"] in (2, 95)]
    notes = [line for line in err.splitlines() if "does not have" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {len(extra)} detections of classes the dataset")
    assert f"category_id 2 ({extra.count(2)})" in notes[0] and f"category_id 95 ({extra.count(95)})" in notes[0]

    code, got, _, err = _eval(["--data", str(gt_path), "--predictions", str(res_path), "--metric", "coco",
                               "--strict-classes"], tmp_path / "strict", capsys)
    assert code == 2 and got is None
    assert err.count("\n") == 1 and err.startswith("boxforge eval: error: ") and "has category_id" in err


def test_coco2017_folders_with_split_val2017(tmp_path, capsys):
    root = tmp_path / "coco2017"
    gt_path, res_path = write_coco_files(root / "annotations", 1, images=10, name="instances_val2017.json")
    for im in json.loads(gt_path.read_text())["images"][:3]:  # images are not needed, but users have them
        write_image(root / "val2017" / im["file_name"], 32, 24)
    reference, printed = pycocotools_on_files(gt_path, res_path)
    code, got, out, _ = _eval(["--data", str(root), "--split", "val2017", "--predictions", str(res_path)],
                              tmp_path, capsys)
    assert code == 0 and out.startswith(f"{root} split val2017: 10 images")
    assert np.allclose(got["coco"]["stats"], reference.stats, rtol=0, atol=1e-9)
    assert printed in out and "voc07" in got


def test_a_boxforge_predictions_file_with_extra_classes(tmp_path, capsys):
    gt_path, _ = write_coco_files(tmp_path, 2, images=4)
    image = Path(json.loads(gt_path.read_text())["images"][0]["file_name"]).stem
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps({"classes": ["cat1", "zebra"], "predictions": [
        {"image": image, "label": "cat1", "score": 0.9, "box": [1, 2, 30, 40]},
        {"image": image, "label": "zebra", "score": 0.8, "box": [1, 2, 30, 40]},
        {"image": image, "label": "zebra", "score": 0.7, "box": [5, 5, 30, 40]}]}))
    code, got, out, err = _eval(["--data", str(gt_path), "--predictions", str(preds)], tmp_path, capsys)
    assert code == 0 and "; 1 detections from" in out
    assert "note: 2 detections of classes the dataset does not have are ignored (as pycocotools and the VOC devkit " \
        "ignore them): zebra (2); --strict-classes makes this an error\n" in err
    code, _, _, err = _eval(["--data", str(gt_path), "--predictions", str(preds), "--strict-classes"],
                            tmp_path / "strict", capsys)
    assert code == 2 and "unknown class name(s) 'zebra' (predictions[1])" in err


def test_a_model_on_coco_data_is_scored_against_the_file(synth, untrained_ckpt, tmp_path, capsys):
    # the model path: ground truth still the file's own areas and ids, so pycocotools on the file agrees
    from boxforge import convert, load_dataset
    from boxforge.evaluation import load_predictions

    convert(load_dataset(synth), tmp_path / "coco", to="coco")
    gt_path = next((tmp_path / "coco" / "annotations").glob("*.json"))
    doc = json.loads(gt_path.read_text())
    for k, ann in enumerate(doc["annotations"]):  # areas that are not w * h (every object "small"), gapped ids
        ann["area"], ann["id"] = 20.0 + k, 1000 + 3 * k
    gt_path.write_text(json.dumps(doc))
    saved = tmp_path / "predictions.json"
    code, got, out, _ = _eval(["--data", str(gt_path), "--weights", str(untrained_ckpt), "--metric", "coco",
                               "--save-predictions", str(saved)], tmp_path, capsys)
    assert code == 0
    index = load_dataset(gt_path)
    preds = load_predictions(saved, index)
    results = [{"image_id": index.meta["coco_image_ids"][image], "category_id": index.meta["category_ids"][label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
               for image, p in preds.images.items()
               for (x1, y1, x2, y2), score, label in zip(p.boxes.tolist(), p.scores.tolist(), p.labels.tolist())]
    as_results = tmp_path / "results.json"
    as_results.write_text(json.dumps(results))
    reference, printed = pycocotools_on_files(gt_path, as_results)
    assert len(results) > 100 and np.allclose(got["coco"]["stats"], reference.stats, rtol=0, atol=1e-9)
    assert got["coco"]["APm"] == got["coco"]["APl"] == -1  # the file's areas decided, not the boxes
    assert printed in out


def test_a_model_with_classes_the_dataset_lacks(synth, tmp_path, capsys):
    from boxforge.checkpoint import save_checkpoint
    from tests.inference.conftest import checkpoint_dict, untrained

    ckpt = save_checkpoint(checkpoint_dict(untrained(classes=("circle", "square", "zebra"))), tmp_path / "z.pt")
    code, _, _, err = _eval(["--data", str(synth), "--weights", str(ckpt)], tmp_path, capsys)
    assert code == 0 and "note: the model's classes zebra are not in the dataset; their detections are ignored" in err
    code, _, _, err = _eval(["--data", str(synth), "--weights", str(ckpt), "--strict-classes"], tmp_path / "s", capsys)
    assert code == 2 and "the model's classes zebra are not in the dataset" in err and err.count("\n") == 1
