"""A copy of a dataset with some labels changed, everything else as it was: the writer behind `audit --apply`.

`convert` writes a dataset anew from the index, which holds boxes, classes and the difficult/truncated
flags only; a corrected copy written that way would lose what users keep in their files (COCO's `info`,
`licenses`, segmentations, image and annotation ids; VOC's `<pose>`, `<occluded>`, `<part>`; the layout of a
VOCdevkit or a COCO2017 folder). So the copy is the dataset's folder copied file for file, and only the
annotation files of changed images are written again, each by editing its own content: the changed objects
of a VOC XML, the changed entries of a COCO file's `annotations`, the changed lines of a YOLO label file or
a text list. Every other file of the copy is byte-identical to its original, and the original is only read.

Each edit names a label by its position in the index's sample (as `audit` reports it); the patch finds that
label in the file by the reader's own rules and checks it is the same box and class, so a file that changed
since it was read is refused, never patched by guess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from boxforge.data.formats import coco, txtlist, yolo
from boxforge.data.formats.common import MAX_LIST_BYTES, id_from_relpath, strip_image_ext
from boxforge.data.formats.voc import format_number, parse_object
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.safety import MAX_XML_BYTES, is_inside, parse_xml, read_bytes_bounded
from boxforge.errors import BoxforgeError
from boxforge.files import atomic_write
from boxforge.progress import progress

FORMATS: tuple[str, ...] = ("voc", "coco", "yolo", "txt")
SAME_BOX = 1e-6  # px: the label in the file must be the box the index read (the same parse of the same text)


@dataclass(frozen=True)
class Edit:
    """One change to one image's labels. op: "remove" label `label`; "box": move it to `box` (xyxy px);
    "class": give it class index `cls`; "add": a new label (`label` None) of class `cls` at `box`."""
    op: str
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    cls: int | None = None


@dataclass
class PatchReport:
    out: Path
    copied: int = 0
    files: list[dict[str, str]] = field(default_factory=list)  # {"path", "sha256_before", "sha256_after"}
    notes: list[str] = field(default_factory=list)


def copy_with_edits(index: DatasetIndex, out: Path, edits: dict[str, list[Edit]]) -> PatchReport:
    """Copy the folder `index.root` to the new (or empty) folder `out` and apply `edits` (image id -> edits)
    to the copy's annotation files. Checks everything it can before copying anything."""
    if index.format not in FORMATS:
        raise BoxforgeError(f"{index.root}: a {index.format} dataset; a corrected copy is written for "
                            f"{', '.join(FORMATS)} datasets")
    # paths as the readers built them (not resolved): a symlinked annotation file is written at the link's place
    root, out = Path(os.path.abspath(index.root)), Path(os.path.abspath(out))
    if out == root or is_inside(root, out):
        raise BoxforgeError(f"{out}: lies inside the dataset {root}; the copy needs a folder outside it")
    if root.resolve() in (Path(root.anchor), Path.home().resolve()):
        raise BoxforgeError(f"{root}: the dataset's root is {root} (several folders given?); give the dataset's "
                            "own folder, a copy of it is written")
    if out.exists() and any(out.iterdir()):
        raise BoxforgeError(f"{out}: folder is not empty; the corrected copy is written only into a new or empty folder")
    samples = index.by_id()
    by_file: dict[Path, list[tuple[Sample, list[Edit]]]] = {}
    for image_id, changes in edits.items():
        sample = samples[image_id]
        path = _annotation_file(index, sample)
        if not is_inside(root, path) or os.path.relpath(path, root).startswith(".."):
            raise BoxforgeError(f"{path}: the annotation file of {image_id} lies outside the dataset folder {root}, "
                                "which is what the copy holds")
        by_file.setdefault(path, []).append((sample, changes))
    report = PatchReport(out)
    patched = {path: _PATCHERS[index.format](path, entries, index, report) for path, entries in by_file.items()}
    report.copied = _copy_tree(root, out)
    for path, data in patched.items():
        rel = Path(os.path.relpath(path, root))
        before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)  # a new file: a symlink copied from the original is replaced, never followed
        report.files.append({"path": rel.as_posix(), "sha256_before": before,
                             "sha256_after": hashlib.sha256(data).hexdigest()})
    return report


def _annotation_file(index: DatasetIndex, sample: Sample) -> Path:
    if sample.annotation_path is not None:
        return Path(os.path.abspath(sample.annotation_path))
    if index.format == "yolo" and sample.image_path is not None:  # a background image: its label file is new
        return Path(os.path.abspath(yolo.new_label_path(Path(sample.image_path))))
    raise BoxforgeError(f"{sample.image_id}: no annotation file to change (the reader found none)")


