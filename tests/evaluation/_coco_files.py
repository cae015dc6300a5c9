"""COCO files written the way COCO's own (and Roboflow's) are, and detections like a real detector's.

Ground truth: real-valued coordinates with two decimals, polygon segmentations whose `area` is the
polygon's (pycocotools' mask area, as in instances_val2017.json), crowd regions (iscrowd 1, an
uncompressed RLE), gapped category ids (COCO's 1..90 style) and image ids, images without boxes,
small, medium and large objects. Detections: float32 boxes and scores (what detectron2 writes),
jittered copies of the ground truth plus false positives, more than 100 on some images (so maxDets
matters), and optionally detections of categories the ground truth does not have.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_CATEGORY_IDS = [1, 3, 7, 18, 27, 44, 62, 90]  # a gapped subset of COCO's 1..90
SIZES = [(640, 480), (500, 375), (427, 640), (612, 612)]


def _object(rng: np.random.Generator, width: int, height: int) -> list[float]:
    """[x, y, w, h] with two decimals; a third each small (< 32^2), medium and large."""
    side = float(rng.choice([rng.uniform(6, 30), rng.uniform(34, 94), rng.uniform(100, 300)]))
    w = min(side * rng.uniform(0.6, 1.5), width - 2.0)
    h = min(side * side / w, height - 2.0)
    x, y = rng.uniform(0, width - w - 1), rng.uniform(0, height - h - 1)
    return [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]


def _polygon(rng: np.random.Generator, bbox: list[float]) -> list[list[float]]:
    """A 12-point polygon touching the box on all four sides (so its tight box is `bbox`), two decimals."""
    x, y, w, h = bbox
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radius = rng.uniform(0.6, 1.0, 12)
    px = x + w / 2 + np.cos(angles) * radius * w / 2
    py = y + h / 2 + np.sin(angles) * radius * h / 2
    px[np.argmin(px)], px[np.argmax(px)] = x, x + w
    py[np.argmin(py)], py[np.argmax(py)] = y, y + h
    return [np.round(np.stack([px, py], 1).reshape(-1), 2).tolist()]


def _crowd_rle(bbox: list[float], width: int, height: int) -> dict[str, Any]:
    """An uncompressed RLE (COCO's crowd format) of the box's pixels, with its column-major counts."""
    mask = np.zeros((height, width), np.uint8, order="F")
    x, y, w, h = (int(round(v)) for v in bbox)
    mask[y:y + h, x:x + w] = 1
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"counts": counts, "size": [height, width]}


def write_coco_files(folder: Path, seed: int, *, images: int = 24, roboflow: bool = False,
                     extra_categories: tuple[int, ...] = (), name: str = "instances.json") -> tuple[Path, Path]:
    """(instances file, results file) in `folder`; see the module docstring.

    roboflow: ids from 0 as Roboflow exports them (image ids 0.., annotation ids 0.., a category 0
    naming the dataset, with no annotation), two-decimal detections as its trainers write them.
    extra_categories: category ids the ground truth does not have, given to some false positives.
    """
    rng = np.random.default_rng(seed)
    cat_ids = [0, 1, 2, 3, 4] if roboflow else COCO_CATEGORY_IDS
    real_cats = cat_ids[1:] if roboflow else cat_ids
    gapped = sorted(rng.choice(np.arange(1, 600000), images, replace=False).tolist())
    image_ids = list(range(images)) if roboflow else gapped
    doc: dict[str, Any] = {"info": {"description": "written like COCO's own"}, "licenses": [], "images": [],
                           "annotations": [], "categories": []}
    doc["categories"] = [{"id": c, "name": f"cat{c}", "supercategory": "objects" if c else "none"} for c in cat_ids]
    results: list[dict[str, Any]] = []
    first_ann = 0 if roboflow else 1
    for number, image_id in enumerate(image_ids):
        width, height = SIZES[number % len(SIZES)]
        doc["images"].append({"id": int(image_id), "file_name": f"{image_id:012d}.jpg", "width": width,
                              "height": height, "license": 1})
        n = 0 if number % 7 == 3 else int(rng.integers(1, 12))  # some images without boxes
        for k in range(n):
            bbox, cid = _object(rng, width, height), int(rng.choice(real_cats))
            crowd = k == 0 and number % 5 == 1
            if crowd:
                seg: Any = _crowd_rle(bbox, width, height)
                area = float(mask_utils.area(mask_utils.frPyObjects(seg, height, width)))
            else:
                seg = _polygon(rng, bbox)
                area = float(mask_utils.area(mask_utils.frPyObjects(seg, height, width)).sum())
            doc["annotations"].append({"id": first_ann + len(doc["annotations"]), "image_id": int(image_id),
                                       "category_id": cid, "segmentation": seg, "area": area, "bbox": bbox,
                                       "iscrowd": int(crowd)})
            results += _detections_of(rng, bbox, cid, int(image_id), real_cats, roboflow)
        many = 140 if number % 4 == 0 else int(rng.integers(3, 20))  # > 100 detections on some images
        for _ in range(many):
            cid = int(rng.choice(list(extra_categories))) if extra_categories and rng.random() < 0.2 \
                else int(rng.choice(real_cats))
            results.append(_result(int(image_id), cid, _object(rng, width, height), rng.random() * 0.6, roboflow,
                                   rng))
    folder.mkdir(parents=True, exist_ok=True)
    gt_path, res_path = folder / name, folder / "results.json"
    gt_path.write_text(json.dumps(doc))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def _detections_of(rng: np.random.Generator, bbox: list[float], cid: int, image_id: int, cat_ids: list[int],
                   roboflow: bool) -> list[dict[str, Any]]:
    """0 to 3 jittered copies of a ground truth box (a miss, a hit, duplicates), some with the wrong class."""
    out = []
    for _ in range(int(rng.integers(0, 4))):
        x, y, w, h = bbox
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        label = cid if rng.random() < 0.9 else int(rng.choice(cat_ids))
        out.append(_result(image_id, label, box, 0.3 + 0.7 * rng.random(), roboflow, rng))
    return out


def _result(image_id: int, cid: int, box: list[float], score: float, roboflow: bool,
            rng: np.random.Generator) -> dict[str, Any]:
    if roboflow:
        return {"image_id": image_id, "category_id": cid, "bbox": [round(float(v), 2) for v in box],
                "score": round(float(score), 5)}
    f32 = [float(np.float32(v)) for v in box]  # detectron2: float32 tensors -> tolist()
    return {"image_id": image_id, "category_id": cid, "bbox": f32, "score": float(np.float32(score))}


def pycocotools_on_files(gt_path: Path, res_path: Path) -> tuple[COCOeval, str]:
    """(evaluated COCOeval, what summarize() printed) of pycocotools run on the two files, as users run it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.summarize()
    return evaluator, printed.getvalue()
