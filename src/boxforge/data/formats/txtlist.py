"""Text lists: `relative/path.jpg x1,y1,x2,y2,class_id ...` a line, class ids 1-based.

This is the annotation format of the MindSpore SSD transfer-learning guide (and
of many keras-yolo forks). Class id 0 is the background there, so `1` is the
first real class: the first name in the class-names file, or the second when the
file lists `background` first, as MindSpore's do (`common.drop_background`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.formats import common
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.problems import Problem
from boxforge.data.safety import resolve_inside
from boxforge.errors import DatasetError, UnsafeInputError


def looks_like_txtlist(path: Path) -> bool:
    """True when the first data line has the `path x1,y1,x2,y2,c` shape."""
    try:
        lines = common.read_lines(path)[:5]
    except (DatasetError, UnsafeInputError):
        return False
    return any(len(line.split()) >= 2 and line.split()[1].count(",") == 4 for line in lines)


def read_txtlist(list_file: Path, classes: list[str] | None = None, root: Path | None = None) -> DatasetIndex:
    """Read a text list; image paths are relative to `root` (default: the list file's folder)."""
    root = root or list_file.parent
    if classes is None:
        class_file = common.find_class_file(list_file.parent, root)
        if class_file is None:
            raise DatasetError(f"{list_file}: a text list needs class names (classes.txt beside it, or 'classes' in a dataset YAML)")
        classes = common.read_class_file(class_file)
        where: str | Path = class_file
    else:
        where = f"{list_file}: the class list"
    classes = common.drop_background(classes, where)
    rel_list = Path(os.path.relpath(list_file, root)).as_posix()
    problems: list[Problem] = []
    samples: list[Sample] = []
    for line_no, line in enumerate(common.read_lines(list_file), start=1):
        fields = line.split()
        try:
            path = resolve_inside(root, fields[0])
        except UnsafeInputError as exc:
            problems.append(Problem("unsafe_path", "error", "", rel_list, f"line {line_no}: {exc}"))
            continue
        sample = Sample(common.id_from_relpath(fields[0]), path, annotation_path=list_file)
        boxes, labels = [], []
        for number, field in enumerate(fields[1:], start=1):
            parsed = parse_box_field(field, len(classes), f"line {line_no} box {number}", fields[0], rel_list, problems)
            if parsed is not None:
                boxes.append(parsed[0])
                labels.append(parsed[1])
        if boxes:
            sample.boxes = np.array(boxes, dtype=np.float64)
            sample.labels = np.array(labels, dtype=np.int64)
            sample.__post_init__()
        samples.append(sample)
    return DatasetIndex(classes=classes, samples=samples, format="txt", root=root, problems=problems)


def parse_box_field(field: str, num_classes: int, where: str, image: str, rel_list: str,
         problems: list[Problem]) -> tuple[list[float], int] | None:
    parts = field.split(",")
    if len(parts) != 5:
        problems.append(Problem("invalid_annotation", "error", image, rel_list, f"{where}: {field!r} is not x1,y1,x2,y2,class_id"))
        return None
    try:
        coords = [float(p) for p in parts[:4]]
        class_id = int(parts[4])
    except ValueError:
        problems.append(Problem("invalid_annotation", "error", image, rel_list, f"{where}: {field!r} has a value that is not a number"))
        return None
    if not 1 <= class_id <= num_classes:
        problems.append(Problem("unknown_class", "error", image, rel_list,
                                f"{where}: class id {class_id} is out of range 1..{num_classes} (ids are 1-based)"))
        return None
    return coords, class_id - 1


def format_txtlist_line(sample: Sample, relpath: str) -> str:
    """One line of the list: integers where the box is integral, else the shortest text that reads back as the
    same float64 (48.27, not 48.2700004); 1-based class ids."""
    return " ".join([relpath] + [format_box_field(box, label) for box, label in zip(sample.boxes, sample.labels)])


def format_box_field(box: Any, label: int) -> str:
    """`x1,y1,x2,y2,class` of one box (see format_txtlist_line)."""
    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return ",".join([*(num(v) for v in box), str(int(label) + 1)])
