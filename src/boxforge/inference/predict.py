"""`predict` for detectors: run a loaded model on image files, draw and write what it found.

Outputs in OUT (default runs/predict):
  <image id>.<ext>          each image with its detections drawn (ext kept for jpg/png/bmp/webp, else png)
  predictions.json          the evaluation predictions format (see evaluation/predictions.py), boxes in
                            each image's own pixels, plus "images": [{image, path, width, height}] for
                            every image read (with or without detections)
  per_class/<class>.json    with per_class_json: every image and box of that class
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.evaluation.predictions import Predictions, save_predictions
from boxforge.files import write_json
from boxforge.inference.batches import ImageResult, ImageSource, image_progress, iter_detections
from boxforge.inference.load import LoadedModel
from boxforge.inference.sources import resolve_sources
from boxforge.plots.draw import draw_detections

KEEP_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class PredictReport:
    out: Path
    model: str
    images: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    drawn: int = 0
    predictions_file: Path | None = None
    per_class_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def detections(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        lines = [f"note: {note}" for note in self.notes]
        lines.append(f"{self.images} images, {self.detections} detections ({rate:.1f} img/s) with {self.model}")
        width = max((len(n) for n in self.counts), default=5)
        lines += [f"  {name.ljust(width)}  {count}" for name, count in self.counts.items()]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable images:")
            lines += [f"  {reason}" for _, reason in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... and {len(self.skipped) - 10} more")
        if self.drawn:
            lines.append(f"drawn images: {self.out}/")
        if self.predictions_file:
            lines.append(f"predictions: {self.predictions_file}")
        if self.per_class_files:
            lines.append(f"per-class files: {self.per_class_files[0].parent}/ ({len(self.per_class_files)} classes)")
        return "\n".join(lines)


def safe_filename(name: str) -> str:
    """A class name as a file name: anything but letters, digits, `-`, `_`, `.` becomes `_`."""
    cleaned = re.sub(r"[^\w.-]", "_", name).strip(".")
    return cleaned or "class"


def _drawn_path(out: Path, result: ImageResult) -> Path:
    ext = result.path.suffix.lower()
    return out / f"{result.image_id}{ext if ext in KEEP_EXTENSIONS else '.png'}"


def _save_drawn(out: Path, result: ImageResult, classes: Sequence[str]) -> None:
    pixels = result.pixels.permute(1, 2, 0).numpy()
    image = draw_detections(pixels, result.boxes, result.scores, result.labels, classes)
    path = _drawn_path(out, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": 95} if path.suffix in (".jpg", ".jpeg") else {}))


DEFAULT_POSTPROCESS = {"score_thresh": 0.5, "iou_thresh": 0.45, "max_det": 100}  # predict's, not eval's


def predict_detections(loaded: LoadedModel, sources: Sequence[str | Path], *, out: str | Path = "runs/predict",
                       score_thresh: float | None = None, iou_thresh: float | None = None,
                       max_det: int | None = None, json_path: str | Path | None = None,
                       per_class_json: bool = False, draw: bool = True, batch_size: int = 8, workers: int = 0,
                       progress: bool = True, img_size: int | None = None) -> PredictReport:
    """Detect objects in every image SOURCES name (files, folders, globs); see the module docstring for outputs.

    score_thresh, iou_thresh (NMS), max_det: None means predict's defaults (0.5, 0.45, 100).
    json_path: where the predictions file goes (default OUT/predictions.json).
    img_size: the size `loaded` was opened at, when --img-size chose it (named in a note).
    """
    out = Path(out)
    items = resolve_sources(sources, exclude=out)
    settings = {k: v if v is not None else DEFAULT_POSTPROCESS[k]
                for k, v in (("score_thresh", score_thresh), ("iou_thresh", iou_thresh), ("max_det", max_det))}
    backend = loaded.backend
    backend.configure(**settings)
    classes = list(backend.classes)
    report = PredictReport(out, f"{loaded.meta.source.name} ({loaded.meta.model_name}, {loaded.meta.kind})",
                           counts={name: 0 for name in classes}, notes=list(backend.notes))
    if img_size is not None:
        report.notes.append(f"input size {backend.img_size} px (--img-size)")
    found = Predictions(classes)
    images: list[dict[str, Any]] = []
    per_class: list[list[dict[str, Any]]] = [[] for _ in classes]
    start = time.perf_counter()
    with image_progress(len(items), "predict", enabled=progress) as shown:
        results = iter_detections(backend, ImageSource.files(items), batch_size=batch_size, workers=workers,
                                  keep_pixels=draw, progress=shown.update)
        for result in results:
            if result.error:
                report.skipped.append((result.path, result.error))
                continue
            report.images += 1
            images.append({"image": result.image_id, "path": str(result.path), "width": result.width,
                           "height": result.height})
            boxes, scores = np.round(result.boxes, 3), np.round(result.scores, 6)  # 0.001 px: plenty, and short
            if len(boxes):
                found.add(result.image_id, boxes, scores, result.labels)
            for label in result.labels.tolist():
                report.counts[classes[label]] += 1
            for c in np.unique(result.labels).tolist():
                keep = result.labels == c
                per_class[c].append({**images[-1], "boxes": boxes[keep].tolist(), "scores": scores[keep].tolist()})
            if draw:
                _save_drawn(out, result, classes)
                report.drawn += 1
    report.seconds = time.perf_counter() - start
    report.predictions_file = save_predictions(found, classes, Path(json_path) if json_path else
                                               out / "predictions.json", images=images,
                                               extra={"model": str(loaded.meta.source), "settings": settings})
    if per_class_json:
        used: set[str] = set()
        for c, name in enumerate(classes):
            stem = safe_filename(name)
            stem = f"{stem}_{c}" if stem.lower() in used else stem  # "a b" and "a_b", or names differing in case
            used.add(stem.lower())
            doc = {"class": name, "objects": sum(len(e["boxes"]) for e in per_class[c]),
                   "settings": settings, "images": per_class[c]}
            report.per_class_files.append(write_json(out / "per_class" / f"{stem}.json", doc))
    return report
