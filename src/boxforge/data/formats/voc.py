"""Pascal VOC: devkit roots (`Annotations/`, `JPEGImages/`, `ImageSets/Main/`), flat folders, VOCdevkit merges.

Boxes are kept in the annotation's own 1-based pixel coordinates, exactly as
written, so evaluation can apply the devkit's +1 convention and `check` can see
invalid boxes. Parts and actions are ignored.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from xml.etree.ElementTree import Element

import numpy as np

from boxforge.data.formats import common
from boxforge.data.index import DatasetIndex, Sample, merge_indexes, union_indexes
from boxforge.data.problems import Problem
from boxforge.data.safety import is_inside, parse_xml, regular_file_problem, resolve_inside
from boxforge.errors import DatasetError, UnsafeInputError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
ANNOTATION_DIRS = ("Annotations", "annotations")
IMAGE_DIRS = ("JPEGImages", "images", "Images")


def is_devkit_root(path: Path) -> bool:
    return (path / "Annotations").is_dir() and ((path / "JPEGImages").is_dir() or (path / "ImageSets").is_dir())


def devkit_children(path: Path) -> list[Path]:
    """`VOCdevkit/VOC2007`, `VOCdevkit/VOC2012`, ...: sub-roots to merge, sorted."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and is_devkit_root(p))


def split_names(root: Path) -> list[str]:
    """The splits `read_voc(root, split)` accepts: id lists (`ImageSets/Main/NAME.txt`, `NAME.txt`) and split
    folders holding XML (a Roboflow export's `train/`, `valid/`, `test/`), sorted."""
    folders = {d.name for d in root.iterdir() if d.is_dir() and d.name not in (*ANNOTATION_DIRS, *IMAGE_DIRS)
               and any(d.glob("*.xml"))} if root.is_dir() else set()
    return sorted(set(common.available_splits(root)) | folders)


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def read_voc(root: Path, split: str | None = None, classes: list[str] | None = None) -> DatasetIndex:
    """Read a VOC root: devkit layout, `images/` + `annotations/`, or XML files beside the images."""
    root = Path(root)
    if split is not None and common.find_split_file(root, split) is None and (root / split).is_dir():
        return read_voc(root / split, None, classes)  # a split given as a folder (Roboflow's train/, valid/)
    ann_dir = _first_dir(root, ANNOTATION_DIRS) or root
    img_dir = _first_dir(root, IMAGE_DIRS) or ann_dir
    problems: list[Problem] = []
    class_file = common.find_class_file(root) if classes is None else None
    if class_file is not None:
        classes = common.read_class_file(class_file)
    if classes is not None:  # objects are matched by name: a leading background entry names no class
        classes = common.drop_background(classes, class_file or f"{root}: the class list")
    fixed_classes = classes is not None

    images = common.list_images(img_dir)
    annotations = {common.strip_image_ext(p.relative_to(ann_dir).as_posix().removesuffix(".xml")): p
                   for p in sorted(ann_dir.rglob("*.xml"))}
    if not annotations and not images:
        raise DatasetError(f"{root}: no XML annotations and no images found (expected Annotations/ and JPEGImages/)")

    splits = {name: common.read_id_list(f) for name in common.available_splits(root)
              if (f := common.find_split_file(root, name))}
    if split is not None:
        split_file = common.find_split_file(root, split)
        if split_file is None:
            offered = ", ".join(splits) or "none"
            raise DatasetError(f"{root}: no split {split!r} (looked for ImageSets/Main/{split}.txt and {split}.txt); splits here: {offered}")
        ids = common.read_id_list(split_file)
        splits.setdefault(split, ids)
    else:
        ids = sorted(set(annotations) | set(images))

    parsed: list[tuple[Sample, list[tuple[str, np.ndarray, bool, bool]]]] = []
    names_seen: list[str] = []
    for image_id in ids:
        ann_path = annotations.get(image_id)
        image_path = images.get(image_id)
        if ann_path is None:
            default = image_path or img_dir / f"{image_id}.jpg"
            detail = "image has no annotation file" if image_path else "listed in the split but has neither image nor annotation"
            problems.append(Problem("missing_annotation", "error", _rel(root, default), "", detail))
            parsed.append((Sample(image_id, default), []))
            continue
        sample, objects = _read_annotation(root, img_dir, ann_path, image_id, image_path, problems)
        parsed.append((sample, objects))
        names_seen.extend(o[0] for o in objects)

    if classes is None:
        classes = infer_classes(names_seen)
    lookup = {name: i for i, name in enumerate(classes)}
    samples = [_attach_objects(root, sample, objects, lookup, fixed_classes, problems) for sample, objects in parsed]
    return DatasetIndex(classes=list(classes), samples=samples, format="voc", root=root,
                        split=split, problems=problems, splits=splits)


