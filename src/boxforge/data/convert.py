"""`boxforge convert`: write an index as VOC, COCO, YOLO or a text list, losing no valid box.

Invalid boxes (NaN, zero or negative area) are never silently fixed: they are
left out and counted. What the target cannot hold (difficult/truncated flags) is
named in the report. Images are copied, never moved or linked. Progress goes to stderr
(boxforge/progress.py: a bar on a terminal, else a line every few seconds for a long run).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from boxforge.data import boxes as box_rules
from boxforge.data.formats.coco import coco_box
from boxforge.data.formats.txtlist import format_txtlist_line
from boxforge.data.formats.voc import write_voc_annotation
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError
from boxforge.progress import Progress, progress

TARGETS: tuple[str, ...] = ("voc", "coco", "yolo", "txt")
Writer = Callable[[DatasetIndex, Path, "ConvertReport", Progress], None]  # counts each sample on the Progress


@dataclass
class ConvertReport:
    target: str
    out: Path
    images: int = 0
    objects: int = 0
    dropped: list[str] = field(default_factory=list)
    clipped: int = 0
    missing_images: list[str] = field(default_factory=list)
    lost_fields: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.images} images and {self.objects} objects as {self.target} to {self.out}"]
        if self.dropped:
            lines.append(f"left out {len(self.dropped)} invalid boxes (not fixed): " + "; ".join(self.dropped[:5])
                         + (" ..." if len(self.dropped) > 5 else ""))
        if self.clipped:
            lines.append(f"clipped {self.clipped} boxes that extend outside their image (YOLO needs 0..1)")
        if self.missing_images:
            lines.append(f"{len(self.missing_images)} images were missing and not copied: "
                         + ", ".join(self.missing_images[:5]))
        lines += [f"the {self.target} format cannot hold: {f}" for f in self.lost_fields]
        return "\n".join(lines)


def convert(index: DatasetIndex, out: Path, to: str) -> ConvertReport:
    """Write `index` to the empty (or new) folder `out` in format `to`."""
    if to not in TARGETS:
        raise BoxforgeError(f"unknown target format {to!r}; choose one of: {', '.join(TARGETS)}")
    if index.task != "detect":
        raise BoxforgeError(f"convert writes detection formats; {index.format} is a {index.task} set")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BoxforgeError(f"{out}: folder is not empty; convert writes only into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    report = ConvertReport(to, out)
    writer: Writer = _WRITERS[to]
    with progress(len(index.samples), label="convert", unit="images") as shown:
        writer(index, out, report, shown)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in index.classes), encoding="utf-8")
    return report


def _valid(sample: Sample, report: ConvertReport) -> Sample:
    """The sample with invalid boxes removed (and recorded)."""
    keep = box_rules.valid_mask(sample.boxes)
    for i in np.flatnonzero(~keep):
        report.dropped.append(f"{sample.image_id} object {i + 1} {sample.boxes[i].tolist()}")
    clean = Sample(sample.image_id, sample.image_path, sample.width, sample.height, sample.boxes[keep],
                   sample.labels[keep], sample.difficult[keep], sample.truncated[keep],
                   annotation_path=sample.annotation_path)
    report.objects += int(keep.sum())
    return clean


def _copy_image(sample: Sample, dest_dir: Path, report: ConvertReport) -> str:
    """Copy the image to `dest_dir/<image_id><ext>`; returns that path relative to dest_dir."""
    ext = sample.image_path.suffix if sample.image_path else ".jpg"
    rel = f"{sample.image_id}{ext}"
    if sample.image_path is None or not sample.image_path.is_file():
        report.missing_images.append(sample.image_id)
        return rel
    target = dest_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample.image_path, target)
    report.images += 1
    return rel


def _split_lists(index: DatasetIndex) -> dict[str, list[str]]:
    present = {s.image_id for s in index.samples}
    lists = {name: [i for i in ids if i in present] for name, ids in index.splits.items() if "/" not in name}
    lists = {k: v for k, v in lists.items() if v}
    if index.split and index.split not in lists and not Path(index.split).suffix:
        lists[index.split] = [s.image_id for s in index.samples]
    return lists


def _write_voc(index: DatasetIndex, out: Path, report: ConvertReport, shown: Progress) -> None:
    for sample in shown.iterate(index.samples):
        clean = _valid(sample, report)
        rel = _copy_image(sample, out / "JPEGImages", report)
        clean.image_path = out / "JPEGImages" / rel
        write_voc_annotation(out / "Annotations" / f"{sample.image_id}.xml", clean, index.classes)
    main = out / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for name, ids in _split_lists(index).items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def _write_coco(index: DatasetIndex, out: Path, report: ConvertReport, shown: Progress) -> None:
    name = index.split if index.split and not Path(index.split).suffix else "all"
    cat_ids = index.meta.get("category_ids") or list(range(1, len(index.classes) + 1))
    from_coco = index.format == "coco"
    images, annotations = [], []
    for number, sample in enumerate(shown.iterate(index.samples), start=1):
        clean = _valid(sample, report)
        rel = _copy_image(sample, out / "images" / name, report)
        images.append({"id": number, "file_name": rel, "width": sample.width, "height": sample.height})
        for box, label, difficult in zip(clean.boxes.tolist(), clean.labels.tolist(), clean.difficult.tolist()):
            bbox, area = coco_box(box)
            ann: dict[str, Any] = {"id": len(annotations) + 1, "image_id": number, "category_id": cat_ids[label],
                                   "bbox": bbox, "area": area, "segmentation": [],
                                   "iscrowd": int(difficult and from_coco)}
            if difficult and not from_coco:
                ann["difficult"] = 1  # VOC difficult is not COCO crowd; kept as an extra key boxforge reads back
            annotations.append(ann)
    categories = [{"id": cid, "name": n, "supercategory": ""} for cid, n in zip(cat_ids, index.classes)]
    doc = {"info": {"description": f"converted by boxforge from {index.format}"}, "licenses": [],
           "images": images, "annotations": annotations, "categories": categories}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{name}.json").write_text(json.dumps(doc), encoding="utf-8")
    if any(s.truncated.any() for s in index.samples):
        report.lost_fields.append("truncated flags")


def _write_yolo(index: DatasetIndex, out: Path, report: ConvertReport, shown: Progress) -> None:
    for sample in shown.iterate(index.samples):
        clean = _valid(sample, report)
        _copy_image(sample, out / "images", report)
        lines = []
        if clean.num_objects and (clean.width <= 0 or clean.height <= 0):
            report.dropped.extend(f"{sample.image_id} object {i + 1} (image size unknown)" for i in range(clean.num_objects))
            report.objects -= clean.num_objects
        elif clean.num_objects:
            b = clean.boxes.astype(np.float64)
            clipped = np.clip(b, 0, [clean.width, clean.height, clean.width, clean.height])
            report.clipped += int((clipped != b).any(axis=1).sum())
            cx, cy = (clipped[:, 0] + clipped[:, 2]) / 2 / clean.width, (clipped[:, 1] + clipped[:, 3]) / 2 / clean.height
            w, h = (clipped[:, 2] - clipped[:, 0]) / clean.width, (clipped[:, 3] - clipped[:, 1]) / clean.height
            lines = [f"{int(c)} {x:.6f} {y:.6f} {ww:.6f} {hh:.6f}" for c, x, y, ww, hh in zip(clean.labels, cx, cy, w, h)]
        label_path = out / "labels" / f"{sample.image_id}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    doc: dict[str, Any] = {"path": ".", "train": "images"}
    ext = {s.image_id: s.image_path.suffix if s.image_path else ".jpg" for s in index.samples}
    split_lists = _split_lists(index)
    for name, ids in split_lists.items():
        (out / f"{name}.txt").write_text("".join(f"images/{i}{ext[i]}\n" for i in ids), encoding="utf-8")
    ultralytics_keys = [k for k in ("train", "val", "test") if k in split_lists]
    if ultralytics_keys:
        doc = {"path": ".", **{k: f"{k}.txt" for k in ultralytics_keys}}
    doc.update({"nc": len(index.classes), "names": list(index.classes)})
    (out / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    if any(s.difficult.any() for s in index.samples):
        report.lost_fields.append("difficult flags")
    if any(s.truncated.any() for s in index.samples):
        report.lost_fields.append("truncated flags")


def _write_txt(index: DatasetIndex, out: Path, report: ConvertReport, shown: Progress) -> None:
    lines = {}
    for sample in shown.iterate(index.samples):
        clean = _valid(sample, report)
        rel = _copy_image(sample, out / "images", report)
        lines[sample.image_id] = format_txtlist_line(clean, f"images/{rel}")
    (out / "all.txt").write_text("".join(f"{v}\n" for v in lines.values()), encoding="utf-8")
    for name, ids in _split_lists(index).items():
        (out / f"{name}.txt").write_text("".join(f"{lines[i]}\n" for i in ids), encoding="utf-8")
    if any(s.difficult.any() for s in index.samples):
        report.lost_fields.append("difficult flags")
    if any(s.truncated.any() for s in index.samples):
        report.lost_fields.append("truncated flags")


_WRITERS: dict[str, Writer] = {
    "voc": _write_voc, "coco": _write_coco, "yolo": _write_yolo, "txt": _write_txt}
