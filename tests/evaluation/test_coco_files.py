"""COCO numbers equal pycocotools run on the user's own files (COCO- and Roboflow-style), to 1e-9.

The reference is always `COCO(instances.json)` + `loadRes(results.json)` on the files as written,
never a file made from boxforge's index.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxforge import load_dataset
from boxforge.errors import DatasetError
from boxforge.evaluation import Predictions, PredictionsError, evaluate_coco, load_predictions, save_predictions
from boxforge.evaluation.coco import STAT_NAMES, summary_lines
from boxforge.evaluation.coco_truth import from_file
from tests.evaluation._coco_files import pycocotools_on_files, write_coco_files

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "format-samples" / "coco_dataset"


def _per_class_reference(evaluator: COCOeval) -> dict[int, float]:
    precision = evaluator.eval["precision"]
    out = {}
    for k, cid in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        out[cid] = float(np.mean(values[values > -1])) if (values > -1).any() else float("nan")
    return out


@pytest.mark.parametrize("seed, roboflow", [(0, False), (1, False), (2, True)])
def test_all_twelve_stats_and_the_printed_block_equal_pycocotools(tmp_path, seed, roboflow):
    gt_path, res_path = write_coco_files(tmp_path, seed, roboflow=roboflow)
    doc = json.loads(gt_path.read_text())
    areas = [(a["area"], a["bbox"][2] * a["bbox"][3]) for a in doc["annotations"]]
    assert sum(abs(a - b) > 1 for a, b in areas) > len(areas) // 2  # segmentation areas, not w * h
    assert any(a["iscrowd"] for a in doc["annotations"])
    reference, printed = pycocotools_on_files(gt_path, res_path)
    assert all(v > 0 for v in reference.stats)  # every area range has objects and detections

    index = load_dataset(gt_path)
    assert from_file(index)
    ours = evaluate_coco(index, load_predictions(res_path, index), backend="pycocotools")
    assert np.allclose(ours["stats"], reference.stats, rtol=0, atol=1e-9)
    assert [ours[k] for k in STAT_NAMES] == ours["stats"]
    assert "\n".join(summary_lines(ours["stats"])) + "\n" == printed
    by_id = _per_class_reference(reference)
    for name, cid in zip(index.classes, index.meta["category_ids"]):
        assert ours["per_class"][name] == pytest.approx(by_id[cid], abs=1e-12, nan_ok=True)
    assert any("id 0" in n for n in ours["notes"]) == roboflow  # Roboflow's annotation id 0 is said


def test_detections_of_categories_the_file_lacks_are_ignored_as_pycocotools_does(tmp_path):
    gt_path, res_path = write_coco_files(tmp_path, 3, extra_categories=(2, 95))
    results = json.loads(res_path.read_text())
    extra = Counter(r["category_id"] for r in results if r["category_id"] in (2, 95))
    assert extra[2] > 0 and extra[95] > 0
    reference, _ = pycocotools_on_files(gt_path, res_path)  # pycocotools itself, on the file with them
    index = load_dataset(gt_path)
    preds = load_predictions(res_path, index)
    assert preds.ignored == {"category_id 2": extra[2], "category_id 95": extra[95]}
    assert len(preds) == len(results) - sum(extra.values())
    assert np.allclose(evaluate_coco(index, preds)["stats"], reference.stats, rtol=0, atol=1e-9)
    with pytest.raises(PredictionsError, match=r"has category_id (2|95); the dataset's ids are: 1, 3, 7"):
        load_predictions(res_path, index, strict_classes=True)


def _xywh_results(preds: Predictions, index) -> list[dict]:
    """What a user would hand pycocotools for these detections: w = x2 - x1, the file's ids."""
    cat_ids, image_ids = index.meta["category_ids"], index.meta["coco_image_ids"]
    return [{"image_id": image_ids[image], "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": score}
            for image, p in preds.images.items()
            for (x1, y1, x2, y2), score, label in zip(p.boxes.tolist(), p.scores.tolist(), p.labels.tolist())]


