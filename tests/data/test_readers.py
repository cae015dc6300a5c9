"""Every reader: the real samples in ../shared/datasets and small layouts written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from boxforge import load_dataset
from boxforge.errors import DatasetError
from tests.conftest import RACCOON, SAMPLES, make_voc, write_image


def test_raccoon_loads_with_200_images_and_217_boxes():
    index = load_dataset(RACCOON)
    assert index.format == "voc"
    assert (len(index), index.num_objects, index.classes) == (200, 217, ["raccoon"])
    assert sorted(index.splits) == ["test", "train"]


def test_raccoon_split_files_at_root():
    train, test = load_dataset(RACCOON, split="train"), load_dataset(RACCOON, split="test")
    assert (len(train), len(test)) == (160, 40)
    assert not {s.image_id for s in train.samples} & {s.image_id for s in test.samples}
    first = train.by_id()["raccoon-1"]
    assert first.boxes.tolist() == [[81, 88, 522, 408]] and (first.width, first.height) == (650, 417)
    assert first.boxes.dtype == np.float64 and first.labels.dtype == np.int64


def test_split_as_txt_path(tmp_path):
    ids = tmp_path / "mine.txt"
    ids.write_text("raccoon-1\nraccoon-10\n")
    assert [s.image_id for s in load_dataset(RACCOON, split=str(ids)).samples] == ["raccoon-1", "raccoon-10"]


def test_unknown_split_names_the_offered_ones():
    with pytest.raises(DatasetError, match="splits here: test, train"):
        load_dataset(RACCOON, split="val")


LOADABLE = {
    "voc_dataset/voc_dataset1": ("voc", 2, 2),
    "voc_dataset/voc_dataset2": ("voc", 5, 3),  # labelmap.txt: background is no class
    "voc_dataset/voc_dataset3": ("voc", 1, 1),
    "coco_dataset/coco": ("coco", 2, 3),
    "coco_dataset/coco_instances": ("coco", 2, 3),
    "coco_dataset/coco_person_keypoints": ("coco", 2, 3),
    "coco_dataset/coco_roboflow": ("coco", 2, 3),
    "coco_dataset/coco_stuff": ("coco", 2, 2),
    "coco_dataset/mmdet_coco": ("coco", 2, 3),
    "yolo_dataset/labels": ("yolo", 2, 4),
    "yolo_dataset/annotations": ("yolo", 1, 2),
    "yolo_dataset/strict": ("yolo", 1, 2),
    "imagenet_dataset": ("imagefolder", 3, 0),
    "imagenet_txt_dataset/basic": ("imagenet_txt", 4, 0),
    "imagenet_txt_dataset/custom_labels": ("imagenet_txt", 1, 0),
    "imagenet_txt_dataset/no_labels": ("imagenet_txt", 1, 0),
    "roboflow_dataset/coco": ("coco", 3, 4),
    "roboflow_dataset/voc": ("voc", 3, 4),
    "roboflow_dataset/yolo": ("yolo", 2, 2),
}


@pytest.mark.parametrize("name", sorted(LOADABLE))
def test_format_samples_load(name):
    fmt, images, objects = LOADABLE[name]
    index = load_dataset(SAMPLES / name)
    assert (index.format, len(index), index.num_objects) == (fmt, images, objects)


BROKEN = {
    "coco_dataset/coco_captions": "no 'categories'",
    "coco_dataset/coco_image_info": "no 'categories'",
    "coco_dataset/coco_labels": "have no 'bbox'",
    "coco_dataset/coco_panoptic": "have no 'bbox'",
    "roboflow_dataset/yolo_obb": "oriented boxes",
    "roboflow_dataset/tfrecord": "not supported",
    "roboflow_dataset/createml": "not supported",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unsupported_samples_fail_with_a_precise_message(name):
    with pytest.raises(DatasetError, match=BROKEN[name]):
        load_dataset(SAMPLES / name)


def test_voc_sample_details():
    index = load_dataset(SAMPLES / "voc_dataset/voc_dataset1", split="train")
    s = index.samples[0]
    assert index.classes == ["cat", "person"]  # the names found, in the devkit's class order
    assert [index.classes[i] for i in s.labels] == ["cat", "person"]
    assert s.truncated.tolist() == [True, False]
    assert s.boxes.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]  # the part's box is ignored
    labelmap = load_dataset(SAMPLES / "voc_dataset/voc_dataset2")
    assert labelmap.classes[:2] == ["aeroplane", "bicycle"] and len(labelmap.classes) == 21  # no "background"


def test_coco_gapped_ids_crowd_and_missing_images(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "x/one.jpg", "width": 100, "height": 50},
                      {"id": 9, "file_name": "two.jpg", "width": 30, "height": 30}],
           "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 5, 20, 10], "iscrowd": 0},
                           {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1}]}
    path = tmp_path / "annotations" / "instances_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    index = load_dataset(path)  # no image files at all: still loads
    assert index.classes == ["person", "toothbrush"] and index.meta["category_ids"] == [1, 90]
    one = index.by_id()["x/one"]
    assert one.boxes.tolist() == [[10, 5, 30, 15], [0, 0, 50, 50]]
    assert one.labels.tolist() == [1, 0] and one.difficult.tolist() == [False, True]
    assert index.by_id()["two"].num_objects == 0  # image without annotations kept


def test_coco_malformed_json_names_the_position(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"images": [1, 2,,]}')
    with pytest.raises(DatasetError, match=r"x.json: malformed JSON at line 1 column"):
        load_dataset(bad)


def _yolo_ultralytics(root: Path) -> Path:
    for split in ("train", "val"):
        write_image(root / "images" / split / f"{split}1.jpg", 100, 50)
        (root / "labels" / split).mkdir(parents=True)
    (root / "labels" / "train" / "train1.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.5 0.5 1.0\n")
    (root / "labels" / "val" / "val1.txt").write_text("1 0.1 0.1 0.2 0.2 0.3 0.1\n")  # segment -> box
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    return root


def test_yolo_data_yaml_boxes_in_pixels(tmp_path):
    root = _yolo_ultralytics(tmp_path / "y")
    train = load_dataset(root, split="train")
    s = train.samples[0]
    assert train.classes == ["a", "b"] and (s.width, s.height) == (100, 50)
    np.testing.assert_allclose(s.boxes, [[40, 15, 60, 35], [0, 0, 50, 50]], atol=1e-4)
    val = load_dataset(root / "data.yaml", split="val").samples[0]
    np.testing.assert_allclose(val.boxes, [[10, 5, 30, 10]], atol=1e-4)
    assert len(load_dataset(root)) == 2


def test_yolo_missing_label_is_a_background_warning_and_bad_class_is_reported(tmp_path):
    root = _yolo_ultralytics(tmp_path / "y")
    write_image(root / "images" / "train" / "nolabel.jpg")
    (root / "labels" / "train" / "train1.txt").write_text("5 0.5 0.5 0.2 0.2\nfoo bar\n")
    index = load_dataset(root, split="train")
    kinds = sorted((p.kind, p.severity) for p in index.problems)
    assert kinds == [("invalid_annotation", "error"), ("missing_annotation", "warning"), ("unknown_class", "error")]


def test_text_list_one_based_ids(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "train.txt").write_text("imgs/a.jpg 1,2,30,40,1 5,5,10,10.5,2\n")
    index = load_dataset(tmp_path / "train.txt")
    s = index.samples[0]
    assert index.format == "txt" and s.labels.tolist() == [0, 1]
    assert s.boxes.tolist() == [[1, 2, 30, 40], [5, 5, 10, 10.5]] and s.image_id == "imgs/a"
    (tmp_path / "train.txt").write_text("imgs/a.jpg 1,2,30,40,0\n")
    assert [p.kind for p in load_dataset(tmp_path / "train.txt").problems] == ["unknown_class"]


def test_imagefolder_and_yaml_spec(tmp_path):
    for cls in ("b_dog", "a_cat"):
        write_image(tmp_path / "set" / "train" / cls / "1.jpg")
    index = load_dataset(tmp_path / "set", split="train")
    assert index.task == "classify" and index.classes == ["a_cat", "b_dog"]
    assert sorted(s.label for s in index.samples) == [0, 1]
    make_voc(tmp_path / "v", {"a": [("zebra", 1, 1, 5, 5)]}, splits={"train": ["a"]})
    spec = tmp_path / "data.yaml"
    spec.write_text("format: voc\nroot: v\ntrain: train\nclasses: [zebra, ant]\n")
    by_spec = load_dataset(spec, split="train")
    assert by_spec.classes == ["zebra", "ant"] and by_spec.num_objects == 1


def test_voc_devkit_roots_merge(tmp_path):
    kit = tmp_path / "VOCdevkit"
    make_voc(kit / "VOC2007", {"000001": [("dog", 1, 1, 9, 9)]}, splits={"trainval": ["000001"]})
    make_voc(kit / "VOC2012", {"2008_000001": [("cat", 2, 2, 8, 8)]}, splits={"trainval": ["2008_000001"]})
    merged = load_dataset(kit, split="trainval")
    assert sorted(s.image_id for s in merged.samples) == ["VOC2007/000001", "VOC2012/2008_000001"]
    assert merged.classes == ["cat", "dog"]
    assert [merged.classes[s.labels[0]] for s in merged.samples] == ["dog", "cat"]
    both = load_dataset([kit / "VOC2007", kit / "VOC2012"], split="trainval")
    assert len(both) == 2 and both.num_objects == 2


def test_flat_voc_xml_beside_images_and_float_coordinates(tiny_voc, tmp_path):
    flat = tmp_path / "flat"
    for p in (tiny_voc / "JPEGImages").iterdir():
        (flat).mkdir(exist_ok=True)
        (flat / p.name).write_bytes(p.read_bytes())
        (flat / f"{p.stem}.xml").write_bytes((tiny_voc / "Annotations" / f"{p.stem}.xml").read_bytes())
    index = load_dataset(flat)
    assert len(index) == 3 and index.by_id()["c"].boxes.tolist() == [[20.5, 10, 40.25, 20]]
    assert index.by_id()["a"].difficult.tolist() == [False, True]


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset layout"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown format 'xyz'"):
        load_dataset(RACCOON, format="xyz")
