"""The ground truth pycocotools scores against: a COCO file as it is, or one built from any other index.

From a COCO file (an index whose reader kept `annotation_file` and `annotation_positions` in
`index.meta`), the ground truth is that file as `COCO(path)` reads it: its categories, the image
entries and every annotation dict of the evaluated images, unchanged (the file's `id`, float64
`bbox`, `area` (the segmentation's, not w * h) and `iscrowd`, crowd RLE regions included). So the
12 numbers are pycocotools' own on the user's file, whether the detections come from a model, a
boxforge predictions file or a COCO results list. Where "the file as it is" needs a choice:

- Evaluated images: those the index holds; all of the file's, unless the reader left one out
  (no `id` or `file_name`, a file name leading outside the folder: problems `check` reports) or
  the caller passed a subset. pycocotools with `params.imgIds` set to them gives the same numbers.
- Annotations the reader left out (problems `check` reports): those with an unknown `category_id`
  or `image_id` pycocotools ignores too; those that are not objects or have no usable `bbox`
  (four numbers) would stop pycocotools with an exception, and are left out. So on every file
  pycocotools can evaluate, the numbers are its numbers.
- A missing `area` (pycocotools: KeyError) becomes the box area w * h and a missing `iscrowd` 0,
  in boxforge's copy only, each with a note.
- boxforge's `difficult` key (which `convert` writes for VOC difficult boxes) is not COCO: on a
  COCO file those boxes count as ordinary objects in the COCO numbers, as in pycocotools; the
  VOC metrics still ignore them.
- Annotation id 0 (Roboflow exports start there): pycocotools records a match by the ground
  truth's id with 0 meaning "unmatched", so a detection matched to it counts as a false positive.
  Kept (these are pycocotools' numbers), with a note.

The file is read again here (the index keeps 8 bytes a box, not the file's dicts) and checked
against the index box for box; a file that changed since it was read, or an index edited in
memory, is an error rather than silently different numbers.

Any other index (VOC, YOLO, txt, a merged COCO train + val, one made in memory) gets a ground
truth built from its boxes: category ids 1..K in class order, image ids 1..N in index order,
annotation ids 1..M, area w * h (xywh, no +1), and `difficult` as `iscrowd=1`, the one way to make
pycocotools ignore a box (its `_prepare` overwrites any `ignore` field with `iscrowd`). Then, as
in the VOC devkit, a difficult box never counts toward recall, detections matched to it are
ignored (not false positives) and any number of detections may match it; unlike VOC, crowd IoU is
intersection over the detection's area, so a small detection inside a difficult box is ignored too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.formats.coco import load_json, xyxy
from boxforge.data.index import DatasetIndex
from boxforge.errors import DatasetError


def coco_ids(index: DatasetIndex) -> tuple[dict[str, Any], list[Any]]:
    """(image id -> COCO image id, COCO category id per class): the original ids when the index has them all."""
    meta = index.meta
    original_images = meta.get("coco_image_ids") or {}
    if index.format == "coco" and original_images and all(s.image_id in original_images for s in index.samples):
        images = {s.image_id: original_images[s.image_id] for s in index.samples}
    else:
        images = {s.image_id: number for number, s in enumerate(index.samples, start=1)}
    categories = meta.get("category_ids")
    if index.format != "coco" or not categories or len(categories) != len(index.classes):
        categories = list(range(1, len(index.classes) + 1))
    return images, list(categories)


def from_file(index: DatasetIndex) -> bool:
    """True when the ground truth is the index's COCO file itself (see the module docstring)."""
    meta = index.meta
    images = meta.get("coco_image_ids") or {}
    return (index.format == "coco" and bool(meta.get("annotation_file")) and "annotation_positions" in meta
            and len(meta.get("category_ids") or ()) == len(index.classes)
            and all(s.image_id in images for s in index.samples))


def ground_truth(index: DatasetIndex) -> tuple[dict[str, Any], list[str]]:
    """(COCO instances dict {"images", "categories", "annotations"}, notes): the file's own content for an
    index read from a COCO file, else one built from the index; see the module docstring."""
    if from_file(index):
        return file_ground_truth(index)
    return index_to_coco(index), []


