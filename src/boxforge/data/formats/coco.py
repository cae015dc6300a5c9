"""COCO instances JSON (also Roboflow `_annotations.coco.json`, mmdet layouts, keypoints files).

Category ids may have gaps (COCO's 1..90 for 80 classes); classes are ordered by
category id and the mapping is kept in `category_ids` so evaluation and export
can write the original ids back. Crowd regions become `difficult`.
Images need not exist: evaluation only reads annotations.

`index.meta` keeps what evaluation needs to score against the file itself (see
evaluation/coco.py): `annotation_file`, `coco_image_ids` (image id -> the file's id),
`category_ids` (in class order) and `annotation_positions`, the position in the file's
`annotations` list of every box the index holds (an int64 array, 8 bytes a box).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.formats.common import strip_image_ext
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.problems import Problem
from boxforge.data.safety import MAX_JSON_BYTES, read_bytes_bounded, resolve_inside
from boxforge.errors import DatasetError, UnsafeInputError


def load_json(path: Path) -> Any:
    """Parse a JSON file with a size bound and a one-line error naming the file and the position."""
    data = read_bytes_bounded(path, MAX_JSON_BYTES)
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 JSON (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def find_coco_json(root: Path, split: str | None) -> Path:
    """The instances file for `split` in a COCO-style folder (several conventions)."""
    ann = root / "annotations"
    names = []
    if split:
        names += [ann / f"instances_{split}.json", ann / f"instances_{split}2017.json", ann / f"{split}.json",
                  root / split / "_annotations.coco.json", root / f"{split}.json"]
    else:
        names += [root / "_annotations.coco.json"]
        names += sorted(ann.glob("instances_*.json")) if ann.is_dir() else []
    for candidate in names:
        if candidate.is_file():
            return candidate
    offered = sorted(p.name for p in ann.glob("*.json")) if ann.is_dir() else []
    raise DatasetError(f"{root}: no COCO instances file for split {split!r}; found: {', '.join(offered) or 'none'}")


def split_names(root: Path) -> list[str]:
    """The splits of a COCO folder, as `find_coco_json` finds them: `annotations/instances_NAME.json` (COCO's
    own: train2017, val2017) or Roboflow's `NAME/_annotations.coco.json` (train, valid, test); sorted."""
    ann = root / "annotations"
    names = {f.stem.removeprefix("instances_") for f in ann.glob("instances_*.json")} if ann.is_dir() else set()
    names |= {f.parent.name for f in root.glob("*/_annotations.coco.json")}
    return sorted(names)


def _image_dir(json_path: Path, root: Path, split: str | None, file_names: list[str]) -> Path:
    """Where the images of a COCO file live: the first candidate folder holding the first image."""
    stem = json_path.stem
    split_name = split or stem.split("_", 1)[-1]
    candidates = [root / "images" / split_name, root / split_name, root / "images" / stem, root / "images",
                  json_path.parent, root]
    plain = [n for n in file_names if n and not os.path.isabs(n) and ".." not in Path(n).parts][:5]
    for folder in candidates:
        for name in plain:  # never probe a path that would leave the folder
            if (folder / name).is_file():
                return folder
    return candidates[0] if (root / "images").is_dir() else json_path.parent


