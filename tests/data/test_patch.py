"""data/patch.py: a corrected copy keeps everything but the changed labels, on layouts as users have them.

A VOCdevkit with two years (XML with <source>, <owner>, <occluded>, <part>), a COCO2017 folder (info,
licenses, gapped category ids, segmentations, large annotation ids), the Roboflow YOLO export of
shared/datasets/format-samples (`../train/images` in data.yaml) with a segment line and a background image,
and a text list with real-valued coordinates. Each test checks that every other file of the copy is
byte-identical, that the changed file keeps what the index cannot hold, that the copy reads back with the
edits applied, and that the original is untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxforge.data.formats.detect import load_dataset
from boxforge.data import patch
from boxforge.data.patch import Edit, copy_with_edits
from boxforge.errors import BoxforgeError

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "format-samples"


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, size: tuple[int, int] = (200, 150)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _assert_only_changed(source: Path, out: Path, changed: set[str], before: dict[str, str]) -> None:
    """The original untouched; in the copy, every file but `changed` (and the manifest) byte-identical."""
    assert _hashes(source) == before
    copy = _hashes(out)
    assert set(copy) >= set(before)
    assert {k for k in before if copy[k] != before[k]} == changed


VOC_XML = """<?xml version="1.0"?>
<annotation>
\t<folder>VOC{year}</folder>
\t<filename>{name}.jpg</filename>
\t<source><database>The VOC{year} Database</database><annotation>PASCAL VOC{year}</annotation></source>
\t<owner><flickrid>someone</flickrid></owner>
\t<size><width>200</width><height>150</height><depth>3</depth></size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>dog</name><pose>Left</pose><truncated>1</truncated><occluded>0</occluded><difficult>0</difficult>
\t\t<bndbox><xmin>10</xmin><ymin>20</ymin><xmax>60</xmax><ymax>80</ymax></bndbox>
\t\t<part><name>head</name><bndbox><xmin>12</xmin><ymin>22</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></part>
\t</object>
\t<object>
\t\t<name>person</name><pose>Frontal</pose><truncated>0</truncated><occluded>1</occluded><difficult>0</difficult>
\t\t<bndbox><xmin>100</xmin><ymin>30</ymin><xmax>150</xmax><ymax>140</ymax></bndbox>
\t</object>
\t<object>
\t\t<name>dog</name><pose>Unspecified</pose><truncated>0</truncated><difficult>1</difficult>
\t\t<bndbox><xmin>160.5</xmin><ymin>5</ymin><xmax>190</xmax><ymax>50.25</ymax></bndbox>
\t</object>
</annotation>
"""


def _vocdevkit(root: Path) -> Path:
    for year in ("2007", "2012"):
        base = root / "VOCdevkit" / f"VOC{year}"
        names = [f"{year}_00000{i}" for i in (1, 2)]
        for name in names:
            _image(base / "JPEGImages" / f"{name}.jpg")
            (base / "Annotations").mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(year=year, name=name))
        (base / "ImageSets" / "Main").mkdir(parents=True)
        (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{n}\n" for n in names))
    return root / "VOCdevkit"


def test_voc_two_years_only_the_changed_objects_differ(tmp_path: Path) -> None:
    source = _vocdevkit(tmp_path)
    index = load_dataset(source, split="trainval")
    image = "VOC2012/2012_000002"
    sample = index.by_id()[image]
    dog, person = index.classes.index("dog"), index.classes.index("person")
    assert sample.labels.tolist() == [dog, person, dog]
    before = _hashes(source)
    edits = {image: [Edit("box", 0, box=(11.0, 21.0, 58.5, 79.0)), Edit("class", 1, cls=dog), Edit("remove", 2),
                     Edit("add", box=(70.0, 90.0, 95.25, 120.0), cls=person)]}
    report = copy_with_edits(index, tmp_path / "new", edits)
    changed = "VOC2012/Annotations/2012_000002.xml"
    _assert_only_changed(source, tmp_path / "new", {changed}, before)
    assert [f["path"] for f in report.files] == [changed]
    text = (tmp_path / "new" / changed).read_text()
    assert text.startswith("<?xml")
    for kept in ("<flickrid>someone</flickrid>", "<database>The VOC2012 Database</database>", "<pose>Left</pose>",
                 "<occluded>1</occluded>", "<part><name>head</name>", "<xmax>58.5</xmax>"):
        assert kept in text, kept
    assert "160.5" not in text  # the removed object
    fixed = load_dataset(tmp_path / "new", split="trainval").by_id()[image]
    assert np.array_equal(fixed.boxes, [[11, 21, 58.5, 79], [100, 30, 150, 140], [70, 90, 95.25, 120]])
    assert fixed.labels.tolist() == [dog, dog, person]
    assert fixed.truncated.tolist() == [True, False, False]  # the moved object keeps its own flags


def _coco2017(root: Path) -> Path:
    for n, name in enumerate(("000000000139.jpg", "000000000285.jpg"), start=1):
        _image(root / "val2017" / name, (640, 480))
    poly = [[10.0, 10.0, 60.0, 10.0, 60.0, 50.0]]
    doc = {"info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
           "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}],
           "images": [{"license": 1, "file_name": "000000000139.jpg", "coco_url": "http://x/139.jpg", "height": 480,
                       "width": 640, "date_captured": "2013-11-21 01:34:01", "id": 139},
                      {"license": 1, "file_name": "000000000285.jpg", "height": 480, "width": 640, "id": 285}],
           "annotations": [
               {"segmentation": poly, "area": 1000.0, "iscrowd": 0, "image_id": 139, "bbox": [10.0, 10.0, 50.0, 40.0],
                "category_id": 90, "id": 900100581904},
               {"segmentation": poly, "area": 2000.0, "iscrowd": 0, "image_id": 139,
                "bbox": [100.25, 200.5, 40.0, 30.75], "category_id": 1, "id": 42},
               {"segmentation": {"counts": [1, 2], "size": [480, 640]}, "area": 500.0, "iscrowd": 1,
                "image_id": 139, "bbox": [300.0, 300.0, 20.0, 25.0], "category_id": 3, "id": 43},
               {"segmentation": poly, "area": 10.0, "iscrowd": 0, "image_id": 285, "bbox": [1, 2, 3, 4],
                "category_id": 3, "id": 44}],
           "categories": [{"supercategory": "person", "id": 1, "name": "person"},
                          {"supercategory": "vehicle", "id": 3, "name": "car"},
                          {"supercategory": "indoor", "id": 90, "name": "toothbrush"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return root


def test_coco2017_keeps_info_ids_and_segmentations(tmp_path: Path) -> None:
    source = _coco2017(tmp_path / "coco")
    index = load_dataset(source, split="val2017")
    image = next(s.image_id for s in index.samples if s.image_id.endswith("139"))
    assert index.by_id()[image].num_objects == 3
    car, person = index.classes.index("car"), index.classes.index("person")
    before = _hashes(source)
    original = json.loads((source / "annotations" / "instances_val2017.json").read_text())
    edits = {image: [Edit("box", 0, box=(12.0, 11.0, 58.0, 49.5)), Edit("class", 1, cls=car),
                     Edit("add", box=(400.0, 100.0, 450.5, 160.0), cls=person)]}
    report = copy_with_edits(index, tmp_path / "new", edits)
    _assert_only_changed(source, tmp_path / "new", {"annotations/instances_val2017.json"}, before)
    doc = json.loads((tmp_path / "new" / "annotations" / "instances_val2017.json").read_text())
    for key in ("info", "licenses", "images", "categories"):
        assert doc[key] == original[key], key
    by_id = {a["id"]: a for a in doc["annotations"]}
    assert by_id[900100581904]["bbox"] == [12.0, 11.0, 46.0, 38.5] and by_id[900100581904]["segmentation"] == []
    assert any("900100581904" in note for note in report.notes)  # the dropped polygon is said
    assert by_id[42] == {**original["annotations"][1], "category_id": 3}  # relabelled: its polygon still fits
    assert by_id[43] == original["annotations"][2] and by_id[44] == original["annotations"][3]  # crowd RLE too
    assert by_id[900100581905] == {"id": 900100581905, "image_id": 139, "category_id": 1,
                                   "bbox": [400.0, 100.0, 50.5, 60.0], "area": 3030.0, "segmentation": [],
                                   "iscrowd": 0}
    fixed = load_dataset(tmp_path / "new", split="val2017").by_id()[image]
    assert np.allclose(fixed.boxes, [[12, 11, 58, 49.5], [100.25, 200.5, 140.25, 231.25], [300, 300, 320, 325],
                                     [400, 100, 450.5, 160]])


def test_roboflow_yolo_export_changes_only_the_lines_changed(tmp_path: Path) -> None:
    source = tmp_path / "yolo"
    shutil.copytree(SAMPLES / "roboflow_dataset" / "yolo", source)
    label = source / "train" / "labels" / "train_001.txt"
    label.write_text("0 0.512345 0.40625 0.2 0.3\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n1 0.8 0.8 0.1 0.1\n")
    _image(source / "train" / "images" / "train_003.jpg", (320, 240))  # a background image: no label file
    index = load_dataset(source / "data.yaml", split="train")
    by_id = index.by_id()
    first = next(i for i in by_id if i.endswith("train_001"))
    empty = next(i for i in by_id if i.endswith("train_003"))
    w, h = by_id[first].width, by_id[first].height
    before = _hashes(source)
    edits = {first: [Edit("class", 0, cls=1), Edit("box", 1, box=(0.0, 0.0, w / 2, h / 4)), Edit("remove", 2)],
             empty: [Edit("add", box=(32.0, 24.0, 96.0, 72.0), cls=0)]}
    copy_with_edits(index, tmp_path / "new", edits)
    _assert_only_changed(source, tmp_path / "new", {"train/labels/train_001.txt"}, before)
    assert (tmp_path / "new" / "train" / "labels" / "train_001.txt").read_text() == (
        "1 0.512345 0.40625 0.2 0.3\n1 0.250000 0.125000 0.500000 0.250000\n")  # the rest of line 1 verbatim
    assert (tmp_path / "new" / "train" / "labels" / "train_003.txt").read_text() == \
        "0 0.200000 0.200000 0.200000 0.200000\n"
    fixed = load_dataset(tmp_path / "new" / "data.yaml", split="train").by_id()
    assert fixed[first].labels.tolist() == [1, 1] and fixed[empty].labels.tolist() == [0]
    assert np.allclose(fixed[empty].boxes, [[32, 24, 96, 72]])


def test_text_list_with_real_valued_coordinates(tmp_path: Path) -> None:
    source = tmp_path / "txt"
    for name in ("a", "b"):
        _image(source / "images" / f"{name}.jpg")
    (source / "classes.txt").write_text("cat\ndog\n")
    (source / "train.txt").write_text("# made by hand\nimages/a.jpg 10.5,20.25,30,40,1 50,60,70.125,80,2\r\n"
                                      "images/b.jpg 1,2,3,4,2\r\n")
    index = load_dataset(source, split="train")
    before = _hashes(source)
    copy_with_edits(index, tmp_path / "new", {"a": [Edit("box", 0, box=(11.0, 20.25, 30.5, 40.0)),
                                                    Edit("class", 1, cls=0), Edit("add", box=(1, 1, 5, 5), cls=1)]})
    _assert_only_changed(source, tmp_path / "new", {"train.txt"}, before)
    assert (tmp_path / "new" / "train.txt").read_bytes() == (  # its line endings kept too
        b"# made by hand\nimages/a.jpg 11,20.25,30.5,40,1 50,60,70.125,80,1 1,1,5,5,2\r\nimages/b.jpg 1,2,3,4,2\r\n")


def test_refusals_write_nothing(tmp_path: Path) -> None:
    source = _vocdevkit(tmp_path)
    index = load_dataset(source, split="trainval")
    image = "VOC2007/2007_000001"
    with pytest.raises(BoxforgeError, match="lies inside the dataset"):
        copy_with_edits(index, source / "fixed", {image: [Edit("remove", 0)]})
    (source / "VOC2007" / "Annotations" / "2007_000001.xml").write_text(
        VOC_XML.format(year="2007", name="2007_000001").replace("<xmin>10</xmin>", "<xmin>11</xmin>"))
    with pytest.raises(BoxforgeError, match=r"2007_000001\.xml: the labels differ .* changed since"):
        copy_with_edits(index, tmp_path / "new", {image: [Edit("remove", 0)]})
    assert not (tmp_path / "new").exists()  # checked before anything was copied
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(BoxforgeError, match="not empty"):
        copy_with_edits(index, tmp_path / "full", {})


def test_roboflow_coco_splits_read_together_change_one_splits_file(tmp_path: Path) -> None:
    """All splits of a Roboflow COCO export at once (ids `val/val_001`): the edit lands in val's own file."""
    source = tmp_path / "coco"
    shutil.copytree(SAMPLES / "roboflow_dataset" / "coco", source)
    index = load_dataset(source)
    assert index.by_id()["val/val_001"].num_objects == 2
    before = _hashes(source)
    original = json.loads((source / "val" / "_annotations.coco.json").read_text())
    copy_with_edits(index, tmp_path / "new", {"val/val_001": [Edit("remove", 1)]})
    _assert_only_changed(source, tmp_path / "new", {"val/_annotations.coco.json"}, before)
    doc = json.loads((tmp_path / "new" / "val" / "_annotations.coco.json").read_text())
    assert {k: v for k, v in doc.items() if k != "annotations"} == \
        {k: v for k, v in original.items() if k != "annotations"}
    assert len(doc["annotations"]) == len(original["annotations"]) - 1
    assert load_dataset(tmp_path / "new").by_id()["val/val_001"].num_objects == 1


