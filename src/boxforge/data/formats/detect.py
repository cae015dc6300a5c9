"""Which layout is this? `load_dataset` turns whatever the user points at into one `DatasetIndex`.

DATA may be a folder, a COCO JSON, a YOLO `data.yaml`, a darknet `obj.data`, a
text list, or a boxforge dataset YAML (`format`, `root`, `train`, `val`,
`classes`) for anything the guesser cannot tell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxforge.data.formats import coco, common, imagefolder, txtlist, voc, yolo
from boxforge.data.images import ImageReadError, read_header
from boxforge.data.index import DatasetIndex, merge_indexes, union_indexes
from boxforge.data.problems import Problem
from boxforge.data.safety import is_inside
from boxforge.errors import DatasetError, UnsafeInputError

FORMATS: tuple[str, ...] = ("voc", "coco", "yolo", "txt", "imagefolder", "imagenet_txt")
SPEC_KEYS = {"format", "root", "train", "val", "test", "classes"}


def load_dataset(data: str | Path | list[str | Path], *, split: str | None = None, format: str | None = None,
                 classes: list[str] | None = None, fill_sizes: bool = True) -> DatasetIndex:
    """Read DATA (auto-detected, or `format` forced) into an index.

    split: a split name (`train`, `test`, ...) or a path to a txt file of ids; None
        reads the whole dataset. Several DATA paths (VOC2007 + VOC2012) are merged.
    fill_sizes: read image headers for samples whose annotation gave no size.
    """
    if isinstance(data, (list, tuple)):
        paths = [Path(p) for p in data]
        index = _load_many(paths, split, format, classes) if len(paths) > 1 else _load_one(paths[0], split, format, classes)
    else:
        index = _load_one(Path(data), split, format, classes)
    if not (isinstance(data, (list, tuple)) and len(data) > 1):
        confine_to_root(index)  # (_load_many confines each part to its own root)
    if fill_sizes:
        fill_missing_sizes(index)
    return index


def confine_to_root(index: DatasetIndex) -> None:
    """The documented path rule (data/safety.py), applied to every reader's output before anything is opened.

    A sample whose image or annotation file is a symlink (or sits below a linked folder) leading outside
    `index.root` loses that path, so no later step (check, training, --fix) reads, decodes or moves it,
    and gets an `unsafe_path` error instead.
    """
    for sample in index.samples:
        for attr in ("image_path", "annotation_path"):
            path = getattr(sample, attr)
            if path is None or not os.path.lexists(path) or is_inside(index.root, path):
                continue
            shown = os.path.relpath(path, index.root)
            index.problems.append(Problem("unsafe_path", "error", shown if attr == "image_path" else "",
                                          shown if attr == "annotation_path" else "",
                                          f"{shown} leads outside the dataset root {index.root} (to "
                                          f"{os.path.realpath(path)}); refusing to open it"))
            setattr(sample, attr, None)


def _load_many(paths: list[Path], split: str | None, fmt: str | None, classes: list[str] | None) -> DatasetIndex:
    if all(voc.is_devkit_root(p) for p in paths) and fmt in (None, "voc"):
        merged = voc.read_voc_roots(paths, split, classes, parent=Path(os.path.commonpath([str(p.resolve()) for p in paths])))
        confine_to_root(merged)
        return merged
    parts = [_load_one(p, split, fmt, classes) for p in paths]
    for part in parts:
        confine_to_root(part)
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    try:
        return merge_indexes(parts, names, Path(paths[0]).parent, split)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def _load_one(path: Path, split: str | None, fmt: str | None, classes: list[str] | None) -> DatasetIndex:
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if split is not None and JOIN in split and not Path(split).is_file() and not _is_devkit_parent(path, fmt):
        parts = [part for part in split.split(JOIN) if part]
        return union_indexes([_load_one(path, part, fmt, classes) for part in parts], parts, split)
    if path.is_file():
        return _load_file(path, split, fmt, classes)
    if fmt is None and (path / "pack.json").is_file():  # a `boxforge pack` folder
        from boxforge.data.pack import read_pack

        return read_pack(path, split)
    return _load_dir(path, split, fmt, classes)


def _load_file(path: Path, split: str | None, fmt: str | None, classes: list[str] | None) -> DatasetIndex:
    suffix = path.suffix.lower()
    if suffix == ".json" or fmt == "coco":
        return coco.read_coco(path, split=split)
    if suffix in (".yaml", ".yml"):
        doc = yolo.read_yaml(path)
        if "format" in doc:
            return load_spec(path, doc, split)
        return yolo.read_data_yaml(path, split)
    if suffix == ".data":
        return yolo.read_darknet(path, split)
    if suffix == ".txt":
        if fmt == "txt" or (fmt is None and txtlist.looks_like_txtlist(path)):
            return txtlist.read_txtlist(path, classes)
        if fmt == "imagenet_txt" or (fmt is None and imagefolder.looks_like_imagenet_txt(path)):
            return imagefolder.read_imagenet_txt(path, classes)
    raise DatasetError(f"{path}: cannot tell the dataset format of this file; pass a folder, a COCO .json, "
                       "a YOLO data.yaml, a darknet .data, a text list, or use --format")


def _load_dir(path: Path, split: str | None, fmt: str | None, classes: list[str] | None) -> DatasetIndex:
    guess = fmt or guess_format(path)
    if guess == "voc":
        if _is_devkit_parent(path, fmt):
            return voc.read_voc_roots(voc.devkit_children(path), split, classes, parent=path)
        return voc.read_voc(path, split, classes)
    if guess == "coco":
        return _load_coco_dir(path, split)
    if guess == "yolo":
        for name in ("data.yaml", "dataset.yaml"):
            if (path / name).is_file():
                return yolo.read_data_yaml(path / name, split)
        if (path / "obj.data").is_file():
            return yolo.read_darknet(path / "obj.data", split)
        return yolo.read_yolo_folder(path, split, classes)
    if guess == "imagenet_txt":
        return imagefolder.read_imagenet_txt(path / f"{split or 'train'}.txt", classes)
    if guess == "txt":
        name = split or ("all" if (path / "all.txt").is_file() else "train")
        return txtlist.read_txtlist(path / f"{name}.txt", classes, root=path)
    return imagefolder.read_imagefolder(path, split)


JOIN = "+"  # `--split train+val`: the union of several splits (`VOC2007/trainval+VOC2012/trainval`)


def _is_devkit_parent(path: Path, fmt: str | None) -> bool:
    """A VOCdevkit folder holding several years (VOC2007/, VOC2012/), not itself a devkit root."""
    return fmt in (None, "voc") and path.is_dir() and not voc.is_devkit_root(path) and bool(voc.devkit_children(path))


@dataclass(frozen=True)
class SplitOffer:
    """The splits DATA offers, named as `load_dataset(split=...)` takes them.

    names: the splits of one dataset (`train`, `val2017`, a Roboflow export's `valid`), as its layout
        defines them; empty for a single annotation file or a folder without splits.
    parts: for a VOCdevkit of several years (or several VOC roots given together), each year's own
        splits (`{"VOC2007": ("test", "train", "trainval", "val"), ...}`); a split is then named
        `VOC2007/test`, and `+` joins several.
    """

    layout: str
    names: tuple[str, ...] = ()
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def all_names(self) -> list[str]:
        return list(self.names) + [f"{part}/{name}" for part, names in self.parts.items() for name in names]


def offered_splits(data: str | Path | list[str | Path], *, format: str | None = None) -> SplitOffer:
    """What splits DATA has, from its layout alone (lists, folders, YAML keys; no annotation is parsed).

    The one place that knows, per layout, where split names come from; `data/splits.py` decides which
    to train and validate on.
    """
    paths = [Path(p) for p in data] if isinstance(data, (list, tuple)) else [Path(data)]
    for path in paths:
        if not path.exists():
            raise DatasetError(f"{path}: no such file or folder")
    if len(paths) > 1:
        if all(voc.is_devkit_root(p) for p in paths) and format in (None, "voc"):
            return SplitOffer("VOC roots", parts={p.name: tuple(voc.split_names(p)) for p in paths})
        shared = set.intersection(*(set(offered_splits(p, format=format).names) for p in paths))
        return SplitOffer("several datasets", tuple(sorted(shared)))
    return _offer_one(paths[0], format)


def _offer_one(path: Path, fmt: str | None) -> SplitOffer:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            doc = yolo.read_yaml(path)
            if "format" in doc:
                return SplitOffer("dataset YAML", tuple(k for k in ("train", "val", "test") if doc.get(k)))
            return SplitOffer("YOLO data.yaml", tuple(yolo.yaml_split_names(path)))
        if suffix == ".data":
            return SplitOffer("darknet obj.data", tuple(yolo.darknet_split_names(path)))
        return SplitOffer("annotation file")  # a COCO JSON or a text list is one split
    if fmt is None and (path / "pack.json").is_file():
        from boxforge.data.pack import split_names

        return SplitOffer("boxforge pack", tuple(split_names(path)))
    guess = fmt or guess_format(path)
    if guess == "voc":
        if _is_devkit_parent(path, fmt):
            return SplitOffer("VOCdevkit", parts={c.name: tuple(voc.split_names(c)) for c in voc.devkit_children(path)})
        return SplitOffer("VOC", tuple(voc.split_names(path)))
    if guess == "coco":
        return SplitOffer("COCO", tuple(coco.split_names(path)))
    if guess == "yolo":
        for name in ("data.yaml", "dataset.yaml"):
            if (path / name).is_file():
                return SplitOffer("YOLO data.yaml", tuple(yolo.yaml_split_names(path / name)))
        if (path / "obj.data").is_file():
            return SplitOffer("darknet obj.data", tuple(yolo.darknet_split_names(path / "obj.data")))
        return SplitOffer("YOLO", tuple(yolo.folder_split_names(path)))
    if guess in ("txt", "imagenet_txt"):
        return SplitOffer(guess, tuple(n for n in ("train", "val", "test") if (path / f"{n}.txt").is_file()))
    return SplitOffer("ImageFolder", tuple(imagefolder.split_names(path)))


def guess_format(path: Path) -> str:
    """The layout of a folder, from the files that only that layout has."""
    if voc.devkit_children(path) or voc.is_devkit_root(path):
        return "voc"
    if (path / "data.yaml").is_file() or (path / "dataset.yaml").is_file() or (path / "obj.data").is_file():
        return "yolo"
    ann = path / "annotations"
    if (ann.is_dir() and any(ann.glob("*.json"))) or (path / "_annotations.coco.json").is_file() or any(
            path.glob("*/_annotations.coco.json")):
        return "coco"
    if any(path.glob("*.xml")) or any(path.glob("*/*.xml")):
        return "voc"
    for unsupported in ("_annotations.createml.json", "_classes.csv", "*.tfrecord"):
        if any(path.glob(unsupported)) or any(path.glob(f"*/{unsupported}")):
            raise DatasetError(f"{path}: {unsupported} layouts (CreateML, Roboflow multi-label CSV, TFRecord) are not "
                               f"supported; export VOC, COCO or YOLO instead")
    for name in ("all.txt", "train.txt", "val.txt", "test.txt"):
        if (path / name).is_file():
            if imagefolder.looks_like_imagenet_txt(path / name):
                return "imagenet_txt"
            if txtlist.looks_like_txtlist(path / name):
                return "txt"
    if (path / "labels").is_dir() or common.find_class_file(path) and (any(path.glob("*.txt")) or (path / "Annotations").is_dir()):
        return "yolo"
    if imagefolder.class_folders(path) or any(imagefolder.class_folders(d) for d in path.iterdir() if d.is_dir()):
        return "imagefolder"
    raise DatasetError(f"{path}: cannot tell the dataset layout (looked for VOC Annotations/, COCO annotations/*.json, "
                       "YOLO data.yaml/obj.data/labels/, text lists, class folders); use --format or a dataset YAML")


def _load_coco_dir(path: Path, split: str | None) -> DatasetIndex:
    if split is not None or (path / "_annotations.coco.json").is_file():
        return coco.read_coco(coco.find_coco_json(path, split), root=path, split=split)
    ann = path / "annotations"
    files = sorted(ann.glob("instances_*.json")) if ann.is_dir() else []
    if not files and ann.is_dir():  # keypoints or stuff files also carry boxes; others fail with their reason
        files = sorted(ann.glob("*.json"))
    prefixes = [f.stem.rsplit("_", 1)[-1] for f in files]
    if not files:
        files = sorted(path.glob("*/_annotations.coco.json"))
        prefixes = [f.parent.name for f in files]
    if not files:
        raise DatasetError(f"{path}: no COCO instances file (annotations/instances_*.json or */_annotations.coco.json)")
    parts = [coco.read_coco(f, root=path, split=p) for f, p in zip(files, prefixes)]
    if len(parts) == 1:
        return parts[0]
    try:
        return merge_indexes(parts, prefixes, path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def load_spec(path: Path, doc: dict[str, Any], split: str | None) -> DatasetIndex:
    """A boxforge dataset YAML: `format`, `root` (relative to the YAML), `train`/`val`/`test`, `classes`."""
    unknown = set(doc) - SPEC_KEYS
    if unknown:
        raise DatasetError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    fmt = doc["format"]
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: format {fmt!r} is not one of: {', '.join(FORMATS)}")
    root = (path.parent / str(doc.get("root", "."))).resolve()
    classes = doc.get("classes")
    if isinstance(classes, str):
        classes = common.read_class_file(path.parent / classes)
    elif classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise DatasetError(f"{path}: 'classes' must be a list of names or a class-file path")
    split_entry = doc.get(split) if split in ("train", "val", "test") else split
    target = root
    if isinstance(split_entry, str) and (root / split_entry).is_file():
        target = root / split_entry
        if fmt in ("voc", "yolo"):
            return _load_one(root, str(target), fmt, classes)
        split_entry = None
    return _load_one(target, split_entry, fmt, classes)


def fill_missing_sizes(index: DatasetIndex) -> None:
    """Read the header of each image whose annotation gave no size (never decodes pixels)."""
    for sample in index.samples:
        if (sample.width <= 0 or sample.height <= 0) and sample.image_path is not None:
            try:
                sample.width, sample.height = read_header(sample.image_path).display_size
            except (OSError, ImageReadError, UnsafeInputError):
                continue  # `check` reports it; evaluation does not need the image
