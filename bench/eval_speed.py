"""How fast is evaluation? VOC (ours, numpy) on a VOC07-test-sized set; COCO through boxforge vs plain pycocotools.

COCO: boxforge's `evaluate_coco` (faster-coco-eval when installed) against plain
pycocotools (COCO + COCOeval on the same in-memory ground truth and results), on the same
set, repeats interleaved; the 12 stats must agree to 1e-6. Targets: VOC under 1 s for
5,000 images x 20 classes x 100 detections; COCO at least 3x plain pycocotools.

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
from boxforge.evaluation.coco import index_to_coco, to_coco_results

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


def plain_pycocotools(index: DatasetIndex, preds: Predictions) -> list[float]:
    """What a user of pycocotools does: COCO ground truth, loadRes, COCOeval evaluate/accumulate/summarize."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = index_to_coco(index)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(to_coco_results(preds, index)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "torch": version("torch"),
            "pycocotools": version("pycocotools"), "faster_coco_eval": _version("faster-coco-eval"),
            "load_avg_1m_at_write": round(os.getloadavg()[0], 2), **({"note": os.environ["BENCH_NOTE"]}
                                                                    if os.environ.get("BENCH_NOTE") else {})}


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


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
    index, preds = synthetic(args.images, args.classes, args.dets, args.seed)
    times, value = timed(lambda: evaluate_voc(index, preds)["voc12"]["map"], args.repeats)
    cases.append({"case": "voc07+voc12 (boxforge numpy)", "images": args.images, "classes": args.classes,
                  "detections": len(preds), "ground_truth": index.num_objects, "median_s": statistics.median(times),
                  "times_s": times, "metric": value, "target_s": 1.0, "met": statistics.median(times) < 1.0})
    index, preds = synthetic(args.coco_images, args.classes, args.dets, args.seed)
    coco_runs = {"coco (boxforge evaluate_coco)": lambda: evaluate_coco(index, preds)["stats"],
                 "coco (plain pycocotools)": lambda: plain_pycocotools(index, preds)}
    coco_times: dict[str, list[float]] = {name: [] for name in coco_runs}
    stats = {}
    for _ in range(args.repeats):  # interleaved
        for name, run in coco_runs.items():
            t, stats[name] = timed(run, 1)
            coco_times[name] += t
    for name, times in coco_times.items():
        cases.append({"case": name, "images": args.coco_images, "classes": args.classes, "detections": len(preds),
                      "ground_truth": index.num_objects, "median_s": statistics.median(times), "times_s": times,
                      "metric": stats[name][0]})
    fast, plain = (statistics.median(t) for t in coco_times.values())
    diff = float(np.max(np.abs(np.array(stats["coco (boxforge evaluate_coco)"]) - stats["coco (plain pycocotools)"])))
    coco_summary = {"speedup": plain / fast, "target_speedup": 3.0, "met": plain / fast >= 3.0,
                    "max_abs_stat_difference": diff, "backend": "faster-coco-eval" if _version("faster-coco-eval")
                    else "pycocotools"}

    print(f"{'case':<30} {'images':>7} {'dets':>8} {'gt':>7} {'median s':>9} {'mAP/AP':>7}")
    for c in cases:
        print(f"{c['case']:<30} {c['images']:>7} {c['detections']:>8} {c['ground_truth']:>7} "
              f"{c['median_s']:>9.3f} {c['metric']:>7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"COCO speed-up over plain pycocotools: {coco_summary['speedup']:.2f}x (target 3x), "
          f"max |stat difference| {diff:.2e}")
    report = {"machine": machine(), "repeats": args.repeats, "seed": args.seed, "cases": cases,
              "coco": coco_summary}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