def test_a_symlinked_annotation_file_is_replaced_in_the_copy_never_written_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An annotation file that is a link (here to a file elsewhere in the dataset): the copy's link becomes the
    edited file; what it pointed to, in the copy and in the original, stays as it was."""
    source = _vocdevkit(tmp_path)
    ann = source / "VOC2007" / "Annotations"
    (source / "VOC2007" / "kept").mkdir()
    (ann / "2007_000001.xml").rename(source / "VOC2007" / "kept" / "2007_000001.xml")
    (ann / "2007_000001.xml").symlink_to(Path("..") / "kept" / "2007_000001.xml")
    index = load_dataset(source, split="trainval")
    before = _hashes(source)
    totals: list[int] = []
    shown = patch.progress
    monkeypatch.setattr(patch, "progress", lambda total, **kw: totals.append(total) or shown(total, **kw))
    report = copy_with_edits(index, tmp_path / "new", {"VOC2007/2007_000001": [Edit("remove", 0)]})
    assert _hashes(source) == before
    # the link is recreated as a link, not copied: neither the count nor the progress bar's total holds it
    assert totals == [report.copied] == [sum(p.is_file() and not p.is_symlink() for p in source.rglob("*"))]
    new = tmp_path / "new" / "VOC2007"
    assert not (new / "Annotations" / "2007_000001.xml").is_symlink()
    assert (new / "kept" / "2007_000001.xml").read_bytes() == (source / "VOC2007" / "kept" / "2007_000001.xml").read_bytes()
    assert load_dataset(tmp_path / "new", split="trainval").by_id()["VOC2007/2007_000001"].num_objects == 2
