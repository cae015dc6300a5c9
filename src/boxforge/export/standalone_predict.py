#!/usr/bin/env python3
"""Detect objects with a boxforge export, needing only onnxruntime, numpy and pillow (no boxforge, no torch).

    python predict.py IMAGE_OR_FOLDER ... [--model model.onnx] [--out OUT] [--json FILE]
                      [--score-thresh 0.5] [--iou-thresh 0.45] [--max-det 100] [--threads N] [--no-draw]

Writes OUT/<image id>.<ext> with the boxes drawn, and the predictions file `boxforge predict --json`
writes (OUT/predictions.json by default): {"classes": [...], "predictions": [{"image", "label", "score",
"box": [x1, y1, x2, y2] in the image's own pixels}], "images": [{"image", "path", "width", "height"}],
"model", "settings"}. Image ids as boxforge gives them: a file's stem, or its path relative to the
folder named, without extension.

Pre-processing is boxforge's: EXIF orientation applied, RGB, resized to S x S (no letterbox) with an
antialiased bilinear filter, scaled to 0..1; the graph normalises, decodes boxes and runs NMS itself, and
takes the three thresholds as inputs. boxforge resizes with torchvision's antialiased bilinear on uint8,
this file with PIL's; the two differ by a grey level here and there, so scores can differ in the fourth
decimal and boxes by a fraction of a pixel (README.md in this folder gives the figures measured).

This file is written by `boxforge export --bundle` and is meant to be copied and edited.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
KEEP_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def find_images(sources: list[str]) -> list[tuple[str, Path]]:
    """[(image id, path)]: files as named, folders searched recursively (sorted, hidden entries skipped)."""
    found = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    file = Path(dirpath) / name
                    if file.suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                        found.append((file.relative_to(path).with_suffix("").as_posix(), file))
        elif path.is_file():
            found.append((path.stem, path))
        else:
            sys.exit(f"error: {source}: no such image file or folder")
    found.sort(key=lambda item: (sources.index(next(s for s in sources if str(item[1]).startswith(str(Path(s))))),
                                 str(item[1])))
    ids: dict[str, int] = {}
    result = []
    for image_id, path in found:
        ids[image_id] = ids.get(image_id, 0) + 1
        result.append((image_id if ids[image_id] == 1 else f"{path.parent.name}/{image_id}", path))
    return result


def load_image(path: Path, size: int) -> tuple[np.ndarray, Image.Image]:
    """((3, size, size) float32 in 0..1, the upright RGB picture): EXIF applied, as boxforge reads images."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)  # PIL's bilinear is antialiased
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0, image


def draw(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> Image.Image:
    """The picture with each box and `name score` drawn, a colour per class."""
    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        colour = COLOURS[label % len(COLOURS)]
        pen.rectangle(box, outline=colour, width=width)
        text = f"{classes[label]} {score:.2f}"
        left, top, right, bottom = pen.textbbox((box[0], box[1]), text)
        pen.rectangle((left, top - (bottom - top), right + 2, top), fill=colour)
        pen.text((box[0] + 1, top - (bottom - top)), text, fill=(255, 255, 255))
    return canvas


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", metavar="IMAGE")
    ap.add_argument("--model", type=Path, default=here / "model.onnx")
    ap.add_argument("--out", type=Path, default=Path("predictions"))
    ap.add_argument("--json", type=Path, help="predictions file (default OUT/predictions.json)")
    ap.add_argument("--score-thresh", type=float, default=0.5)
    ap.add_argument("--iou-thresh", type=float, default=0.45)
    ap.add_argument("--max-det", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--no-draw", action="store_true")
    args = ap.parse_args(argv)

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the threshold inputs have defaults; onnxruntime warns about that
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, size = json.loads(meta["class_names"]), int(meta["img_size"])
    fixed_batch = session.get_inputs()[0].shape[0]
    settings = {"score_thresh": args.score_thresh, "iou_thresh": args.iou_thresh, "max_det": args.max_det}
    feeds = {"score_thresh": np.array(args.score_thresh, np.float32),
             "iou_thresh": np.array(args.iou_thresh, np.float32), "max_det": np.array(args.max_det, np.int64)}
    entries, images = [], []
    for image_id, path in find_images(args.sources):
        try:
            pixels, picture = load_image(path, size)
        except OSError as exc:
            print(f"skipped: {path}: {exc}", file=sys.stderr)
            continue
        batch = pixels[None]
        if isinstance(fixed_batch, int) and fixed_batch > 1:
            batch = np.concatenate([batch, np.zeros((fixed_batch - 1, *pixels.shape), np.float32)])
        boxes, scores, labels, count = session.run(None, {"images": batch, **feeds})
        n = int(count[0])
        width, height = picture.size
        boxes = boxes[0, :n].astype(np.float64) * np.array([width / size, height / size] * 2)
        boxes, scores, labels = np.round(boxes, 3), np.round(scores[0, :n].astype(np.float64), 6), labels[0, :n]
        images.append({"image": image_id, "path": str(path), "width": width, "height": height})
        entries += [{"image": image_id, "label": classes[int(label)], "score": float(score), "box": box}
                    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
        if not args.no_draw:
            ext = path.suffix.lower() if path.suffix.lower() in KEEP_EXTENSIONS else ".png"
            target = args.out / f"{image_id}{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            draw(picture, boxes, scores, labels.astype(int), classes).save(target)
    out_json = args.json or args.out / "predictions.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"classes": classes, "predictions": entries, "images": images, "model": str(args.model),
           "settings": settings}
    out_json.write_text(json.dumps(doc, allow_nan=False))
    print(f"{len(images)} images, {len(entries)} detections; predictions: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