def infer_classes(names: list[str] | set[str]) -> list[str]:
    """Class order when no class file exists: the devkit's order for VOC names, else sorted."""
    unique = set(names)
    if unique and unique <= set(VOC_CLASSES):
        return [c for c in VOC_CLASSES if c in unique]
    return sorted(unique)


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_annotation(root: Path, img_dir: Path, ann_path: Path, image_id: str, image_path: Path | None,
                     problems: list[Problem]) -> tuple[Sample, list[tuple[str, np.ndarray, bool, bool]]]:
    rel_ann = _rel(root, ann_path)
    sample = Sample(image_id, image_path or img_dir / f"{image_id}.jpg", annotation_path=ann_path)
    if not is_inside(root, ann_path):
        sample.annotation_path = None
        problems.append(Problem("unsafe_path", "error", "", rel_ann, f"a symlink leading outside the dataset root "
                                                                     f"(to {os.path.realpath(ann_path)}); refusing to open it"))
        return sample, []
    why = regular_file_problem(ann_path)
    if why:
        problems.append(Problem("unsafe_path", "error", "", rel_ann, why))
        return sample, []
    try:
        tree = parse_xml(ann_path)
    except (UnsafeInputError, ValueError) as exc:
        problems.append(Problem("invalid_annotation", "error", _rel(root, sample.image_path), rel_ann,
                                str(exc).removeprefix(f"{ann_path}: ")))
        return sample, []
    if tree.tag != "annotation":
        problems.append(Problem("invalid_annotation", "error", _rel(root, sample.image_path), rel_ann,
                                f"root element is <{tree.tag}>, expected <annotation>"))
        return sample, []
    if image_path is None:
        filename = (tree.findtext("filename") or "").strip()
        if filename:
            try:
                sample.image_path = resolve_inside(img_dir, filename)
            except UnsafeInputError as exc:
                problems.append(Problem("unsafe_path", "error", "", rel_ann, f"<filename>: {exc}"))
                sample.image_path = None
    sample.width, sample.height, size_problem = _size(tree)
    if size_problem:
        problems.append(Problem("invalid_annotation", "error", _rel(root, sample.image_path) if sample.image_path else "",
                                rel_ann, size_problem))
    objects = []
    for number, obj in enumerate(tree.findall("object"), start=1):
        try:
            objects.append(parse_object(obj))
        except ValueError as exc:
            problems.append(Problem("invalid_annotation", "error", _rel(root, sample.image_path) if sample.image_path else "",
                                    rel_ann, f"object {number}: {exc}"))
    return sample, objects


def _size(tree: Element) -> tuple[int, int, str | None]:
    """(width, height, problem): 0 for a size that is absent or not a pixel count (read from the header later)."""
    size = tree.find("size")
    if size is None:
        return 0, 0, None
    texts = [(size.findtext(tag) or "0").strip() for tag in ("width", "height")]
    try:
        values = [float(t) for t in texts]
    except ValueError:
        return 0, 0, None
    if not all(math.isfinite(v) and 0 <= v < 2**31 for v in values):
        return 0, 0, f"<size> {texts[0]!r} x {texts[1]!r} is not a pixel count"
    return int(values[0]), int(values[1]), None


def _number(node: Element, tag: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise ValueError(f"<bndbox> has no <{tag}>")
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"<{tag}> is {text.strip()!r}, not a number") from None


def _flag(obj: Element, tag: str) -> bool:
    text = (obj.findtext(tag) or "0").strip()
    try:
        return bool(int(float(text)))
    except (ValueError, OverflowError):  # "true", or nan / inf, which no tool writes for a flag
        return text.lower() == "true"


