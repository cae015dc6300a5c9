"""YOLO labels: Ultralytics `data.yaml` + `images/` + `labels/`, darknet `obj.data` + list files, loose folders.

A label line is `class cx cy w h`, normalised to the image size, so the reader
reads each image's header to return pixel boxes. Segment lines (`class x1 y1 x2
y2 ...`) become their bounding box, as Ultralytics does. A missing label file
means a background image (YOLO's own rule), reported as a warning.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from boxforge.data.formats import common
from boxforge.data.images import ImageReadError, read_header
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.problems import Problem
from boxforge.data.safety import is_inside, read_bytes_bounded, regular_file_problem, resolve_inside
from boxforge.errors import DatasetError, UnsafeInputError

IMAGE_DIR_NAMES = ("images", "Images", "JPEGImages")
LABEL_DIR_NAMES = ("labels", "Labels", "Annotations", "annotations")
MAX_LABEL_BYTES = 64 * 1024 * 1024


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(read_bytes_bounded(path, 1024 * 1024))
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: malformed YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a mapping of keys, found {type(doc).__name__}")
    return doc


def _names(doc: dict[str, Any], path: Path) -> list[str]:
    names = doc.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, str) and (path.parent / names).is_file():
        return common.read_class_file(path.parent / names)
    if isinstance(doc.get("nc"), int):
        return [str(i) for i in range(doc["nc"])]
    raise DatasetError(f"{path}: no 'names' (list or id -> name mapping) and no 'nc'")


def _locate(base: Path, entry: str, root: Path) -> Path | None:
    """Find a path a config names: as written, then without the `../` or `data/` prefix tools add."""
    text = entry.replace("\\", "/")
    tries = [text, text.lstrip("./").removeprefix("../"), text.removeprefix("data/")]
    for t in tries:
        for anchor in (base, root):
            candidate = anchor / t
            if candidate.exists():
                return candidate
    return None


YAML_SPLITS = ("train", "val", "test")
DARKNET_SPLITS = ("train", "valid", "test")  # obj.data's keys; `val` is accepted for `valid`


def yaml_split_names(path: Path) -> list[str]:
    """The splits a `data.yaml` names (non-empty `train`, `val`, `test` keys), in that order."""
    doc = read_yaml(path)
    return [k for k in YAML_SPLITS if doc.get(k)]


def darknet_split_names(obj_data: Path) -> list[str]:
    """The lists an `obj.data` names (`train`, `valid`, `test`), in that order."""
    keys = {line.split("=", 1)[0].strip() for line in common.read_lines(obj_data) if "=" in line}
    return [k for k in DARKNET_SPLITS if k in keys]


def folder_split_names(root: Path) -> list[str]:
    """Splits of a loose YOLO folder: `images/NAME/` folders, else `NAME.txt` lists at the root; sorted."""
    img_dir = next((root / n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), root)
    folders = sorted(d.name for d in img_dir.iterdir() if d.is_dir() and common.list_images(d)) if img_dir != root else []
    return folders or common.available_splits(root)


def read_data_yaml(path: Path, split: str | None = None) -> DatasetIndex:
    """Ultralytics/Roboflow `data.yaml`: `path`, `train`/`val`/`test` (folders, list files, or lists), `names`."""
    doc = read_yaml(path)
    root = path.parent
    if isinstance(doc.get("path"), str) and (path.parent / doc["path"]).is_dir():
        root = path.parent / doc["path"]
    classes = _names(doc, path)
    split_keys = [k for k in YAML_SPLITS if doc.get(k)]
    if split is not None and split not in split_keys:
        if split == "valid" and "val" in split_keys:
            split = "val"
        else:
            raise DatasetError(f"{path}: no split {split!r}; splits here: {', '.join(split_keys) or 'none'}")
    chosen = [split] if split else split_keys
    sources: list[tuple[str, Path]] = []
    missing: list[Problem] = []
    for key in chosen:
        entries = doc[key] if isinstance(doc[key], list) else [doc[key]]
        for entry in entries:
            found = _locate(path.parent, str(entry), root)
            if found is not None:
                sources.append((key, found))
                continue
            detail = f"{key}: {entry!r} does not exist (looked beside the YAML and under {root})"
            if split is not None:
                raise DatasetError(f"{path}: {detail}")
            missing.append(Problem("invalid_annotation", "error", "", path.name, f"{detail}; split skipped"))
    if not sources:
        raise DatasetError(f"{path}: none of the splits' folders exist: {'; '.join(p.detail for p in missing)}")
    if any((s.parent / "labelTxt").is_dir() for _, s in sources):
        raise DatasetError(f"{path}: oriented boxes (DOTA `labelTxt/`) are not supported; export axis-aligned YOLO labels")
    index = _read_sources(root, sources, classes, prefix_split=split is None and len(sources) > 1, split=split)
    index.problems[:0] = missing
    return index


def read_darknet(obj_data: Path, split: str | None = None) -> DatasetIndex:
    """darknet `obj.data` (`classes`, `train`, `valid`, `names`), list files of image paths."""
    entries: dict[str, str] = {}
    for line in common.read_lines(obj_data):
        if "=" in line:
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    root = obj_data.parent
    names_path = _locate(root, entries.get("names", "obj.names"), root)
    if names_path is None:
        raise DatasetError(f"{obj_data}: names file {entries.get('names')!r} not found")
    classes = common.read_class_file(names_path)
    keys = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
    chosen = [split] if split else [k for k in DARKNET_SPLITS if k in entries]
    sources = []
    for name in chosen:
        key = keys.get(name, name)
        if key not in entries:
            raise DatasetError(f"{obj_data}: no split {name!r}; it names: {', '.join(k for k in ('train', 'valid', 'test') if k in entries)}")
        found = _locate(root, entries[key], root)
        if found is None:
            raise DatasetError(f"{obj_data}: {key} list {entries[key]!r} not found")
        sources.append((name, found))
    return _read_sources(root, sources, classes, prefix_split=len(sources) > 1, split=split, image_base=root)


def read_yolo_folder(root: Path, split: str | None = None, classes: list[str] | None = None) -> DatasetIndex:
    """Loose layout: a class file, images under `images/[split]/` and labels under `labels/[split]/` (or beside)."""
    if classes is None:
        class_file = common.find_class_file(root)
        if class_file is None:
            raise DatasetError(f"{root}: YOLO labels need class names: add obj.names or classes.txt, or a data.yaml")
        classes = common.read_class_file(class_file)
    img_dir = next((root / n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), root)
    if split is not None:
        if (img_dir / split).is_dir():
            return _read_sources(root, [(split, img_dir / split)], classes, prefix_split=False, split=split)
        split_file = common.find_split_file(root, split)
        if split_file is None:
            raise DatasetError(f"{root}: no split {split!r} (no folder {img_dir / split} and no {split}.txt)")
        return _read_sources(root, [(split, split_file)], classes, prefix_split=False, split=split, image_base=root)
    return _read_sources(root, [("all", img_dir)], classes, prefix_split=False, split=None)


def _images_of(source: Path, image_base: Path, root: Path, problems: list[Problem]) -> tuple[Path, dict[str, Path]]:
    """(folder ids are relative to, id -> image path) for a folder or a list file of image paths."""
    if source.is_dir():
        return source, common.list_images(source)
    found: dict[str, Path] = {}
    for line in common.read_lines(source):
        located = _locate(image_base, line, root)
        try:
            path = resolve_inside(root, os.path.relpath(located, root)) if located else resolve_inside(image_base, line)
        except UnsafeInputError as exc:
            problems.append(Problem("unsafe_path", "error", "", _rel(root, source), str(exc)))
            continue
        found[common.id_from_relpath(os.path.relpath(path, root).replace(os.sep, "/"))] = path
    return root, found


def _label_path(image: Path, image_folder: Path) -> Path:
    """Ultralytics rule: swap the last `images` component for `labels`; else the label lies beside the image."""
    parts = list(image.with_suffix(".txt").parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in IMAGE_DIR_NAMES:
            for label_name in LABEL_DIR_NAMES:
                candidate = Path(*parts[:i], label_name, *parts[i + 1:])
                if candidate.is_file():
                    return candidate
            break
    return image.with_suffix(".txt")


def new_label_path(image: Path) -> Path:
    """Where a label file for `image`, which has none, goes: `_label_path`'s first choice (the last `images`
    folder swapped for `labels`), else beside the image."""
    parts = list(image.with_suffix(".txt").parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in IMAGE_DIR_NAMES:
            return Path(*parts[:i], LABEL_DIR_NAMES[0], *parts[i + 1:])
    return image.with_suffix(".txt")


def _read_sources(root: Path, sources: list[tuple[str, Path]], classes: list[str], *, prefix_split: bool,
                  split: str | None, image_base: Path | None = None) -> DatasetIndex:
    problems: list[Problem] = []
    samples: list[Sample] = []
    splits: dict[str, list[str]] = {}
    listed = [(name, *_images_of(source, image_base or root, root, problems)) for name, source in sources]
    all_ids = [i for _, _, images in listed for i in images]
    prefix_split = prefix_split and len(set(all_ids)) < len(all_ids)  # prefix only when ids would collide
    for split_name, base, images in listed:
        for image_id, image_path in images.items():
            full_id = f"{split_name}/{image_id}" if prefix_split else image_id
            splits.setdefault(split_name, []).append(full_id)
            samples.append(_sample(root, full_id, image_path, _label_path(image_path, base), len(classes), problems))
    if not samples and not problems:
        raise DatasetError(f"{root}: no images found in {', '.join(str(s) for _, s in sources)}")
    return DatasetIndex(classes=classes, samples=samples, format="yolo", root=root, split=split,
                        problems=problems, splits=splits if len(splits) > 1 else {})


def _rel(root: Path, path: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return str(path)


def _sample(root: Path, image_id: str, image_path: Path, label_path: Path, num_classes: int,
            problems: list[Problem]) -> Sample:
    sample = Sample(image_id, image_path)
    rel_img, rel_lbl = _rel(root, image_path), _rel(root, label_path)
    if not label_path.is_file():
        problems.append(Problem("missing_annotation", "warning", rel_img, "", "no label file: treated as a background image"))
        return sample
    if not is_inside(root, label_path):
        problems.append(Problem("unsafe_path", "error", rel_img, rel_lbl, f"label file leads outside the dataset root "
                                                                        f"(to {os.path.realpath(label_path)}); refusing to open it"))
        return sample
    sample.annotation_path = label_path
    why = regular_file_problem(label_path)
    rows = []
    try:
        if why:
            raise UnsafeInputError(why)
        text = read_bytes_bounded(label_path, MAX_LABEL_BYTES).decode("utf-8")
        rows = parse_label_rows(text, num_classes, rel_img, rel_lbl, problems)
    except (UnsafeInputError, UnicodeDecodeError) as exc:
        problems.append(Problem("unsafe_path" if why else "invalid_annotation", "error", rel_img, rel_lbl, str(exc)))
    if not rows or not is_inside(root, image_path):  # an image outside the root: load_dataset reports it
        return sample
    try:
        header = read_header(image_path)
        sample.width, sample.height = header.display_size
    except (OSError, ImageReadError, UnsafeInputError) as exc:
        problems.append(Problem("unreadable_image", "error", rel_img, rel_lbl,
                                f"cannot read the image size needed to place normalised boxes: {exc}"))
        return sample
    arr = np.array([r[1:] for r in rows], dtype=np.float64)
    w, h = sample.width, sample.height
    # A huge or infinite number in a label file becomes inf or NaN here, which the index reports as a
    # nan_box problem naming the file; numpy's overflow/invalid RuntimeWarning would only repeat that, unnamed.
    with np.errstate(over="ignore", invalid="ignore"):
        cx, cy, bw, bh = arr[:, 0] * w, arr[:, 1] * h, arr[:, 2] * w, arr[:, 3] * h
        sample.boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    sample.labels = np.array([r[0] for r in rows], dtype=np.int64)
    sample.__post_init__()
    return sample


def parse_label_rows(text: str, num_classes: int, rel_img: str, rel_lbl: str,
                problems: list[Problem]) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {line_no}"
        try:
            cls_value = float(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(Problem("invalid_annotation", "error", rel_img, rel_lbl, f"{where}: {line.strip()[:80]!r} is not numbers"))
            continue
        if not cls_value.is_integer() or not 0 <= cls_value < num_classes:
            problems.append(Problem("unknown_class", "error", rel_img, rel_lbl,
                                    f"{where}: class id {fields[0]} is out of range 0..{num_classes - 1}"))
            continue
        if len(values) == 4:
            rows.append((int(cls_value), *values))
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            if any(math.isnan(v) for v in values):
                rows.append((int(cls_value), math.nan, math.nan, math.nan, math.nan))
                continue
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            rows.append((int(cls_value), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
        else:
            problems.append(Problem("invalid_annotation", "error", rel_img, rel_lbl,
                                    f"{where}: {len(fields)} fields; expected 'class cx cy w h' or a segment 'class x1 y1 x2 y2 ...'"))
    return rows
