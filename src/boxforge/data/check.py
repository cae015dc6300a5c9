"""The health check: every problem that would crash or quietly spoil training, found before it starts.

Image headers are read, pixels are not (unless `deep`), so a 20,000-image set is
checked in seconds. Duplicates are found by hashing only files whose sizes collide.
Both passes show their progress (boxforge/progress.py: a bar on a terminal, a plain line
every few seconds on stderr otherwise, nothing for a short check).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.data import boxes as box_rules
from boxforge.data.images import ImageHeader, ImageReadError, read_header, verify_decode
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.problems import Problem
from boxforge.data.safety import regular_file_problem
from boxforge.data.splits import nested_splits
from boxforge.errors import UnsafeInputError
from boxforge.progress import progress

@dataclass
class CheckReport:
    """What `check` found; `to_dict()` is the `--json` report."""

    format: str
    images: int
    objects: int
    classes: dict[str, int]
    difficult: int
    problems: list[Problem] = field(default_factory=list)
    box_sizes: dict[str, float] = field(default_factory=dict)
    splits: dict[str, str | None] = field(default_factory=dict)  # what train/eval would use: {"train", "val", "eval"}

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "images": self.images, "objects": self.objects, "classes": self.classes,
                "difficult": self.difficult, "box_sizes": self.box_sizes, "splits": self.splits,
                "problems": [p.to_dict() for p in self.problems]}


def check_dataset(index: DatasetIndex, *, deep: bool = False) -> CheckReport:
    """Check every sample of `index`; `deep` decodes every pixel to catch truncated files."""
    problems = list(index.problems)
    # (image, annotation) pairs the reader could not read cleanly: their objects are unknown, not absent, so
    # such a sample is never also called an empty annotation ("used as a background image") on top of that
    misread = {(p.image, p.annotation) for p in index.problems if p.severity == "error"}
    with progress(len(index.samples), label="check", unit="images") as shown:
        for sample in shown.iterate(index.samples):
            problems.extend(_check_sample(index, sample, deep, misread))
    problems.extend(_duplicates(index))
    problems.extend(_split_overlap(index))
    return CheckReport(format=index.format, images=len(index), objects=index.num_objects,
                       classes=index.class_counts(), difficult=index.num_difficult(), problems=problems,
                       box_sizes=_box_sizes(index))


def _check_sample(index: DatasetIndex, sample: Sample, deep: bool, misread: set[tuple[str, str]]) -> list[Problem]:
    image = index.relative(sample.image_path)
    ann = index.relative(sample.annotation_path)
    found: list[Problem] = []
    header = _check_image(sample, image, ann, deep, found)
    if header is not None and index.task == "detect":
        _check_size(sample, header, image, ann, found)
    if (index.task == "detect" and sample.annotation_path is not None and sample.num_objects == 0
            and (image, ann) not in misread):
        found.append(Problem("empty_annotation", "warning", image, ann, "no objects: used as a background image"))
    if index.task == "detect" and sample.num_objects:
        _check_boxes(sample, index.classes, image, ann, found)
    return found


def _check_image(sample: Sample, image: str, ann: str, deep: bool, found: list[Problem]) -> ImageHeader | None:
    if sample.image_path is None:
        return None
    why = regular_file_problem(sample.image_path)
    if why:
        found.append(Problem("unsafe_path", "error", image, ann, f"image {why}; refusing to open it"))
        return None
    if not sample.image_path.exists():
        found.append(Problem("missing_image", "error", image, ann, "annotation has no image file"))
        return None
    try:
        header = read_header(sample.image_path)
        if deep:
            verify_decode(sample.image_path)
        return header
    except UnsafeInputError as exc:
        found.append(Problem("unreadable_image", "error", image, ann, _detail(exc, sample.image_path)))
    except (ImageReadError, OSError) as exc:
        found.append(Problem("unreadable_image", "error", image, ann, _detail(exc, sample.image_path)))
    return None


def _detail(exc: Exception, path: Path) -> str:
    return str(exc).removeprefix(f"{path}: ")


def _check_size(sample: Sample, header: ImageHeader, image: str, ann: str, found: list[Problem]) -> None:
    stated = (sample.width, sample.height)
    stored = (header.width, header.height)
    shown = header.display_size
    if header.orientation != 1:
        if stated == stored and stored != shown:
            found.append(Problem("exif_rotation", "error", image, ann,
                                 f"EXIF orientation {header.orientation} rotates the image to {shown[0]}x{shown[1]} but "
                                 f"the annotation was made on the unrotated {stored[0]}x{stored[1]} pixels"))
        else:
            found.append(Problem("exif_rotation", "warning", image, ann,
                                 f"EXIF orientation {header.orientation}: boxes are read in the displayed (rotated) frame"))
    if 0 not in stated and stated not in (stored, shown):
        found.append(Problem("size_mismatch", "error", image, ann,
                             f"annotation says {stated[0]}x{stated[1]}, image is {shown[0]}x{shown[1]}"))
    if 0 in stated:
        sample.width, sample.height = shown


def _check_boxes(sample: Sample, classes: list[str], image: str, ann: str, found: list[Problem]) -> None:
    b = sample.boxes
    for i in np.flatnonzero(box_rules.nonfinite_mask(b)):
        found.append(Problem("nan_box", "error", image, ann, f"object {i + 1} ({classes[sample.labels[i]]}) has "
                             f"coordinates {_fmt_box(b[i])}"))
    for i in np.flatnonzero(box_rules.degenerate_mask(b)):
        x1, y1, x2, y2 = b[i]
        what = "zero-width" if x2 == x1 else "negative-width" if x2 < x1 else "zero-height" if y2 == y1 else "negative-height"
        found.append(Problem("degenerate_box", "error", image, ann,
                             f"object {i + 1} ({classes[sample.labels[i]]}) {_fmt_box(b[i])} is a {what} box"))
    for i in np.flatnonzero(box_rules.out_of_bounds_mask(b, sample.width, sample.height) & box_rules.valid_mask(b)):
        found.append(Problem("box_out_of_bounds", "warning", image, ann,
                             f"object {i + 1} ({classes[sample.labels[i]]}) {_fmt_box(b[i])} extends outside the "
                             f"{sample.width}x{sample.height} image (clipped when training)"))


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box.tolist()) + "]"


def _duplicates(index: DatasetIndex) -> list[Problem]:
    """Same bytes under two names. Only files of equal size are hashed."""
    by_size: dict[int, list[Sample]] = defaultdict(list)
    for s in index.samples:
        if s.image_path is not None and regular_file_problem(s.image_path) is None:
            try:
                by_size[os.path.getsize(s.image_path)].append(s)
            except OSError:
                continue
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    same_size = [s for group in by_size.values() if len(group) > 1 for s in group]
    with progress(len(same_size), label="check: duplicates", unit="images") as shown:
        for s in shown.iterate(same_size):
            by_hash[_digest(s.image_path)].append(s)
    split_of = {i: name for name, ids in index.splits.items() for i in ids}
    found = []
    for group in by_hash.values():
        paths = {os.path.realpath(s.image_path) for s in group}
        if len(group) < 2 or len(paths) < 2:
            continue
        first = group[0]
        for other in group[1:]:
            a, b = split_of.get(first.image_id), split_of.get(other.image_id)
            found.append(Problem("duplicate_image", "warning", index.relative(other.image_path),
                                 index.relative(other.annotation_path),
                                 f"same bytes as {index.relative(first.image_path)}"))
            if a and b and a != b and not nested_splits(a, b):
                found.append(Problem("split_overlap", "error", index.relative(other.image_path), "",
                                     f"same image as {index.relative(first.image_path)}, in splits {a!r} and {b!r}"))
    return found


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_overlap(index: DatasetIndex) -> list[Problem]:
    """The same image id listed in two splits (test images leaking into training)."""
    names = sorted(index.splits)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if nested_splits(a, b):
                continue
            for image_id in sorted(set(index.splits[a]) & set(index.splits[b])):
                found.append(Problem("split_overlap", "error", image_id, "", f"listed in both {a!r} and {b!r}"))
    return found


def _box_sizes(index: DatasetIndex) -> dict[str, float]:
    """Median and range of box sides (pixels) and of box area relative to the image, over valid boxes."""
    sides, rel = [], []
    for s in index.samples:
        b = s.boxes[box_rules.valid_mask(s.boxes)] if s.num_objects else s.boxes
        if len(b):
            w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            sides.append(np.sqrt(w * h))
            if s.width > 0 and s.height > 0:
                rel.append(np.sqrt(w * h / (s.width * s.height)))
    if not sides:
        return {}
    all_sides = np.concatenate(sides)
    out = {"side_min": float(all_sides.min()), "side_median": float(np.median(all_sides)), "side_max": float(all_sides.max())}
    if rel:
        out["relative_median"] = float(np.median(np.concatenate(rel)))
    return out