def parse_object(obj: Element) -> tuple[str, np.ndarray, bool, bool]:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise ValueError("has no <name>")
    box = obj.find("bndbox")
    if box is None:
        raise ValueError(f"{name!r} has no <bndbox>")
    coords = np.array([_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax")], dtype=np.float64)
    return name, coords, _flag(obj, "difficult"), _flag(obj, "truncated")


def _attach_objects(root: Path, sample: Sample, objects: list[tuple[str, np.ndarray, bool, bool]],
                    lookup: dict[str, int], fixed_classes: bool, problems: list[Problem]) -> Sample:
    kept = []
    for number, (name, coords, difficult, truncated) in enumerate(objects, start=1):
        if name not in lookup:
            why = (" (the background is what no box covers; a leading background entry of a class file names no "
                   "class)" if name.lower() in common.BACKGROUND_NAMES else "")
            problems.append(Problem("unknown_class", "error", _rel(root, sample.image_path) if sample.image_path else "",
                                    _rel(root, sample.annotation_path) if sample.annotation_path else "",
                                    f"object {number}: class {name!r} is not in the class list ({', '.join(lookup)})"
                                    f"{why}"))
            continue
        kept.append((coords, lookup[name], difficult, truncated))
    if kept:
        sample.boxes = np.stack([k[0] for k in kept])
        sample.labels = np.array([k[1] for k in kept], dtype=np.int64)
        sample.difficult = np.array([k[2] for k in kept], dtype=bool)
        sample.truncated = np.array([k[3] for k in kept], dtype=bool)
    sample.__post_init__()
    return sample


def read_voc_roots(roots: list[Path], split: str | None = None, classes: list[str] | None = None,
                   parent: Path | None = None) -> DatasetIndex:
    """Merge several VOC roots (VOC2007 + VOC2012 trainval) into one index.

    Image ids get the root's folder name as prefix (`VOC2007/000005`) so ids from
    different years can never collide, and one year read alone (`VOC2007/test`) gets the
    same ids. Class lists must agree. parent: the index root (default: the roots' common folder).
    """
    chosen = _year_splits(roots, split)
    indexes = [_read_year(root, names, classes) for root, names in chosen]
    roots = [root for root, _ in chosen]
    if classes is None:  # each root inferred its own list: put all on the union
        union = infer_classes({c for idx in indexes for c in idx.classes})
        for idx in indexes:
            remap = np.array([union.index(c) for c in idx.classes] or [0], dtype=np.int64)
            for s in idx.samples:
                s.labels = remap[s.labels]
            idx.classes = union
    parent = parent or Path(os.path.commonpath([str(Path(r).resolve()) for r in roots]))
    try:
        return merge_indexes(indexes, [Path(r).name for r in roots], parent, split)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def _year_splits(roots: list[Path], split: str | None) -> list[tuple[Path, list[str | None]]]:
    """(root, its splits) for a devkit split name: `test` (every year's), `VOC2007/test` (one year's), or
    several joined by `+` (`VOC2007/trainval+VOC2012/trainval`). A path to a txt file applies to every year."""
    if split is None:
        return [(r, [None]) for r in roots]
    by_name = {Path(r).name: Path(r) for r in roots}
    chosen: dict[Path, list[str | None]] = {}
    for part in (p for p in split.split("+") if p):
        year, sep, name = part.partition("/")
        if sep and not Path(part).is_file():
            if year not in by_name:
                raise DatasetError(f"split {part!r}: no {year!r} here; the years are: {', '.join(by_name)}")
            chosen.setdefault(by_name[year], []).append(name)
        else:
            for root in by_name.values():
                chosen.setdefault(root, []).append(part)
    return [(r, chosen[r]) for r in by_name.values() if r in chosen]


def _read_year(root: Path, splits: list[str | None], classes: list[str] | None) -> DatasetIndex:
    """One devkit year, the union of its `splits` when several are asked for."""
    if len(splits) == 1:
        return read_voc(root, splits[0], classes)
    return union_indexes([read_voc(root, s, classes) for s in splits], [str(s) for s in splits], "+".join(map(str, splits)))


def format_number(value: float) -> str:
    """Integers stay integers (`48`), fractional pixels keep their digits (`5.5`)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def annotation_xml(sample: Sample, classes: list[str], folder: str = "JPEGImages", depth: int = 3) -> str:
    """The VOC XML text of one sample; boxes written as they are (the caller filters invalid ones)."""
    from xml.sax.saxutils import escape

    filename = sample.image_path.name if sample.image_path else f"{Path(sample.image_id).name}.jpg"
    lines = ["<annotation>", f"\t<folder>{escape(folder)}</folder>", f"\t<filename>{escape(filename)}</filename>",
             "\t<size>", f"\t\t<width>{sample.width}</width>", f"\t\t<height>{sample.height}</height>",
             f"\t\t<depth>{depth}</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for box, label, difficult, truncated in zip(sample.boxes, sample.labels, sample.difficult, sample.truncated):
        lines += ["\t<object>", f"\t\t<name>{escape(classes[int(label)])}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{int(truncated)}</truncated>", f"\t\t<difficult>{int(difficult)}</difficult>",
                  "\t\t<bndbox>"]
        lines += [f"\t\t\t<{tag}>{format_number(v)}</{tag}>" for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box)]
        lines += ["\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_voc_annotation(path: Path, sample: Sample, classes: list[str]) -> None:
    """Write one VOC XML file (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(annotation_xml(sample, classes), encoding="utf-8")