def test_a_boxforge_predictions_file_is_scored_against_the_file_itself(tmp_path):
    # the model path: detections not from a results list, ground truth still the file's (areas, crowd, ids)
    gt_path, res_path = write_coco_files(tmp_path, 4)
    index = load_dataset(gt_path)
    saved = save_predictions(load_predictions(res_path, index), index.classes, tmp_path / "predictions.json")
    preds = load_predictions(saved, index)
    assert preds.coco_results is None
    ours = evaluate_coco(index, preds)
    as_results = tmp_path / "as_results.json"
    as_results.write_text(json.dumps(_xywh_results(preds, index)))
    reference, _ = pycocotools_on_files(gt_path, as_results)
    assert np.allclose(ours["stats"], reference.stats, rtol=0, atol=1e-9)


def test_a_subset_of_the_images_equals_pycocotools_with_those_img_ids(tmp_path):
    gt_path, res_path = write_coco_files(tmp_path, 5)
    index = load_dataset(gt_path)
    index.samples = index.samples[::2]
    kept = {s.image_id for s in index.samples}
    preds = load_predictions(res_path, load_dataset(gt_path))
    subset = Predictions(list(index.classes))
    for image, p in preds.images.items():
        if image in kept:
            subset.add(image, p.boxes, p.scores, p.labels)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(_xywh_results(subset, index)), "bbox")
        evaluator.params.imgIds = sorted(index.meta["coco_image_ids"][i] for i in kept)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert np.allclose(evaluate_coco(index, subset)["stats"], evaluator.stats, rtol=0, atol=1e-9)


def test_the_format_sample_with_crowd_rle_and_gapped_ids(tmp_path):
    gt_path = SAMPLES / "coco" / "annotations" / "instances_val.json"
    doc = json.loads(gt_path.read_text())
    assert any(a["iscrowd"] and isinstance(a["segmentation"], dict) for a in doc["annotations"])
    assert [c["id"] for c in doc["categories"]] == [1, 2, 4]
    image = doc["images"][0]["id"]
    results = [{"image_id": image, "category_id": a["category_id"], "score": 0.9 - 0.1 * k,
                "bbox": [v + 0.25 for v in a["bbox"][:2]] + a["bbox"][2:]} for k, a in enumerate(doc["annotations"])]
    results.append({"image_id": image, "category_id": 4, "score": 0.33, "bbox": [1.5, 2.5, 2.0, 3.0]})
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    reference, _ = pycocotools_on_files(gt_path, res_path)
    index = load_dataset(gt_path)
    assert np.allclose(evaluate_coco(index, load_predictions(res_path, index))["stats"], reference.stats,
                       rtol=0, atol=1e-9)


def test_a_file_changed_since_it_was_read_is_an_error(tmp_path):
    gt_path, res_path = write_coco_files(tmp_path, 6, images=6)
    index = load_dataset(gt_path)
    preds = load_predictions(res_path, index)
    doc = json.loads(gt_path.read_text())
    doc["annotations"][0]["bbox"][0] += 1.0
    gt_path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"instances\.json: does not match the dataset read from it \(the boxes"):
        evaluate_coco(index, preds)


def test_missing_area_and_iscrowd_are_filled_with_a_note(tmp_path):
    gt_path, res_path = write_coco_files(tmp_path, 7, images=8)
    doc = json.loads(gt_path.read_text())
    for ann in doc["annotations"]:
        del ann["area"], ann["iscrowd"]
    gt_path.write_text(json.dumps(doc))
    index = load_dataset(gt_path)
    ours = evaluate_coco(index, load_predictions(res_path, index))
    for ann in doc["annotations"]:  # what the notes say was used
        ann["area"], ann["iscrowd"] = ann["bbox"][2] * ann["bbox"][3], 0
    filled = tmp_path / "filled.json"
    filled.write_text(json.dumps(doc))
    reference, _ = pycocotools_on_files(filled, res_path)
    assert np.allclose(ours["stats"], reference.stats, rtol=0, atol=1e-9)
    n = len(doc["annotations"])
    assert [note.split(": ", 1)[1].split(" (")[0].split(";")[0] for note in ours["notes"]] == [
        f"{n} annotations have no 'area'", f"{n} annotations have no 'iscrowd'"]
