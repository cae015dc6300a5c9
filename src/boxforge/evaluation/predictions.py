"""The predictions file that `predict` writes and `evaluate` reads.

One JSON object, self-describing and diffable:

    {"classes": ["cat", "dog"],
     "predictions": [{"image": "2007_000027", "label": "dog", "score": 0.93, "box": [x1, y1, x2, y2]}, ...]}

`image` is the index's image id (not a file name, not a COCO integer id) and
`box` is xyxy in the dataset's own pixel coordinates (VOC: 1-based, as in the
XML), so the evaluators compare like with like. Labels are names, not numbers:
a model trained with another class order still evaluates correctly.

A COCO detection results list (`[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`,
what detectron2 and mmdet write) is read too when the index is COCO, through the
original ids the COCO reader kept in `index.meta`; the list itself is kept
(`Predictions.coco_results`) so the COCO evaluator hands pycocotools the file's entries unchanged.

Detections of classes the dataset does not have (a COCO-trained detector scored on a
30-class set) are left out and counted in `Predictions.ignored`, as pycocotools (which
only scores the ground truth's category ids) and the VOC devkit (which scores only its
classes) do; `strict_classes=True` makes them an error. Image ids the dataset does not
have are always an error: the file belongs to another dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.formats.coco import load_json
from boxforge.data.index import DatasetIndex
from boxforge.errors import PredictionsError
from boxforge.files import write_json

MAX_NAMED = 5  # unknown ids/classes listed by name in an error; the rest are counted


@dataclass
class ImagePredictions:
    """The detections of one image.

    boxes: (M, 4) float64 xyxy, dataset pixel coordinates.
    scores: (M,) float64, higher is more confident.
    labels: (M,) int64 indexes into `Predictions.classes`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        m = len(self.boxes)
        try:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(m)
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(m)
        except ValueError as exc:
            raise PredictionsError(f"{m} boxes need {m} scores and {m} labels: {exc}") from exc

    def __len__(self) -> int:
        return int(len(self.boxes))


