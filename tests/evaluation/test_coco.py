"""COCO numbers: our in-memory wrapper against pycocotools run directly on JSON files, crowd and difficult boxes."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxforge import load_dataset
from boxforge.evaluation import Predictions, evaluate_coco, load_predictions
from boxforge.evaluation.coco import STAT_NAMES, index_to_coco
from tests.evaluation._synthetic import random_boxes
from tests.evaluation.test_voc import make_index, make_preds

CATEGORY_IDS = [3, 7, 12]  # gapped, like COCO's


def write_random_coco(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A GT instances file (shuffled image ids, gapped category ids, some crowd boxes) and a results list."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    image_ids = rng.permutation(np.arange(1000, 1060)).tolist()
    for image_id in image_ids:
        images.append({"id": image_id, "file_name": f"train/{image_id}.jpg", "width": 320, "height": 240})
        gt = random_boxes(rng, int(rng.integers(0, 7)), 320, 240)
        gt_cats = rng.choice(CATEGORY_IDS, len(gt))
        for box, cid in zip(gt.tolist(), gt_cats.tolist()):
            x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cid,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1),
                                "segmentation": []})
        dets = random_boxes(rng, 15, 320, 240)
        det_cats = rng.choice(CATEGORY_IDS, 15)
        if len(gt):
            hits = rng.integers(0, len(gt), 8)
            dets[:8] = gt[hits] + rng.normal(0, 4, (8, 4))
            det_cats[:8] = gt_cats[hits]
        for box, cid in zip(dets.tolist(), det_cats.tolist()):
            results.append({"image_id": image_id, "category_id": cid,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": round(float(rng.random()), 3)})
    categories = [{"id": cid, "name": f"c{cid}"} for cid in CATEGORY_IDS]
    gt_path, res_path = tmp_path / "annotations" / "instances_val.json", tmp_path / "results.json"
    gt_path.parent.mkdir()
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def pycocotools_directly(gt_path: Path, res_path: Path) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1])
def test_stats_equal_pycocotools_on_json_files(tmp_path, seed, capsys):
    gt_path, res_path = write_random_coco(tmp_path, seed)
    index = load_dataset(gt_path)  # no image file exists
    assert index.format == "coco" and not any(s.image_path.exists() for s in index.samples)
    assert index.num_difficult() > 0  # crowd boxes are part of the comparison
    ours = evaluate_coco(index, load_predictions(res_path, index))
    direct = pycocotools_directly(gt_path, res_path)
    assert np.allclose(ours["stats"], direct.stats, rtol=0, atol=1e-9)
    assert [ours[k] for k in STAT_NAMES] == ours["stats"]
    assert 0.05 < ours["AP"] < 0.95
    precision = direct.eval["precision"]
    for k, cid in enumerate(direct.params.catIds):
        values = precision[:, :, k, 0, -1]
        assert ours["per_class"][f"c{cid}"] == pytest.approx(float(np.mean(values[values > -1])), abs=1e-12)
    assert capsys.readouterr().out == ""  # pycocotools' printing is swallowed


def test_original_ids_are_kept_for_a_coco_index(tmp_path):
    gt_path, _ = write_random_coco(tmp_path, 0)
    index = load_dataset(gt_path)
    doc = index_to_coco(index)
    original = json.loads(gt_path.read_text())
    assert [c["id"] for c in doc["categories"]] == CATEGORY_IDS
    assert sorted(im["id"] for im in doc["images"]) == sorted(im["id"] for im in original["images"])


def test_crowd_ground_truth_is_honoured():
    # a crowd region: a small detection inside it is neither TP nor FP, and the crowd box is not a positive
    index = make_index(["person"], {"a": [("person", 10, 10, 50, 90), ("person", 100, 0, 300, 200, 1)]}, fmt="coco")
    perfect = [("a", "person", 0.9, 10, 10, 50, 90)]
    inside_crowd = [("a", "person", 0.95, 120, 20, 160, 100), ("a", "person", 0.94, 200, 50, 260, 150)]
    assert evaluate_coco(index, make_preds(["person"], perfect + inside_crowd))["AP"] == pytest.approx(1.0)
    index.samples[0].difficult[:] = False  # the same box as an ordinary object: now a miss and two FPs
    assert evaluate_coco(index, make_preds(["person"], perfect + inside_crowd))["AP"] < 0.6


def test_voc_difficult_is_ignored_like_crowd_and_image_files_are_not_needed():
    index = make_index(["cat"], {"a": [("cat", 1, 1, 40, 40), ("cat", 60, 60, 99, 99, 1)]})
    assert index.samples[0].width == 0 and not index.samples[0].image_path.exists()
    doc = index_to_coco(index)
    assert [a["iscrowd"] for a in doc["annotations"]] == [0, 1]
    assert [a["category_id"] for a in doc["annotations"]] == [1, 1] and doc["images"][0]["id"] == 1
    preds = make_preds(["cat"], [("a", "cat", 0.9, 1, 1, 40, 40), ("a", "cat", 0.95, 60, 60, 99, 99)])
    res = evaluate_coco(index, preds)
    assert res["AP"] == pytest.approx(1.0) and res["per_class"]["cat"] == pytest.approx(1.0)


def test_no_predictions_and_classes_without_ground_truth():
    index = make_index(["cat", "dog"], {"a": [("cat", 1, 1, 40, 40)]})
    res = evaluate_coco(index, Predictions(["cat", "dog"]))
    assert res["AP"] == 0.0 and res["per_class"]["cat"] == 0.0 and math.isnan(res["per_class"]["dog"])
