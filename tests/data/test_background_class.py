"""A class file that begins with `background` (MindSpore SSD, datumaro's VOC labelmap.txt) names no class.

The MindSpore SSD transfer-learning guide trains on the microcontroller set as a text list
(`path x1,y1,x2,y2,cls`, 1-based ids) with a class file that lists `background` first; built
here from the set's own XML files, the way the guide's users convert it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

from boxforge import load_dataset
from boxforge.errors import DatasetError
from tests.conftest import SAMPLES, SHARED, write_image

MICRO = SHARED / "microcontroller"
GUIDE_CLASSES = ["Arduino_Nano", "ESP8266", "Raspberry_Pi_3", "Heltec_ESP32_Lora"]  # the guide's order, not sorted


def _objects(xml: Path) -> list[tuple[str, list[int]]]:
    root = ElementTree.parse(xml).getroot()
    return [(o.findtext("name"), [int(float(o.find("bndbox").findtext(t))) for t in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


@pytest.fixture(scope="module")
def mindspore_list(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """(test.txt of the microcontroller test images, {image id: class names from the XML}), ids 1-based."""
    root = tmp_path_factory.mktemp("mindspore") / "microcontroller"
    (root / "test").mkdir(parents=True)
    ids = ["background", *GUIDE_CLASSES]  # the guide's label ids: background 0, classes from 1
    lines, truth = [], {}
    for xml in sorted((MICRO / "test").glob("*.xml")):
        shutil.copy(xml.with_suffix(".jpg"), root / "test" / f"{xml.stem}.jpg")
        objects = _objects(xml)
        boxes = [",".join(map(str, [*box, ids.index(name)])) for name, box in objects]
        lines.append(" ".join([f"test/{xml.stem}.jpg", *boxes]))
        truth[f"test/{xml.stem}"] = [name for name, _ in objects]
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root / "test.txt", truth


@pytest.mark.parametrize("first_line", ["background", "__background__", "_Background_", None])
def test_mindspore_text_list_ids_map_to_the_right_names(mindspore_list, first_line: str | None) -> None:
    list_file, truth = mindspore_list
    names = ([first_line] if first_line else []) + GUIDE_CLASSES
    (list_file.parent / "classes.txt").write_text("\n".join(names) + "\n")
    index = load_dataset(list_file)
    assert index.format == "txt" and index.classes == GUIDE_CLASSES  # with or without the background line
    assert len(index) == len(truth) == 7 and index.num_objects == sum(map(len, truth.values()))
    assert {n for names in truth.values() for n in names} == set(GUIDE_CLASSES)  # every id is exercised
    assert not [p for p in index.problems if p.severity == "error"]
    for sample in index.samples:
        assert [index.classes[i] for i in sample.labels] == truth[sample.image_id]


def test_a_yaml_class_list_with_background_first_is_read_the_same(mindspore_list, tmp_path: Path) -> None:
    list_file, truth = mindspore_list
    spec = tmp_path / "micro.yaml"
    spec.write_text(f"format: txt\nroot: {list_file.parent}\ntest: test.txt\n"
                    f"classes: [background, {', '.join(GUIDE_CLASSES)}]\n")
    index = load_dataset(spec, split="test")
    assert index.classes == GUIDE_CLASSES
    assert all([index.classes[i] for i in s.labels] == truth[s.image_id] for s in index.samples)


def test_datumaro_voc_labelmap_drops_its_background_entry() -> None:
    index = load_dataset(SAMPLES / "voc_dataset/voc_dataset2")
    assert index.classes[:2] == ["aeroplane", "bicycle"] and len(index.classes) == 21
    assert index.num_objects == 3  # aeroplane, bicycle, bird; a.xml's box named "background" is reported
    problem = next(p for p in index.problems if p.kind == "unknown_class")
    assert "class 'background' is not in the class list" in problem.detail
    assert "names no class" in problem.detail


def test_yolo_names_keep_a_class_called_background(tmp_path: Path) -> None:
    """0-based ids: index 0 is a real class, whatever it is called."""
    write_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    (tmp_path / "obj.names").write_text("background\nduck\n")
    index = load_dataset(tmp_path)
    assert index.format == "yolo" and index.classes == ["background", "duck"]
    assert index.samples[0].labels.tolist() == [0, 1]


def test_a_class_file_of_only_background_is_one_error(mindspore_list) -> None:
    list_file, _ = mindspore_list
    (list_file.parent / "classes.txt").write_text("background\n")
    with pytest.raises(DatasetError, match=r"classes.txt: the class list names only 'background'"):
        load_dataset(list_file)
