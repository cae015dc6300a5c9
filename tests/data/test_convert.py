"""Every conversion pair keeps every valid box, class names and order; invalid boxes are reported, not fixed."""

from __future__ import annotations

import contextlib
import io
import itertools
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from boxforge import convert, load_dataset
from boxforge.cli import main
from boxforge.errors import BoxforgeError
from tests.conftest import RACCOON, make_voc

TARGETS = ("voc", "coco", "yolo", "txt")


def _by_name(index):
    """image basename -> sorted list of (class name, box rounded) for comparing across formats."""
    out = {}
    for s in index.samples:
        objs = sorted((index.classes[l], *np.round(b, 2).tolist()) for b, l in zip(s.boxes, s.labels))
        out[s.image_id.rsplit("/", 1)[-1]] = objs
    return out


def _assert_same(a, b, tol):
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for x, y in zip(a[key], b[key]):
            assert x[0] == y[0]
            np.testing.assert_allclose(x[1:], y[1:], atol=tol, err_msg=key)


@pytest.fixture
def source(tmp_path):
    return make_voc(tmp_path / "src", {
        "a": [("zebra", 5, 6, 30, 40), ("ant", 10, 10, 50, 30, 1)],
        "b": [("ant", 1, 1, 64, 48)],
        "c": [("zebra", 20.5, 10, 40.25, 20)],
        "d": [],
    }, splits={"train": ["a", "b"], "test": ["c", "d"]})


@pytest.mark.parametrize("first,second", list(itertools.permutations(TARGETS, 2)))
def test_round_trip_between_every_pair(tmp_path, source, first, second):
    original = load_dataset(source)
    convert(original, tmp_path / first, to=first)
    step1 = load_dataset(tmp_path / first)
    convert(step1, tmp_path / "second", to=second)
    step2 = load_dataset(tmp_path / "second")
    tol = 0.5 if "yolo" in (first, second) else 1e-4
    for index in (step1, step2):
        assert index.classes == ["ant", "zebra"] or index.classes == original.classes
        assert index.classes == original.classes
        _assert_same(_by_name(original), _by_name(index), tol)
    assert len(step2) == 4


def test_difficult_kept_where_the_target_can_hold_it(tmp_path, source):
    original = load_dataset(source)
    for target in ("voc", "coco"):
        convert(original, tmp_path / target, to=target)
        back = load_dataset(tmp_path / target).by_id()["a"]
        assert back.difficult.tolist() == [False, True]
    report = convert(original, tmp_path / "yolo", to="yolo")
    assert "difficult flags" in report.lost_fields


def test_splits_are_written(tmp_path, source):
    convert(load_dataset(source), tmp_path / "voc", to="voc")
    assert sorted(s.image_id for s in load_dataset(tmp_path / "voc", split="test").samples) == ["c", "d"]
    convert(load_dataset(source), tmp_path / "yolo", to="yolo")
    assert sorted(s.image_id for s in load_dataset(tmp_path / "yolo", split="train").samples) == ["a", "b"]


def test_invalid_boxes_are_left_out_and_counted(tmp_path):
    root = make_voc(tmp_path / "src", {"a": [("cat", 5, 5, 5, 20), ("cat", 1, 1, 10, 10), ("cat", "nan", 1, 2, 3)]})
    report = convert(load_dataset(root), tmp_path / "out", to="coco")
    assert report.objects == 1 and len(report.dropped) == 2
    assert "left out 2 invalid boxes" in report.summary()
    assert load_dataset(tmp_path / "out").num_objects == 1


def test_yolo_clips_out_of_bounds_and_says_so(tmp_path):
    root = make_voc(tmp_path / "src", {"a": [("cat", -4, 1, 70, 10)]})
    report = convert(load_dataset(root), tmp_path / "out", to="yolo")
    assert report.clipped == 1 and "clipped 1 boxes" in report.summary()
    np.testing.assert_allclose(load_dataset(tmp_path / "out").samples[0].boxes, [[0, 1, 64, 10]], atol=0.01)


def test_coco_output_loads_in_pycocotools(tmp_path):
    convert(load_dataset(RACCOON, split="test"), tmp_path / "coco", to="coco")
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(tmp_path / "coco" / "annotations" / "instances_test.json"))
    assert len(api.getImgIds()) == 40 and len(api.getAnnIds()) == load_dataset(RACCOON, split="test").num_objects == 44
    assert api.loadCats(api.getCatIds())[0]["name"] == "raccoon"


def test_raccoon_round_trips_through_yolo_within_half_a_pixel(tmp_path):
    original = load_dataset(RACCOON)
    convert(original, tmp_path / "yolo", to="yolo")
    back = load_dataset(tmp_path / "yolo")
    assert back.num_objects == 217
    _assert_same(_by_name(original), _by_name(back), 0.5)


def test_refuses_non_empty_output_and_unknown_target(tmp_path, source):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(BoxforgeError, match="not empty"):
        convert(source, tmp_path / "full", to="voc")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(BoxforgeError, match="choose one of: voc, coco, yolo, txt"):
        convert(source, tmp_path / "x", to="pascal")


def test_cli_convert_prints_the_report(tmp_path, source, capsys):
    assert main(["convert", str(source), str(tmp_path / "o"), "--to", "txt"]) == 0
    assert "wrote 4 images and 4 objects as txt" in capsys.readouterr().out


@pytest.mark.parametrize("via", ["voc", "coco", "txt"])
def test_real_valued_coco_coordinates_survive_a_round_trip_exactly(tmp_path, via):
    # float64 end to end: COCO's two-decimal numbers come back as the same numbers, not float32's 48.2700004
    from tests.conftest import write_image

    rng = np.random.default_rng(0)
    root = tmp_path / "coco"
    images, annotations = [], []
    for i in range(6):
        write_image(root / "images" / "val" / f"{i}.jpg", 640, 480, seed=i)
        images.append({"id": 100 + 7 * i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(5):
            x, y = np.round(rng.uniform(0, 400, 2), 2).tolist()
            w, h = np.round(rng.uniform(1, 200, 2), 2).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + 7 * i, "category_id": 3,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": []})
    (root / "annotations").mkdir(parents=True)
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "car"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    original = load_dataset(root, split="val")
    assert original.samples[0].boxes.dtype == np.float64
    convert(original, tmp_path / "out", to=via)
    back = load_dataset(tmp_path / "out")
    convert(back, tmp_path / "again", to="coco")
    again = json.loads(next((tmp_path / "again" / "annotations").glob("*.json")).read_text())
    for a, b in ((original, back), (original, load_dataset(tmp_path / "again"))):
        assert {s.image_id.rsplit("/", 1)[-1]: s.boxes.tolist() for s in a.samples} == \
               {s.image_id.rsplit("/", 1)[-1]: s.boxes.tolist() for s in b.samples}
    assert [a["bbox"] for a in again["annotations"]] == [a["bbox"] for a in annotations]
