"""Classification layouts: ImageFolder (one folder per class) and datumaro `imagenet_txt` (`path label` lines)."""

from __future__ import annotations

import os
from pathlib import Path

from boxforge.data.formats import common
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.problems import Problem
from boxforge.data.safety import resolve_inside
from boxforge.errors import DatasetError, UnsafeInputError


def class_folders(root: Path) -> list[str]:
    """Sub-folders of `root` that hold at least one image (torchvision's ImageFolder classes), sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and common.list_images(d))


def split_names(root: Path) -> list[str]:
    """Split folders of an ImageFolder tree (`train/`, `val/`): sub-folders that hold class folders, sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and class_folders(d))


def read_imagefolder(root: Path, split: str | None = None) -> DatasetIndex:
    """`root/[split/]<class>/**/<image>`; classes are the sorted folder names, as torchvision's ImageFolder."""
    base = root / split if split else root
    if split and not base.is_dir():
        offered = ", ".join(d.name for d in sorted(root.iterdir()) if d.is_dir())
        raise DatasetError(f"{root}: no split folder {split!r}; folders here: {offered or 'none'}")
    classes = class_folders(base)
    if not classes:
        raise DatasetError(f"{base}: no class folders with images (expected <class>/<image>.jpg)")
    samples = []
    for label, name in enumerate(classes):
        for image_id, path in common.list_images(base / name).items():
            samples.append(Sample(f"{name}/{image_id}", path, label=label))
    problems = [Problem("missing_annotation", "warning", p.name, "", "image outside any class folder: ignored")
                for p in sorted(base.iterdir()) if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    return DatasetIndex(classes=classes, samples=samples, format="imagefolder", root=base, task="classify",
                        split=split, problems=problems)


def looks_like_imagenet_txt(path: Path) -> bool:
    try:
        lines = common.read_lines(path)[:5]
    except (DatasetError, UnsafeInputError):
        return False
    return bool(lines) and all(len(line.split()) == 2 and line.split()[1].lstrip("-").isdigit() for line in lines)


def read_imagenet_txt(list_file: Path, classes: list[str] | None = None) -> DatasetIndex:
    """datumaro `imagenet_txt`: `<split>.txt` of `path label` lines, images under `images/`, names in `synsets.txt`."""
    root = list_file.parent
    if classes is None:
        classes = _synsets(root, list_file)
    img_dir = root / "images" if (root / "images").is_dir() else root
    rel_list = list_file.name
    samples, problems, labels = [], [], []
    for line_no, line in enumerate(common.read_lines(list_file), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            problems.append(Problem("invalid_annotation", "error", "", rel_list, f"line {line_no}: expected 'path label', found {line[:80]!r}"))
            continue
        try:
            path = resolve_inside(img_dir, fields[0])
        except UnsafeInputError as exc:
            problems.append(Problem("unsafe_path", "error", "", rel_list, f"line {line_no}: {exc}"))
            continue
        samples.append(Sample(common.strip_image_ext(fields[0]), path, label=int(fields[1]), annotation_path=list_file))
        labels.append(int(fields[1]))
    if classes is None:
        classes = [str(i) for i in range(max(labels, default=-1) + 1)]
    kept = []
    for s in samples:
        if 0 <= (s.label or 0) < len(classes):
            kept.append(s)
        else:
            problems.append(Problem("unknown_class", "error", os.path.relpath(s.image_path, root), rel_list,
                                    f"label {s.label} is out of range 0..{len(classes) - 1}"))
    return DatasetIndex(classes=classes, samples=kept, format="imagenet_txt", root=root, task="classify",
                        split=list_file.stem, problems=problems)


def _synsets(root: Path, list_file: Path) -> list[str] | None:
    if (root / "synsets.txt").is_file():
        return common.read_class_file(root / "synsets.txt")
    others = [p for p in root.glob("*.txt") if p != list_file and not looks_like_imagenet_txt(p)]
    return common.read_class_file(others[0]) if len(others) == 1 else None