@dataclass
class FlatPredictions:
    """All detections as parallel arrays, the shape the evaluators vectorise over.

    image: (D,) int64 position of the image in the evaluated index.
    boxes: (D, 4) float64; scores: (D,) float64; labels: (D,) int64.
    """

    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class Predictions:
    """Detections per image id; images without detections may be absent.

    ignored: class name (or `category_id N` of a COCO results list) -> detections `load_predictions`
        left out because the dataset has no such class.
    coco_results: the COCO results list these detections were read from, entries as in the file
        (None otherwise); `add` drops it, since the detections then differ from the list.
    """

    classes: list[str]
    images: dict[str, ImagePredictions] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    coco_results: list[dict[str, Any]] | None = field(default=None, repr=False)

    def add(self, image_id: str, boxes: Any, scores: Any, labels: Any) -> None:
        """Append detections for `image_id` (after any it already has)."""
        self.coco_results = None
        new = ImagePredictions(boxes, scores, labels)
        bad = new.labels[(new.labels < 0) | (new.labels >= len(self.classes))]
        if bad.size:
            raise PredictionsError(f"image {image_id!r}: label {int(bad[0])} is outside 0..{len(self.classes) - 1} "
                                   f"({len(self.classes)} classes)")
        old = self.images.get(image_id)
        if old is not None:
            new = ImagePredictions(np.concatenate([old.boxes, new.boxes]), np.concatenate([old.scores, new.scores]),
                                   np.concatenate([old.labels, new.labels]))
        self.images[image_id] = new

    def __len__(self) -> int:
        return sum(len(p) for p in self.images.values())

    def flatten(self, image_ids: Sequence[str]) -> FlatPredictions:
        """Concatenate in the order of `image_ids` (the index's order), which fixes the tie order of equal scores.

        Raises PredictionsError naming a few ids that are not in `image_ids`.
        """
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        check_image_ids(self.images, position)
        parts = sorted((position[k], p) for k, p in self.images.items() if len(p))
        if not parts:
            return FlatPredictions(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
        return FlatPredictions(
            image=np.repeat(np.array([i for i, _ in parts], dtype=np.int64), [len(p) for _, p in parts]),
            boxes=np.concatenate([p.boxes for _, p in parts]),
            scores=np.concatenate([p.scores for _, p in parts]),
            labels=np.concatenate([p.labels for _, p in parts]))


def class_mapping(names: Sequence[str], onto: Sequence[str]) -> np.ndarray:
    """(len(names),) int64: the index of each name in `onto`, -1 where `onto` lacks it. Classes are matched
    by name everywhere (a model trained with another class order still evaluates correctly)."""
    position = {name: i for i, name in enumerate(onto)}
    return np.array([position.get(name, -1) for name in names], dtype=np.int64)


def check_image_ids(found: Any, known: Any, where: str = "predictions") -> None:
    """Raise naming up to MAX_NAMED ids of `found` that are not in `known`."""
    unknown = [k for k in found if k not in known]
    if unknown:
        named = ", ".join(repr(k) for k in unknown[:MAX_NAMED])
        more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
        raise PredictionsError(f"{where}: {len(unknown)} image id(s) not in the dataset: {named}{more}")


def load_predictions(path: str | Path, index: DatasetIndex, *, strict_classes: bool = False) -> Predictions:
    """Read a boxforge predictions file or a COCO results list, with labels mapped to `index.classes`.

    Detections of classes `index` lacks are counted in `.ignored` and left out, or with
    `strict_classes` an error naming them.
    """
    path = Path(path)
    return predictions_from_doc(load_json(path), index, source=path, strict_classes=strict_classes)


def predictions_from_doc(doc: Any, index: DatasetIndex, *, source: str | Path = "predictions",
                         strict_classes: bool = False) -> Predictions:
    """`load_predictions` of a document already parsed (e.g. from an archive); `source` names it in errors."""
    path = Path(source)
    if isinstance(doc, list):
        return _from_coco_results(doc, path, index, strict_classes)
    if not isinstance(doc, dict) or not isinstance(doc.get("predictions"), list):
        raise PredictionsError(f"{path}: not a predictions file: expected an object with a 'predictions' list "
                               "or a COCO results list [{image_id, category_id, bbox, score}]")
    file_classes = doc.get("classes", [])
    if not isinstance(file_classes, list) or not all(isinstance(c, str) for c in file_classes):
        raise PredictionsError(f"{path}: 'classes' must be a list of names, found {file_classes!r:.80}")
    label_of = {name: i for i, name in enumerate(index.classes)}
    grouped: dict[str, tuple[list, list, list]] = {}
    unknown_classes: dict[str, int] = {}  # name -> first position
    ignored: dict[str, int] = {}
    images: dict[str, None] = {}
    for number, entry in enumerate(doc["predictions"]):
        where = f"{path}: predictions[{number}]"
        if not isinstance(entry, dict):
            raise PredictionsError(f"{where} is not an object")
        image, label = entry.get("image"), entry.get("label")
        if not isinstance(image, str) or not image:
            raise PredictionsError(f"{where} has image {image!r}; expected the dataset's image id (a string)")
        if not isinstance(label, str):
            raise PredictionsError(f"{where} has label {label!r}; expected a class name")
        box = _numbers(entry.get("box"), 4, f"{where} 'box'", "[x1, y1, x2, y2]")
        score = _numbers([entry.get("score")], 1, f"{where} 'score'", "a finite number")[0]
        images[image] = None
        if label not in label_of:
            unknown_classes.setdefault(label, number)
            ignored[label] = ignored.get(label, 0) + 1
            continue
        boxes, scores, labels = grouped.setdefault(image, ([], [], []))
        boxes.append(box)
        scores.append(score)
        labels.append(label_of[label])
    if unknown_classes and strict_classes:
        named = ", ".join(f"{k!r} (predictions[{n}])" for k, n in list(unknown_classes.items())[:MAX_NAMED])
        raise PredictionsError(f"{path}: unknown class name(s) {named}; the dataset's classes are: "
                               f"{', '.join(index.classes)} (without --strict-classes they are ignored)")
    check_image_ids(images, index.by_id(), str(path))
    preds = Predictions(list(index.classes))
    for image, (boxes, scores, labels) in grouped.items():
        preds.add(image, boxes, scores, labels)
    preds.ignored = ignored
    return preds


def _numbers(value: Any, n: int, where: str, expected: str) -> list[float]:
    ok = (isinstance(value, list) and len(value) == n
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok:
        raise PredictionsError(f"{where} is {value!r:.80}; expected {expected}")
    return [float(v) for v in value]


def _from_coco_results(doc: list, path: Path, index: DatasetIndex, strict_classes: bool) -> Predictions:
    preds = Predictions(list(index.classes))
    if not doc:
        return preds
    category_ids = index.meta.get("category_ids")
    coco_ids = index.meta.get("coco_image_ids")
    if index.format != "coco" or not category_ids or not coco_ids:
        raise PredictionsError(f"{path}: a COCO results list needs a COCO dataset (original category and image ids); "
                               f"this one is {index.format!r}. Write the boxforge predictions format instead")
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    image_of = {cid: image_id for image_id, cid in coco_ids.items()}
    grouped: dict[str, tuple[list, list, list]] = {}
    unknown_images: list[Any] = []
    ignored: dict[str, int] = {}
    for number, entry in enumerate(doc):
        where = f"{path}: [{number}]"
        if not isinstance(entry, dict):
            raise PredictionsError(f"{where} is not an object")
        x, y, w, h = _numbers(entry.get("bbox"), 4, f"{where} 'bbox'", "[x, y, width, height]")
        score = _numbers([entry.get("score")], 1, f"{where} 'score'", "a finite number")[0]
        category, image_key = entry.get("category_id"), entry.get("image_id")
        image = image_of.get(image_key) if _is_key(image_key) else None
        if image is None:
            unknown_images.append(image_key if _is_key(image_key) else repr(image_key))
            continue
        if not _is_key(category) or category not in label_of:
            if strict_classes:
                raise PredictionsError(f"{where} has category_id {category!r}; the dataset's ids are: "
                                       f"{', '.join(map(str, category_ids))} (without --strict-classes such "
                                       "detections are ignored, as pycocotools ignores them)")
            name = f"category_id {category!r}"
            ignored[name] = ignored.get(name, 0) + 1
            continue
        boxes, scores, labels = grouped.setdefault(image, ([], [], []))
        boxes.append([x, y, x + w, y + h])
        scores.append(score)
        labels.append(label_of[category])
    check_image_ids(dict.fromkeys(unknown_images), (), f"{path} (COCO image_id)")
    for image, (boxes, scores, labels) in grouped.items():
        preds.add(image, boxes, scores, labels)
    preds.ignored = ignored
    preds.coco_results = doc  # after add(), which drops it
    return preds


def _is_key(value: Any) -> bool:
    """A COCO id usable as a lookup key (a list or an object in the file would not be)."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def save_predictions(preds: Predictions, classes: Sequence[str], path: str | Path, *,
                     images: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `preds` as a boxforge predictions file (atomically), labels written as names from `classes`.

    The one writer of the format (eval --save-predictions and predict both call it). images: predict's
    `[{image, path, width, height}]` of every image read; extra: more top-level keys ("model", "settings").
    """
    path = Path(path)
    classes = list(classes)
    entries = []
    for image_id, p in preds.images.items():
        if len(p) and (p.labels.min() < 0 or p.labels.max() >= len(classes)):
            raise PredictionsError(f"image {image_id!r}: label {int(p.labels.max())} has no name "
                                   f"({len(classes)} classes given)")
        for box, score, label in zip(p.boxes.tolist(), p.scores.tolist(), p.labels.tolist()):
            entries.append({"image": image_id, "label": classes[label], "score": score, "box": box})
    doc: dict[str, Any] = {"classes": classes, "predictions": entries}
    if images is not None:
        doc["images"] = images
    write_json(path, {**doc, **(extra or {})})
    return path
