"""The one in-memory index every reader produces and every writer consumes.

Boxes stay exactly as the annotation wrote them (pixels, xyxy, float64, so a real-valued
coordinate such as COCO's 48.27 is the file's number, not float32's 48.27000045776367), invalid
ones included: `check` must be able to see and report them, and `convert` and
the training loader decide what to drop, saying so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data.problems import Problem
from boxforge.errors import DatasetError

TASKS: tuple[str, ...] = ("detect", "classify")


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


@dataclass
class Sample:
    """One image and its annotation.

    image_id: the image path relative to the images folder, without extension
        (e.g. `2007_000027`, `train/000001`); unique within an index.
    image_path: absolute path of the image (may not exist: evaluation never needs it).
    width, height: image size in pixels as the annotation states it, else as the
        image header states it; 0 when neither is known.
    boxes: (N, 4) float64 xyxy in the annotation's own pixel coordinates (training casts
            to float32 in `data/loading`, the pack stores float32; evaluation and `convert` keep float64).
    labels: (N,) int64 indexes into `DatasetIndex.classes`.
    difficult: (N,) bool, VOC `difficult` or COCO `iscrowd`.
    truncated: (N,) bool, VOC `truncated` (False where the format has none).
    label: the class index of a classification sample, else None.
    annotation_path: the file the annotation came from (None for classification).
    """

    image_id: str
    image_path: Path | None
    width: int = 0
    height: int = 0
    boxes: np.ndarray = field(default_factory=empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))
    truncated: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))
    label: int | None = None
    annotation_path: Path | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        self.difficult = _flags(self.difficult, n)
        self.truncated = _flags(self.truncated, n)

    @property
    def num_objects(self) -> int:
        return int(len(self.boxes))


def _flags(values: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=bool).reshape(-1)
    if arr.size == 0 and n:
        return np.zeros((n,), dtype=bool)
    return arr.reshape(n)


@dataclass
class DatasetIndex:
    """Class names (ordered) and samples, plus what the reader had to complain about.

    problems: per-file problems found while reading (malformed files, unknown
        classes, unsafe paths); `check` adds its own to these.
    splits: split name -> image ids, for every split the reader found (used to
        find the same image in two splits); the samples are those of `split`, or
        all of them when `split` is None.
    meta: format-specific facts a writer or evaluator may need back (COCO's
        original `category_ids` in class order and `coco_image_ids` by image id).
    """

    classes: list[str]
    samples: list[Sample]
    format: str
    root: Path
    task: str = "detect"
    split: str | None = None
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_objects(self) -> int:
        return sum(s.num_objects for s in self.samples)

    def class_counts(self) -> dict[str, int]:
        """Objects per class (detection) or images per class (classification), in class order."""
        counts: Counter[int] = Counter()
        for s in self.samples:
            if self.task == "classify":
                if s.label is not None:
                    counts[s.label] += 1
            else:
                counts.update(s.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def num_difficult(self) -> int:
        return int(sum(int(s.difficult.sum()) for s in self.samples))

    def subset(self, positions: list[int] | np.ndarray, split: str | None = None) -> DatasetIndex:
        """An index of the samples at `positions` (the same Sample objects; classes, root, meta kept)."""
        return DatasetIndex(classes=list(self.classes), samples=[self.samples[int(i)] for i in positions],
                            format=self.format, root=self.root, task=self.task, split=split,
                            problems=list(self.problems), splits=dict(self.splits), meta=dict(self.meta))

    def by_id(self) -> dict[str, Sample]:
        return {s.image_id: s for s in self.samples}

    def relative(self, path: Path | None) -> str:
        """`path` relative to the dataset root when inside it, for messages and reports."""
        if path is None:
            return ""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)


def merge_indexes(indexes: list[DatasetIndex], prefixes: list[str], root: Path, split: str | None = None) -> DatasetIndex:
    """One index from several (VOC2007 + VOC2012, COCO train + val): ids get `prefix/` so they never collide.

    Class lists must be equal; each part becomes a split named by its prefix, so
    `check` can find the same image in two parts.
    """
    first = indexes[0]
    for other in indexes[1:]:
        if other.classes != first.classes:
            raise ValueError(f"cannot merge {other.root} into {first.root}: classes differ "
                             f"({other.classes} vs {first.classes})")
        if other.task != first.task:
            raise ValueError(f"cannot merge a {other.task} set with a {first.task} set")
    samples: list[Sample] = []
    problems: list[Problem] = []
    splits: dict[str, list[str]] = {}
    for idx, prefix in zip(indexes, prefixes):
        for s in idx.samples:
            s.image_id = f"{prefix}/{s.image_id}"
            samples.append(s)
            splits.setdefault(prefix, []).append(s.image_id)
        problems.extend(idx.problems)
        for name, ids in idx.splits.items():
            splits.setdefault(f"{prefix}/{name}", []).extend(f"{prefix}/{i}" for i in ids)
    meta = dict(first.meta)
    meta.pop("coco_image_ids", None)
    return DatasetIndex(classes=list(first.classes), samples=samples, format=first.format, root=root,
                        task=first.task, split=split, problems=problems, splits=splits, meta=meta)


def union_indexes(indexes: list[DatasetIndex], names: list[str], split: str | None = None) -> DatasetIndex:
    """One index from several splits of one dataset (`train+val`), each image once.

    An image id in two parts is one image when both name the same file (trainval + val), and kept
    twice as `name/id` when the files differ (a YOLO export reuses file names across split folders).
    Class lists must be equal (they come from the same dataset).
    """
    first = indexes[0]
    for other in indexes[1:]:
        if other.classes != first.classes:
            raise DatasetError(f"cannot join splits {names}: their classes differ ({other.classes} vs {first.classes})")
    samples: dict[str, Sample] = {}
    splits: dict[str, list[str]] = {}
    problems: dict[tuple[str, ...], Problem] = {}
    for idx, name in zip(indexes, names):
        for s in idx.samples:
            seen = samples.get(s.image_id)
            if seen is not None and seen.image_path != s.image_path:
                s.image_id = f"{name}/{s.image_id}"
            samples.setdefault(s.image_id, s)
            splits.setdefault(name, []).append(s.image_id)
        problems.update(((p.kind, p.image, p.annotation, p.detail), p) for p in idx.problems)
    for idx in indexes:
        for key, ids in idx.splits.items():
            splits.setdefault(key, list(ids))
    meta = dict(first.meta) if len(indexes) == 1 else {k: v for k, v in first.meta.items() if k == "category_ids"}
    return DatasetIndex(classes=list(first.classes), samples=list(samples.values()), format=first.format,
                        root=first.root, task=first.task, split=split, problems=list(problems.values()),
                        splits=splits, meta=meta)
