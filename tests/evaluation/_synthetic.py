"""Random ground truth and detections shared by the evaluation tests and `bench/eval_speed.py`.

Boxes have integer corners (exact in float32, as VOC's are), detections are a mix
of jittered copies of the ground truth (so there are TPs, duplicates, hits on
difficult boxes) and random boxes, and scores are rounded so that ties occur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxforge.data.index import DatasetIndex, Sample
from boxforge.evaluation.predictions import Predictions


def random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    x1 = rng.integers(1, width - 20, n)
    y1 = rng.integers(1, height - 20, n)
    w = rng.integers(4, np.maximum(5, (width - x1) // 2 + 5), n)
    h = rng.integers(4, np.maximum(5, (height - y1) // 2 + 5), n)
    return np.stack([x1, y1, np.minimum(x1 + w, width), np.minimum(y1 + h, height)], 1).astype(np.float64)


def random_index(rng: np.random.Generator, images: int, classes: int, *, max_objects: int = 6,
                 difficult_rate: float = 0.15, fmt: str = "voc", width: int = 500, height: int = 375) -> DatasetIndex:
    samples = []
    for i in range(images):
        n = int(rng.integers(0, max_objects + 1))
        samples.append(Sample(f"img_{i:05d}", Path(f"/nonexistent/img_{i:05d}.jpg"), width, height,
                              boxes=random_boxes(rng, n, width, height), labels=rng.integers(0, classes, n),
                              difficult=rng.random(n) < difficult_rate))
    names = [f"class{c}" for c in range(classes)]
    return DatasetIndex(names, samples, fmt, Path("/nonexistent"))


def random_predictions(rng: np.random.Generator, index: DatasetIndex, per_image: int, *,
                       hit_rate: float = 0.5, score_decimals: int = 2) -> Predictions:
    """`per_image` detections per image: about `hit_rate` of them jittered ground truth, the rest random."""
    preds = Predictions(list(index.classes))
    k = len(index.classes)
    for s in index.samples:
        boxes = random_boxes(rng, per_image, max(s.width, 40), max(s.height, 40))
        labels = rng.integers(0, k, per_image)
        if s.num_objects:
            hits = np.flatnonzero(rng.random(per_image) < hit_rate)
            source = rng.integers(0, s.num_objects, len(hits))
            jitter = rng.normal(0, 3, (len(hits), 4)).round()
            boxes[hits] = s.boxes[source] + jitter
            labels[hits] = np.where(rng.random(len(hits)) < 0.9, s.labels[source], labels[hits])
        scores = rng.random(per_image).round(score_decimals)
        preds.add(s.image_id, boxes, scores, labels)
    return preds
