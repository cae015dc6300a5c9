"""The predictions file: round trip, COCO results lists, and errors that name the file and the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boxforge import load_dataset
from boxforge.errors import BoxforgeError
from boxforge.evaluation import Predictions, PredictionsError, evaluate_coco, load_predictions, save_predictions
from tests.evaluation._synthetic import random_index, random_predictions
from tests.evaluation.test_coco import write_random_coco
from tests.evaluation.test_voc import make_index


def test_round_trip_keeps_every_number(tmp_path):
    rng = np.random.default_rng(0)
    index = random_index(rng, 20, 3)
    preds = random_predictions(rng, index, per_image=5, score_decimals=8)
    preds.add("img_00000", [[0.1, 0.2, 10.3, 20.7]], [1 / 3], [2])  # not exactly representable in decimal
    path = save_predictions(preds, index.classes, tmp_path / "out" / "predictions.json")
    doc = json.loads(path.read_text())
    assert doc["classes"] == index.classes and doc["predictions"][0].keys() == {"image", "label", "score", "box"}
    back = load_predictions(path, index)
    assert back.classes == index.classes and back.images.keys() == preds.images.keys()
    for image_id, p in preds.images.items():
        q = back.images[image_id]
        assert np.array_equal(p.boxes, q.boxes) and np.array_equal(p.scores, q.scores)
        assert np.array_equal(p.labels, q.labels) and q.labels.dtype == np.int64


def test_labels_are_mapped_by_name_not_position(tmp_path):
    index = make_index(["cat", "dog"], {"a": [("dog", 1, 1, 10, 10)]})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"classes": ["dog", "cat"],
                                "predictions": [{"image": "a", "label": "dog", "score": 0.5, "box": [1, 1, 10, 10]}]}))
    assert load_predictions(path, index).images["a"].labels.tolist() == [1]


def test_coco_results_list_maps_original_ids(tmp_path):
    gt_path, res_path = write_random_coco(tmp_path, 0)
    index = load_dataset(gt_path)
    results = json.loads(res_path.read_text())
    preds = load_predictions(res_path, index)
    assert len(preds) == len(results)
    first = results[0]
    sample = next(s for s in index.samples if index.meta["coco_image_ids"][s.image_id] == first["image_id"])
    p = preds.images[sample.image_id]
    x, y, w, h = first["bbox"]
    assert p.boxes[0].tolist() == [x, y, x + w, y + h] and p.scores[0] == first["score"]
    assert index.meta["category_ids"][p.labels[0]] == first["category_id"]


def write(tmp_path, doc) -> str:
    path = tmp_path / "predictions.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def entry(**kw):
    return {"image": "a", "label": "cat", "score": 0.5, "box": [1, 2, 3, 4], **kw}


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"predictions\.json: malformed JSON at line 1"),
    ({"classes": []}, r"predictions\.json: not a predictions file"),
    ({"predictions": [entry(box=[1, 2, 3])]}, r"predictions\.json: predictions\[0\] 'box' is \[1, 2, 3\]; expected \[x1, y1, x2, y2\]"),
    ({"predictions": [entry(), entry(score="high")]}, r"predictions\[1\] 'score' is \['high'\]"),
    ({"predictions": [entry(score=float("nan"))]}, r"'score'"),
    ({"predictions": [entry(image=7)]}, r"predictions\[0\] has image 7"),
    ({"predictions": ["a"]}, r"predictions\[0\] is not an object"),
    ({"predictions": [entry(), entry(label="zebra", image="ghost")]}, r"1 image id\(s\) not in the dataset: 'ghost'"),
])
def test_malformed_files_are_refused_with_file_and_position(tmp_path, doc, message):
    index = make_index(["cat", "dog"], {"a": [], "b": []})
    with pytest.raises(BoxforgeError, match=message):
        load_predictions(write(tmp_path, doc), index)


def test_unknown_image_ids_are_named_and_counted(tmp_path):
    index = make_index(["cat"], {"a": []})
    doc = {"predictions": [entry(image=f"ghost{k}") for k in range(8)] + [entry()]}
    with pytest.raises(PredictionsError, match=r"8 image id\(s\) not in the dataset: 'ghost0', .*'ghost4' and 3 more"):
        load_predictions(write(tmp_path, doc), index)


def test_coco_results_need_a_coco_index(tmp_path):
    index = make_index(["cat"], {"a": []})
    path = write(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(PredictionsError, match="needs a COCO dataset.*this one is 'voc'"):
        load_predictions(path, index)


def test_unknown_class_names_are_ignored_and_counted_unless_strict(tmp_path):
    index = make_index(["cat", "dog"], {"a": [], "b": []})
    doc = {"predictions": [entry(), entry(label="zebra"), entry(label="car", image="b"), entry(label="zebra")]}
    preds = load_predictions(write(tmp_path, doc), index)
    assert len(preds) == 1 and preds.images["a"].labels.tolist() == [0]
    assert preds.ignored == {"zebra": 2, "car": 1}
    with pytest.raises(PredictionsError, match=r"predictions\.json: unknown class name\(s\) 'zebra' "
                                               r"\(predictions\[1\]\), 'car' \(predictions\[2\]\); the dataset's "
                                               r"classes are: cat, dog \(without --strict-classes"):
        load_predictions(write(tmp_path, doc), index, strict_classes=True)


def test_coco_results_with_unknown_ids(tmp_path):
    gt_path, _ = write_random_coco(tmp_path, 0)
    index = load_dataset(gt_path)
    bad_cat = [{"image_id": 1000, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5},
               {"image_id": 1000, "category_id": [3], "bbox": [0, 0, 1, 1], "score": 0.5},
               {"image_id": 1000, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    preds = load_predictions(write(tmp_path, bad_cat), index)
    assert len(preds) == 1 and preds.ignored == {"category_id 99": 1, "category_id [3]": 1}
    assert preds.coco_results == bad_cat  # kept as in the file for pycocotools
    for backend in ("pycocotools", "auto"):  # auto: faster-coco-eval where installed; neither sees the unknown ones
        assert evaluate_coco(index, preds, backend=backend)["stats"] == \
            evaluate_coco(index, load_predictions(write(tmp_path, bad_cat[2:]), index), backend=backend)["stats"]
    with pytest.raises(PredictionsError, match=r"\[0\] has category_id 99; the dataset's ids are: 3, 7, 12"):
        load_predictions(write(tmp_path, bad_cat), index, strict_classes=True)
    bad_image = [{"image_id": 5, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5},
                 {"image_id": [1000], "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(PredictionsError, match=r"COCO image_id\): 2 image id\(s\) not in the dataset: 5, '\[1000\]'"):
        load_predictions(write(tmp_path, bad_image), index)


def test_container_checks_shapes_and_labels():
    preds = Predictions(["cat"])
    with pytest.raises(PredictionsError, match="label 1 is outside 0..0"):
        preds.add("a", [[0, 0, 1, 1]], [0.5], [1])
    with pytest.raises(PredictionsError, match="2 boxes need 2 scores"):
        preds.add("a", [[0, 0, 1, 1]] * 2, [0.5], [0])
    preds.add("a", [[0, 0, 1, 1]], [0.5], [0])
    preds.add("a", [[0, 0, 2, 2]], [0.4], [0])
    assert len(preds) == 2 and preds.images["a"].scores.tolist() == [0.5, 0.4]
    with pytest.raises(PredictionsError, match="not in the dataset: 'a'"):
        preds.flatten(["b"])
