"""How fast is evaluation? VOC (ours, numpy) on a VOC07-test-sized set, COCO (pycocotools) on a smaller one.

Synthetic data with a fixed seed: integer boxes in 500x375 images, 0..8 objects
per image (15% difficult), detections per image split between jittered copies of
the ground truth and random boxes. Prints a table and writes
bench/results/eval_speed.json (machine, versions, the median of --repeats runs).

    .venv/bin/python bench/eval_speed.py [--images 5000 --classes 20 --dets 100 --coco-images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from boxforge.data.index import DatasetIndex, Sample
from boxforge.evaluation import Predictions, evaluate_coco, evaluate_voc

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"
WIDTH, HEIGHT = 500, 375


def boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    x1, y1 = rng.integers(1, WIDTH - 40, n), rng.integers(1, HEIGHT - 40, n)
    w, h = rng.integers(8, 200, n), rng.integers(8, 150, n)
    return np.stack([x1, y1, np.minimum(x1 + w, WIDTH), np.minimum(y1 + h, HEIGHT)], 1).astype(np.float64)


def synthetic(images: int, classes: int, dets: int, seed: int) -> tuple[DatasetIndex, Predictions]:
    """An index and `dets` detections per image (half near ground truth), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    names = [f"class{c:02d}" for c in range(classes)]
    samples, preds = [], Predictions(names)
    for i in range(images):
        n = int(rng.integers(0, 9))
        gt = boxes(rng, n)
        gt_labels = rng.integers(0, classes, n)
        samples.append(Sample(f"{i:06d}", None, WIDTH, HEIGHT, boxes=gt, labels=gt_labels,
                              difficult=rng.random(n) < 0.15))
        det, labels = boxes(rng, dets), rng.integers(0, classes, dets)
        if n:
            hit = np.flatnonzero(rng.random(dets) < 0.5)
            src = rng.integers(0, n, len(hit))
            det[hit] = gt[src] + rng.normal(0, 6, (len(hit), 4)).round()
            labels[hit] = gt_labels[src]
        preds.add(f"{i:06d}", det, rng.random(dets).round(4), labels)
    return DatasetIndex(names, samples, "voc", Path("synthetic")), preds


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "torch": version("torch"),
            "pycocotools": version("pycocotools")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--dets", type=int, default=100, help="detections per image (all classes together)")
    ap.add_argument("--coco-images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    cases = []
    for name, images, run in (
        ("voc07+voc12 (boxforge numpy)", args.images, lambda i, p: evaluate_voc(i, p)["voc12"]["map"]),
        ("coco (pycocotools)", args.coco_images, lambda i, p: evaluate_coco(i, p)["AP"]),
    ):
        index, preds = synthetic(images, args.classes, args.dets, args.seed)
        times, value = timed(lambda: run(index, preds), args.repeats)
        cases.append({"case": name, "images": images, "classes": args.classes, "detections": len(preds),
                      "ground_truth": index.num_objects, "median_s": statistics.median(times),
                      "times_s": times, "metric": value})

    print(f"{'case':<30} {'images':>7} {'dets':>8} {'gt':>7} {'median s':>9} {'mAP/AP':>7}")
    for c in cases:
        print(f"{c['case']:<30} {c['images']:>7} {c['detections']:>8} {c['ground_truth']:>7} "
              f"{c['median_s']:>9.3f} {c['metric']:>7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "repeats": args.repeats, "seed": args.seed, "cases": cases}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