def _copy_tree(root: Path, out: Path) -> int:
    """Every file of `root` copied into `out` (contents and times; symlinks stay links); returns the count."""
    # copytree recreates a symlink itself, never through copy(): the progress total counts what copy() sees
    total = sum(not os.path.islink(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    copied = [0]
    with progress(total, label="copy", unit="files") as shown:
        def copy(src: str, dst: str) -> str:
            shutil.copy2(src, dst, follow_symlinks=False)
            copied[0] += 1
            shown.update(1)
            return dst

        shutil.copytree(root, out, symlinks=True, copy_function=copy, dirs_exist_ok=True)
    return copied[0]


def _refuse(path: Path, sample: Sample, what: str) -> BoxforgeError:
    return BoxforgeError(f"{path}: {what} for {sample.image_id}; the file changed since the dataset was read "
                         "(read it again and redo the changes)")


def _check(path: Path, sample: Sample, found: np.ndarray, labels: list[int]) -> None:
    """The labels found in the file are the sample's, in its order."""
    same = found.shape == sample.boxes.shape and np.allclose(found, sample.boxes, rtol=0, atol=SAME_BOX, equal_nan=True)
    if not same or labels != sample.labels.tolist():
        raise _refuse(path, sample, f"{len(found)} labels found where the index holds {sample.num_objects}"
                      if len(found) != sample.num_objects else "the labels differ from those read")


def _edited(labels: int, changes: list[Edit]) -> tuple[set[int], dict[int, Edit], dict[int, Edit], list[Edit]]:
    """(removed, moved, relabelled, added) from a sample's edits."""
    removed = {e.label for e in changes if e.op == "remove"}
    moved = {e.label: e for e in changes if e.op == "box"}
    relabelled = {e.label: e for e in changes if e.op == "class"}
    bad = [e.label for e in changes if e.op != "add" and not (isinstance(e.label, int) and 0 <= e.label < labels)]
    if bad:
        raise BoxforgeError(f"edit of label {bad[0]!r}: the image has {labels} labels")
    return removed, moved, relabelled, [e for e in changes if e.op == "add"]  # type: ignore[return-value]


# ---- VOC: the changed objects of the image's XML --------------------------------------------------------------

def _patch_voc(path: Path, entries: list[tuple[Sample, list[Edit]]], index: DatasetIndex, report: PatchReport) -> bytes:
    (sample, changes), = entries  # one XML per image
    tree = parse_xml(path)
    lookup = {c: i for i, c in enumerate(index.classes)}
    objects, boxes, labels = [], [], []
    for obj in tree.findall("object"):  # the reader's rule: readable objects of known classes, in file order
        try:
            name, coords, _, _ = parse_object(obj)
        except ValueError:
            continue
        if name in lookup:
            objects.append(obj)
            boxes.append(coords)
            labels.append(lookup[name])
    _check(path, sample, np.array(boxes, dtype=np.float64).reshape(-1, 4), labels)
    removed, moved, relabelled, added = _edited(len(objects), changes)
    for g, e in moved.items():
        box = objects[g].find("bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), e.box):  # type: ignore[arg-type]
            node = box.find(tag)  # type: ignore[union-attr]
            node.text = format_number(v)  # type: ignore[union-attr]
    for g, e in relabelled.items():
        objects[g].find("name").text = index.classes[e.cls]  # type: ignore[union-attr, index]
    for g in removed:
        tree.remove(objects[g])
    for e in added:
        _append_object(tree, index.classes[e.cls], e.box)  # type: ignore[index, arg-type]
    declared = read_bytes_bounded(path, MAX_XML_BYTES).lstrip().startswith(b"<?xml")
    return ET.tostring(tree, encoding="utf-8", xml_declaration=declared) + b"\n"


def _append_object(tree: ET.Element, name: str, box: tuple[float, ...]) -> None:
    """A new `<object>` as VOC's own files have it, indented like its siblings."""
    obj = ET.Element("object")
    for tag, text in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
        ET.SubElement(obj, tag).text = text
    bndbox = ET.SubElement(obj, "bndbox")
    for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
        ET.SubElement(bndbox, tag).text = format_number(v)
    ET.indent(obj, space="\t", level=1)
    children = list(tree)
    if children:
        obj.tail = children[-1].tail
        children[-1].tail = children[0].tail if len(children) > 1 else "\n\t"
    else:
        tree.text, obj.tail = "\n\t", "\n"
    tree.append(obj)


# ---- COCO: the changed entries of the file's annotations ------------------------------------------------------

def _patch_coco(path: Path, entries: list[tuple[Sample, list[Edit]]], index: DatasetIndex,
                report: PatchReport) -> bytes:
    doc = coco.load_json(path)
    cats = coco.category_order(doc.get("categories") or [])
    cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
    images = {im["id"]: im for im in doc.get("images", []) if isinstance(im, dict) and coco.is_id(im.get("id"))}
    per_image: dict[Any, list[int]] = {k: [] for k in images}
    annotations = doc.get("annotations") or []
    for n, ann in enumerate(annotations):  # the reader's rule (coco._annotation) for a box it keeps
        if (isinstance(ann, dict) and ann.get("image_id") in per_image and ann.get("category_id") in cat_to_label
                and coco.is_bbox(ann.get("bbox"))):
            per_image[ann["image_id"]].append(n)
    next_id = max([a["id"] for a in annotations if isinstance(a, dict) and isinstance(a.get("id"), int)
                   and not isinstance(a.get("id"), bool)], default=0) + 1
    drop: set[int] = set()
    for sample, changes in entries:
        positions = _coco_image(path, sample, images, per_image, annotations, cat_to_label)
        removed, moved, relabelled, added = _edited(len(positions), changes)
        for g, e in moved.items():
            ann = annotations[positions[g]]
            ann["bbox"], ann["area"] = coco.coco_box(e.box)  # type: ignore[arg-type]
            if ann.get("segmentation"):
                ann["segmentation"] = []
                report.notes.append(f"{sample.image_id}: the segmentation of the moved box (annotation id "
                                    f"{ann.get('id')}) was left out; it no longer fits the box")
        for g, e in relabelled.items():
            annotations[positions[g]]["category_id"] = cats[e.cls]["id"]  # type: ignore[index]
        drop |= {positions[g] for g in removed}
        image_key = annotations[positions[0]]["image_id"] if positions else _only_key(path, sample, images, per_image)
        for e in added:
            bbox, area = coco.coco_box(e.box)  # type: ignore[arg-type]
            annotations.append({"id": next_id, "image_id": image_key, "category_id": cats[e.cls]["id"],  # type: ignore[index]
                                "bbox": bbox, "area": area, "segmentation": [], "iscrowd": 0})
            next_id += 1
    doc["annotations"] = [a for n, a in enumerate(annotations) if n not in drop]
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _coco_candidates(sample: Sample, images: dict[Any, dict]) -> list[Any]:
    """Images of the file that may be the sample's: its id is the file name without extension, perhaps
    after a prefix (`VOC2007/`, `train/`) that merging several folders or splits adds."""
    out = []
    for key, im in images.items():
        stem = strip_image_ext(str(im.get("file_name", "")))
        if stem and (sample.image_id == stem or sample.image_id.endswith("/" + stem)):
            out.append(key)
    return out


def _coco_image(path: Path, sample: Sample, images: dict[Any, dict], per_image: dict[Any, list[int]],
                annotations: list[Any], cat_to_label: dict[Any, int]) -> list[int]:
    """The annotation positions of the sample's image, checked against the sample."""
    candidates = _coco_candidates(sample, images)
    if not candidates:
        raise _refuse(path, sample, "no image entry")
    problem: BoxforgeError | None = None
    for key in candidates:
        positions = per_image[key]
        found = np.array([coco.xyxy(annotations[n]["bbox"]) for n in positions], dtype=np.float64).reshape(-1, 4)
        try:
            _check(path, sample, found, [cat_to_label[annotations[n]["category_id"]] for n in positions])
            return positions
        except BoxforgeError as exc:
            problem = exc
    raise problem  # type: ignore[misc]


def _only_key(path: Path, sample: Sample, images: dict[Any, dict], per_image: dict[Any, list[int]]) -> Any:
    keys = [k for k in _coco_candidates(sample, images) if not per_image[k]]
    if not keys:
        raise _refuse(path, sample, "no image entry")
    return keys[0]


# ---- YOLO: the changed lines of the image's label file --------------------------------------------------------

def _patch_yolo(path: Path, entries: list[tuple[Sample, list[Edit]]], index: DatasetIndex,
                report: PatchReport) -> bytes:
    (sample, changes), = entries  # one label file per image
    text = read_bytes_bounded(path, yolo.MAX_LABEL_BYTES).decode("utf-8") if path.is_file() else ""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.endswith("\r\n") else "\n"
    rows: list[int] = []  # line number of each label, by the reader's own parse of each line
    parsed = []
    for n, line in enumerate(lines):
        row = yolo.parse_label_rows(line, len(index.classes), "", "", [])
        if row:
            rows.append(n)
            parsed.append(row[0])
    w, h = sample.width, sample.height
    if changes and (w <= 0 or h <= 0):
        raise BoxforgeError(f"{path}: the size of {sample.image_id}'s image is unknown; YOLO boxes are fractions of it")
    found = np.array([[cx * w - bw * w / 2, cy * h - bh * h / 2, cx * w + bw * w / 2, cy * h + bh * h / 2]
                      for _, cx, cy, bw, bh in parsed], dtype=np.float64).reshape(-1, 4)
    _check(path, sample, found, [r[0] for r in parsed])
    removed, moved, relabelled, added = _edited(len(rows), changes)
    for g in set(moved) | set(relabelled):
        cls = relabelled[g].cls if g in relabelled else parsed[g][0]
        if g in moved:  # a segment line becomes a box line: its polygon no longer fits
            lines[rows[g]] = _yolo_line(cls, moved[g].box, sample, path, report)  # type: ignore[arg-type]
        else:  # the class id swapped, the rest of the line as it was
            lines[rows[g]] = re.sub(r"^(\s*)\S+", lambda m: f"{m.group(1)}{cls}", lines[rows[g]], count=1)
    for g in removed:
        lines[rows[g]] = ""
    if added and lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    lines += [_yolo_line(e.cls, e.box, sample, path, report) for e in added]  # type: ignore[arg-type]
    return "".join(lines).encode("utf-8")


def _yolo_line(cls: int, box: tuple[float, ...], sample: Sample, path: Path, report: PatchReport) -> str:
    w, h = sample.width, sample.height
    b = np.array(box, dtype=np.float64)
    clipped = np.clip(b, 0, [w, h, w, h])
    if (clipped != b).any():
        report.notes.append(f"{path.name}: a box of {sample.image_id} clipped to the image (YOLO needs 0..1)")
    x1, y1, x2, y2 = clipped.tolist()
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"


# ---- text list: the changed fields of the image's line --------------------------------------------------------

def _patch_txt(path: Path, entries: list[tuple[Sample, list[Edit]]], index: DatasetIndex, report: PatchReport) -> bytes:
    text = read_bytes_bounded(path, MAX_LIST_BYTES).decode("utf-8-sig")
    lines = text.splitlines(keepends=True)
    nc = len(index.classes)
    for sample, changes in entries:
        n, fields = _txt_line(path, lines, sample, nc)
        boxes = [i for i, f in enumerate(fields) if i and txtlist.parse_box_field(f, nc, "", "", "", []) is not None]
        parsed = [txtlist.parse_box_field(fields[i], nc, "", "", "", []) for i in boxes]
        _check(path, sample, np.array([p[0] for p in parsed], dtype=np.float64).reshape(-1, 4),  # type: ignore[index]
               [p[1] for p in parsed])  # type: ignore[index]
        removed, moved, relabelled, added = _edited(len(boxes), changes)
        for g in range(len(boxes)):
            coords, label = parsed[g]  # type: ignore[misc]
            coords = list(moved[g].box) if g in moved else coords  # type: ignore[arg-type]
            label = relabelled[g].cls if g in relabelled else label
            if g in moved or g in relabelled:
                fields[boxes[g]] = txtlist.format_box_field(coords, label)
        for g in removed:
            fields[boxes[g]] = ""
        fields += [txtlist.format_box_field(e.box, e.cls) for e in added]  # type: ignore[arg-type]
        ending = lines[n][len(lines[n].rstrip("\r\n")):]
        lines[n] = " ".join(f for f in fields if f) + ending
    return "".join(lines).encode("utf-8")


def _txt_line(path: Path, lines: list[str], sample: Sample, nc: int) -> tuple[int, list[str]]:
    """(line number, fields) of the sample's line: its image path gives the sample's id."""
    for n, raw in enumerate(lines):
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        fields = raw.split()
        image_id = id_from_relpath(fields[0])
        if sample.image_id == image_id or sample.image_id.endswith("/" + image_id):
            return n, fields
    raise _refuse(path, sample, "no line")


_PATCHERS: dict[str, Callable[[Path, list[tuple[Sample, list[Edit]]], DatasetIndex, PatchReport], bytes]] = {
    "voc": _patch_voc, "coco": _patch_coco, "yolo": _patch_yolo, "txt": _patch_txt}