def read_coco(json_path: Path, root: Path | None = None, split: str | None = None,
              image_dir: Path | None = None) -> DatasetIndex:
    """Read a COCO instances file. `root` defaults to the folder above `annotations/` or the file's folder."""
    json_path = Path(json_path)
    if root is None:
        root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    doc = load_json(json_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{json_path}: not a COCO file (no 'images' list at the top level)")
    categories = doc.get("categories") or []
    annotations = doc.get("annotations") or []
    if not isinstance(categories, list) or not isinstance(annotations, list):
        raise DatasetError(f"{json_path}: 'categories' and 'annotations' must be lists")
    if not categories:
        raise DatasetError(f"{json_path}: COCO file has no 'categories'; a detection set needs instances "
                           "(captions and image-info files hold no boxes)")
    if annotations and all(isinstance(a, dict) and "bbox" not in a for a in annotations):
        raise DatasetError(f"{json_path}: annotations have no 'bbox' (a COCO labels, captions or panoptic file, "
                           "not instances); pass an instances_*.json")
    for number, c in enumerate(categories):
        if isinstance(c, dict) and "id" in c and not is_id(c["id"]):
            raise DatasetError(f"{json_path}: categories[{number}] has id {c['id']!r}; ids must be integers or strings")
    cats = category_order(categories)
    classes = [str(c.get("name", c["id"])) for c in cats]
    cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
    rel_json = _rel(root, json_path)

    problems: list[Problem] = []
    file_names = [str(im.get("file_name", "")) for im in doc["images"] if isinstance(im, dict)]
    img_dir = image_dir or _image_dir(json_path, root, split, file_names)
    samples: dict[Any, Sample] = {}
    for number, im in enumerate(doc["images"]):
        sample = _image(im, number, img_dir, root, rel_json, problems)
        if sample is not None:
            samples[im["id"]] = sample
    per_image: dict[Any, list[tuple[np.ndarray, int, bool, int]]] = {k: [] for k in samples}
    for number, ann in enumerate(annotations):
        _annotation(ann, number, samples, cat_to_label, per_image, root, rel_json, problems)
    positions: list[int] = []
    for image_key, objects in per_image.items():
        if objects:
            s = samples[image_key]
            s.boxes = np.stack([o[0] for o in objects])
            s.labels = np.array([o[1] for o in objects], dtype=np.int64)
            s.difficult = np.array([o[2] for o in objects], dtype=bool)
            s.__post_init__()
            positions.extend(o[3] for o in objects)
    meta = {"category_ids": [c["id"] for c in cats],
            "coco_image_ids": {s.image_id: key for key, s in samples.items()},
            "annotation_file": str(json_path),
            "annotation_positions": np.array(positions, dtype=np.int64)}
    return DatasetIndex(classes=classes, samples=list(samples.values()), format="coco", root=root,
                        split=split, problems=problems, meta=meta)


def category_order(categories: list[Any]) -> list[dict[str, Any]]:
    """The categories in class order: by id (integers before strings). Class index i is the i-th of these."""
    return sorted((c for c in categories if isinstance(c, dict) and "id" in c), key=lambda c: (str(type(c["id"])), c["id"]))


# x2 - x1 in float64 carries ~1e-13 px of noise (0.3 - 0.1 = 0.19999999999999998); rounding the width to
# 10 decimals gives back a COCO file's own w (two decimals in COCO's files) exactly, so COCO -> COCO and
# COCO -> VOC -> COCO keep every bbox number.
WIDTH_DECIMALS = 10


def coco_box(box: list[float] | tuple[float, ...]) -> tuple[list[float], float]:
    """(bbox [x, y, w, h], area) of an xyxy box, as boxforge writes COCO files (see WIDTH_DECIMALS)."""
    w, h = round(box[2] - box[0], WIDTH_DECIMALS), round(box[3] - box[1], WIDTH_DECIMALS)
    return [box[0], box[1], w, h], w * h


def is_bbox(value: Any) -> bool:
    """A bbox the reader keeps: a list of four numbers [x, y, w, h] (their validity is `check`'s business)."""
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def is_id(value: Any) -> bool:
    """COCO ids are integers (strings tolerated); anything else (lists, null, floats) cannot key a lookup."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _image(im: Any, number: int, img_dir: Path, root: Path, rel_json: str, problems: list[Problem]) -> Sample | None:
    if not isinstance(im, dict) or not is_id(im.get("id")) or not im.get("file_name"):
        problems.append(Problem("invalid_annotation", "error", "", rel_json,
                                f"images[{number}] lacks an integer 'id' or a 'file_name'"))
        return None
    file_name = str(im["file_name"])
    try:
        path = resolve_inside(img_dir, file_name)
    except UnsafeInputError as exc:
        problems.append(Problem("unsafe_path", "error", "", rel_json, f"images[{number}] (id {im['id']}): {exc}"))
        return None
    width, height = im.get("width", 0), im.get("height", 0)
    size_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 2**31
                  for v in (width, height))
    if not size_ok:
        problems.append(Problem("invalid_annotation", "error", file_name, rel_json,
                                f"images[{number}] has width/height {width!r}/{height!r}"))
        width, height = 0, 0
    return Sample(strip_image_ext(file_name), path, int(width), int(height), annotation_path=root / rel_json)


def _annotation(ann: Any, number: int, samples: dict[Any, Sample], cat_to_label: dict[Any, int],
                per_image: dict[Any, list], root: Path, rel_json: str, problems: list[Problem]) -> None:
    where = f"annotations[{number}]"
    if not isinstance(ann, dict):
        problems.append(Problem("invalid_annotation", "error", "", rel_json, f"{where} is not an object"))
        return
    sample = samples.get(ann.get("image_id")) if is_id(ann.get("image_id")) else None
    image = _rel(root, sample.image_path) if sample and sample.image_path else ""
    if sample is None:
        problems.append(Problem("invalid_annotation", "error", "", rel_json,
                                f"{where} refers to image_id {ann.get('image_id')!r}, which is not in 'images'"))
        return
    if not is_id(ann.get("category_id")) or ann.get("category_id") not in cat_to_label:
        problems.append(Problem("unknown_class", "error", image, rel_json,
                                f"{where} has category_id {ann.get('category_id')!r}, not in 'categories'"))
        return
    bbox = ann.get("bbox")
    if not is_bbox(bbox):
        problems.append(Problem("invalid_annotation", "error", image, rel_json, f"{where} has bbox {bbox!r}, expected [x, y, w, h]"))
        return
    crowd = bool(ann.get("iscrowd", 0)) or bool(ann.get("difficult", 0))  # `difficult`: boxforge's VOC flag
    per_image[ann["image_id"]].append((xyxy(bbox), cat_to_label[ann["category_id"]], crowd, number))


def xyxy(bbox: list[float]) -> list[float]:
    """[x, y, x + w, y + h] (Python floats, i.e. float64, as pycocotools computes) of a COCO bbox [x, y, w, h]:
    the conversion the reader and the COCO evaluator's check of the file against the index share.
    An integer beyond float range becomes +-inf (`check` reports the box as non-finite)."""
    x, y, w, h = (_float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # a JSON integer with 400 digits
        return math.inf if value > 0 else -math.inf