def index_to_coco(index: DatasetIndex) -> dict[str, Any]:
    """The index's boxes as a COCO instances dict (ids from `coco_ids`, area w * h, difficult as iscrowd)."""
    images, categories = coco_ids(index)
    doc: dict[str, Any] = {
        "images": [{"id": images[s.image_id], "file_name": s.image_id, "width": s.width, "height": s.height}
                   for s in index.samples],
        "categories": [{"id": cid, "name": name} for cid, name in zip(categories, index.classes)],
        "annotations": [],
    }
    for s in index.samples:
        for bbox, label, crowd in zip(xywh(s.boxes), s.labels.tolist(), s.difficult.tolist()):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": images[s.image_id],
                                       "category_id": categories[label], "bbox": bbox,
                                       "area": bbox[2] * bbox[3], "iscrowd": int(crowd)})
    return doc


def xywh(boxes: np.ndarray) -> list[list[float]]:
    """(N, 4) xyxy -> N [x, y, w, h] lists of Python floats (float64, w = x2 - x1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).tolist()


def file_ground_truth(index: DatasetIndex) -> tuple[dict[str, Any], list[str]]:
    """The annotation file's images, categories and annotations for the index's images, dicts unchanged
    (a copy only where `area` or `iscrowd` is missing), after checking them against the index."""
    path = Path(index.meta["annotation_file"])
    doc = load_json(path)
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list) or not isinstance(doc.get("images"), list):
        raise _changed(path, "it no longer has 'images' and 'annotations' lists")
    coco_image = index.meta["coco_image_ids"]
    wanted = {coco_image[s.image_id] for s in index.samples}
    kept = []
    for position in np.asarray(index.meta["annotation_positions"], dtype=np.int64).tolist():
        ann = annotations[position] if position < len(annotations) else None
        if not isinstance(ann, dict) or not _hashable(ann.get("image_id")):
            raise _changed(path, f"annotations[{position}] is no longer the object it was")
        if ann["image_id"] in wanted:
            kept.append(ann)
    _check_against_index(kept, index, path)
    notes = []
    missing = {key: sum(key not in a for a in kept) for key in ("area", "iscrowd")}
    if any(missing.values()):
        kept = [_completed(a) for a in kept]
    if missing["area"]:
        notes.append(f"{path}: {missing['area']} annotations have no 'area' (pycocotools would stop with a "
                     "KeyError); their box area w * h is used for the small/medium/large ranges")
    if missing["iscrowd"]:
        notes.append(f"{path}: {missing['iscrowd']} annotations have no 'iscrowd'; taken as 0 (not crowd)")
    if any(a.get("id") == 0 for a in kept):
        notes.append(f"{path}: an annotation has id 0; pycocotools marks matches with the ground truth's id, "
                     "0 meaning unmatched, so a detection matching it counts as a false positive (COCO numbers "
                     "kept equal to pycocotools'; ids from 1 avoid this)")
    images = [im for im in doc["images"] if isinstance(im, dict) and _hashable(im.get("id")) and im["id"] in wanted]
    categories = [c for c in doc.get("categories") or [] if isinstance(c, dict) and "id" in c]
    return {"images": images, "categories": categories, "annotations": kept}, notes


def _check_against_index(kept: list[dict[str, Any]], index: DatasetIndex, path: Path) -> None:
    """Raise unless the file's annotations give, image by image and in order, the index's boxes and labels."""
    label_of = {cid: label for label, cid in enumerate(index.meta["category_ids"])}
    per_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in kept:
        per_image.setdefault(ann["image_id"], []).append(ann)
    coco_image = index.meta["coco_image_ids"]
    for s in index.samples:
        anns = per_image.get(coco_image[s.image_id], [])
        try:
            boxes = np.array([xyxy(a["bbox"]) for a in anns], dtype=np.float64).reshape(-1, 4)  # as the reader
            labels = [label_of[a["category_id"]] for a in anns]
        except (KeyError, TypeError, ValueError):
            raise _changed(path, f"an annotation of image {s.image_id!r} lost its bbox or category") from None
        if len(anns) != s.num_objects:
            raise _changed(path, f"image {s.image_id!r} has {len(anns)} usable boxes there, {s.num_objects} "
                                 "in the index")
        if not np.array_equal(boxes, s.boxes, equal_nan=True) or labels != s.labels.tolist():
            raise _changed(path, f"the boxes or classes of image {s.image_id!r} differ from the index's")


def _changed(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{path}: does not match the dataset read from it ({what}): the file changed since it "
                        "was read, or the index was edited in memory. Read the dataset again; to score an edited "
                        "index's own boxes, remove 'annotation_file' from index.meta")


def _completed(ann: dict[str, Any]) -> dict[str, Any]:
    if "area" in ann and "iscrowd" in ann:
        return ann
    out = dict(ann)
    out.setdefault("iscrowd", 0)
    if "area" not in out:
        _, _, w, h = (float(v) for v in out["bbox"])
        out["area"] = w * h
    return out


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)
