"""The synthetic datasets: deterministic, readable by our own readers, never written over user data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxforge.data.formats.voc import read_voc
from boxforge.data.synth import SHAPES, shape_mask, synthesize_classification, synthesize_detection
from boxforge.errors import BoxforgeError

DET = {"images": 12, "classes": 3, "image_size": (128, 96)}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("det") / "voc"
    return out, synthesize_detection(out, seed=3, **DET)


def test_detection_is_deterministic(det, tmp_path: Path) -> None:
    out, _ = det
    again = synthesize_detection(tmp_path / "again", seed=3, **DET)
    first, second = _files(out), _files(again.root)
    assert len(first) >= 2 * DET["images"] + 4
    assert first == second
    other = _files(synthesize_detection(tmp_path / "other", seed=4, **DET).root)
    assert other.keys() == first.keys()
    assert other["JPEGImages/000000.jpg"] != first["JPEGImages/000000.jpg"]
    assert sum(other[f"Annotations/{i:06d}.xml"] != first[f"Annotations/{i:06d}.xml"] for i in range(12)) >= 10


def test_detection_reads_back_as_voc(det) -> None:
    out, index = det
    assert (out / "classes.txt").read_text().split() == list(SHAPES[:3])
    back = read_voc(out)
    assert back.problems == []
    assert back.classes == index.classes == ["circle", "square", "triangle"]
    assert len(back) == len(index) == DET["images"]
    assert back.num_objects == index.num_objects
    written = index.by_id()
    for sample in back.samples:
        np.testing.assert_array_equal(sample.boxes, written[sample.image_id].boxes)
        np.testing.assert_array_equal(sample.labels, written[sample.image_id].labels)
        with Image.open(sample.image_path) as image:
            assert image.size == (sample.width, sample.height)
        assert 1 <= sample.num_objects <= 6
        x1, y1, x2, y2 = sample.boxes.T
        assert np.all(x1 >= 0) and np.all(y1 >= 0)
        assert np.all(x2 <= sample.width) and np.all(y2 <= sample.height)
        assert np.all(x2 - x1 >= 4) and np.all(y2 - y1 >= 4)
        assert np.array_equal(sample.boxes, np.round(sample.boxes))
    assert len({s.width for s in back.samples}) > 1, "image sizes should vary around image_size"


def test_detection_split_files(det) -> None:
    out, index = det
    main = out / "ImageSets" / "Main"
    train, test = (main / "train.txt").read_text().split(), (main / "test.txt").read_text().split()
    assert (main / "trainval.txt").read_text().split() == train
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(s.image_id for s in index.samples) == [f"{i:06d}" for i in range(12)]
    assert len(test) == round(0.2 * DET["images"])
    assert [s.image_id for s in read_voc(out, split="test").samples] == test


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(BoxforgeError, match="mine.*not a previous synth output"):
        synthesize_detection(out, images=2)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_refuses_synth_output_with_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "voc"
    synthesize_detection(out, images=2, image_size=(64, 48))
    (out / "notes.txt").write_text("precious")
    with pytest.raises(BoxforgeError, match="notes.txt"):
        synthesize_detection(out, images=2, image_size=(64, 48))
    assert (out / "notes.txt").read_text() == "precious"


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "voc"
    synthesize_detection(out, images=6, image_size=(64, 48))
    index = synthesize_detection(out, images=3, image_size=(64, 48))
    assert sorted(p.stem for p in (out / "Annotations").glob("*.xml")) == ["000000", "000001", "000002"]
    assert len(read_voc(out)) == len(index) == 3


@pytest.mark.parametrize("classes", [0, 9])
def test_invalid_class_count(tmp_path: Path, classes: int) -> None:
    with pytest.raises(BoxforgeError, match="allowed: 1 to 8"):
        synthesize_detection(tmp_path / "d", classes=classes, images=2)
    with pytest.raises(BoxforgeError, match="allowed: 1 to 8"):
        synthesize_classification(tmp_path / "c", classes=classes, images=20)
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_eight_shape_kinds_differ() -> None:
    masks = [shape_mask(kind, 40, 40) for kind in SHAPES]
    assert all(m.shape == (40, 40) and m.any() for m in masks)
    assert len({m.tobytes() for m in masks}) == len(SHAPES)


def test_classification_tree(tmp_path: Path) -> None:
    out = tmp_path / "cls"
    index = synthesize_classification(out, images=30, classes=3, seed=1, image_size=32)
    assert index.task == "classify" and len(index) == 30
    for split, per_class in (("train", 8), ("val", 2)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == ["circle", "square", "triangle"]
        for name in folders:
            assert len(list((out / split / name).glob("*.jpg"))) == per_class
    for sample in index.samples:
        split, folder, _ = sample.image_id.split("/")
        assert sample.image_id in index.splits[split]
        assert index.classes[sample.label] == folder
        assert sample.num_objects == 0
        assert sample.image_path == out / f"{sample.image_id}.jpg"
        with Image.open(sample.image_path) as image:
            assert image.size == (32, 32)
    again = synthesize_classification(tmp_path / "again", images=30, classes=3, seed=1, image_size=32)
    assert _files(again.root) == _files(out)


def test_classification_needs_every_class_in_both_splits(tmp_path: Path) -> None:
    with pytest.raises(BoxforgeError, match="images=5"):
        synthesize_classification(tmp_path / "c", images=5, classes=3)


# sha256 of the annotations, split lists and class list synth wrote for these settings before --objects existed
# (XML and text only: JPEG bytes depend on the installed encoder)
DEFAULT_ANNOTATIONS_SHA256 = "82492929d806ee3394f39581e43308a148868582675805c3334cd7c9b4214164"


def test_default_shapes_are_the_ones_synth_always_drew(det) -> None:
    import hashlib

    out, _ = det
    digest = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix in (".xml", ".txt"):
            digest.update(p.relative_to(out).as_posix().encode())
            digest.update(p.read_bytes())
    assert digest.hexdigest() == DEFAULT_ANNOTATIONS_SHA256


def test_dense_small_objects_on_request(tmp_path: Path) -> None:
    index = synthesize_detection(tmp_path / "dense", images=6, classes=3, seed=0, image_size=(320, 320),
                                 objects=(20, 40), object_size=(0.03, 0.1))
    counts = [len(s.boxes) for s in index.samples]
    assert min(counts) >= 15 and np.mean(counts) >= 20, counts  # a few are refused where they would hide others
    for s in index.samples:
        short = min(s.width, s.height)
        sides = np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert sides.max() <= 0.1 * short * 1.16 + 1  # the aspect draw stretches a side by up to sqrt(1.33)
        assert np.median(sides) >= 0.03 * short * 0.8
    assert read_voc(index.root, split="train").num_objects > 0


@pytest.mark.parametrize("options, message", [({"objects": (0, 5)}, "objects=(0, 5)"),
                                              ({"objects": (5, 2)}, "MIN <= MAX"),
                                              ({"object_size": (0.5, 2.0)}, "MAX <= 1"),
                                              ({"object_size": (0.0, 0.1)}, "MIN > 0")])
def test_shape_options_are_checked(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(BoxforgeError, match=re.escape(message)):
        synthesize_detection(tmp_path / "x", images=2, **options)


def test_cli_takes_min_max_pairs(tmp_path: Path, capsys) -> None:
    from boxforge.cli import main

    assert main(["synth", str(tmp_path / "d"), "--images", "3", "--objects", "8:8", "--object-size", "0.05:0.1"]) == 0
    assert "synthesized 3 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "e"), "--objects", "8-9"])
    assert "expected MIN:MAX" in capsys.readouterr().err
