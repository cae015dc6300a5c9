"""Deployment formats of one trained detector: speed and COCO AP of each, all in one run.

For a trained checkpoint (e.g. bench/accuracy.py's yolo_csp on raccoon) and its dataset: PyTorch eager (the
checkpoint), onnxruntime fp32, onnxruntime INT8 (`export --int8`), OpenVINO fp32 and OpenVINO INT8 (NNCF),
each exported by boxforge here, calibrated on --calib-images of the train split, timed at batch 1 and 8 on
the test split's preprocessed images (ms per image: median and min/max over --repeats timed runs, the same
--threads everywhere; decoding not included), and scored by the one evaluator on the held-out split (COCO
AP, VOC12). Optionally a peer ONNX file (--peer NAME=FILE, e.g. YOLO26n exported by Ultralytics, an external
program: `yolo export model=last.pt format=onnx imgsz=320`) is timed with onnxruntime on the same test images
preprocessed at its own input size (read from the file's static input shape); its accuracy comes from
--peer-result NAME=RESULT_JSON, a bench/accuracy_suite.py job's result.json for that peer trained on the same
data (scored there by the same evaluator on the same held-out split), and is "not scored" without one.

    .venv/bin/python bench/deploy_speed.py --weights runs/bench-accuracy/default/last.pt \
        --data ../shared/datasets/raccoon [--threads 2] [--repeats 20] [--peer yolo26n=yolo26n.onnx \
        --peer-result yolo26n=runs/accuracy-suite/raccoon/yolo26n-s0/result.json]

Prints a table and writes bench/results/deploy_speed.json. The goals it checks (issue 20): the fastest CPU
export at least 3x eager at batch 1 with at most 1 point of COCO AP lost; and, per scored peer, an export of
ours at least as accurate and faster at batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import package_version as package, timed, write  # noqa: E402

import boxforge  # noqa: E402
from boxforge.inference import load_model  # noqa: E402

BATCHES = (1, 8)


def spread(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    """common.timed after `warmup` untimed calls (first runs allocate and pick kernels)."""
    for _ in range(warmup):
        fn()
    return timed(fn, repeats)


def per_batch(run, images: torch.Tensor, repeats: int, batches: tuple[int, ...] | list[int] = BATCHES) -> dict:
    """{"b1": timing, "b8": ...}: `run(images[:B])` timed per batch size (a quarter of the repeats above b1)."""
    timing = {}
    for batch in batches:
        x = images[:batch]
        t = spread(lambda: run(x), max(3, repeats // (4 if batch > 1 else 1)))
        timing[f"b{batch}"] = {**t, "ms_per_image": 1000 * t["median_s"] / batch,
                               "min_ms_per_image": 1000 * t["min_s"] / batch}
    return timing


def test_batch(data: str, size: int, count: int) -> torch.Tensor:
    """(count, 3, size, size) of the held-out split's images, preprocessed as predict does."""
    from boxforge.data.formats.detect import load_dataset
    from boxforge.data.splits import plan_splits
    from boxforge.inference.batches import ImageSource, detection_input, iter_batches

    plan = plan_splits(data)
    index = load_dataset(data, split=plan.test)
    source = ImageSource.index(index)
    images = [item[1] for batch in iter_batches(source, detection_input(size), batch_size=16) for item in batch
              if item[1] is not None]
    return torch.stack(images[:count])




def time_peer(peer: str, path: str, scored: dict[str, str], args: argparse.Namespace, size: int) -> dict:
    """A peer's ONNX timed with onnxruntime on the test images preprocessed at its own static input size;
    its COCO AP / VOC12 from an accuracy_suite result.json when one is given for it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    own = shape[2] if isinstance(shape[2], int) else size
    entry: dict = {"format": f"{peer} onnxruntime (peer)", "peer": peer, "img_size": own, "timing": {},
                   "input_shape": [str(d) for d in shape]}
    if peer in scored:
        result = json.loads(Path(scored[peer]).read_text())
        entry.update(coco_AP=result["metrics"]["coco_ap"], voc12_map=result["metrics"]["voc12"],
                     scored_by=f"{scored[peer]} (accuracy_suite: {result['minutes']:g} min from scratch, "
                               f"seed {result['seed']})")
    images = test_batch(args.data, own, max(BATCHES))
    name = session.get_inputs()[0].name
    batches = [b for b in BATCHES if not isinstance(shape[0], int) or shape[0] == b]
    entry["timing"] = per_batch(lambda x: session.run(None, {name: x.numpy().astype(np.float32)}), images,
                                args.repeats, batches)
    return entry


def summarize(results: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """Speed-ups against eager (results[0]) written into each timing, the table rows, and the issue's goal:
    the fastest export within 1 point of COCO AP, at least 3x eager at batch 1."""
    rows: list[tuple[str, str]] = []
    eager = results[0]
    for e in results:
        for b, t in e["timing"].items():
            t["speedup_vs_eager"] = eager["timing"][b]["median_s"] / t["median_s"]
            ap = f"COCO AP {e['coco_AP']:.3f} VOC12 {e['voc12_map']:.3f}" if "coco_AP" in e else "not scored"
            ap += f" at {e['img_size']} px" + (" (scored by accuracy_suite)" if e.get("scored_by") else "")
            rows.append((f"{e['format']:<34} {b}", f"{t['ms_per_image']:7.2f} ms/img (min {t['min_ms_per_image']:.2f})"
                         f"  {t['speedup_vs_eager']:5.2f}x eager  {ap}"))
    exports = [e for e in results[1:] if "coco_AP" in e and not e.get("peer")]
    within = [e for e in exports if 100 * (eager["coco_AP"] - e["coco_AP"]) <= 1.0]
    best = max(within, key=lambda e: e["timing"]["b1"]["speedup_vs_eager"], default=None)
    goal = {"target_speedup_b1": 3.0, "max_ap_drop_points": 1.0,
            "fastest_within_1_point": best and best["format"],
            "speedup": best and best["timing"]["b1"]["speedup_vs_eager"],
            "met": bool(best and best["timing"]["b1"]["speedup_vs_eager"] >= 3.0)}
    rows.append(("goal: >= 3x eager at b1, <= 1 point COCO AP lost",
                 f"{'met' if goal['met'] else 'MISSED'}: {goal['fastest_within_1_point']} "
                 f"{goal['speedup'] or 0:.2f}x"))
    goal["peers"] = {}
    for peer in (e for e in results if e.get("peer") and "coco_AP" in e):
        ms = peer["timing"]["b1"]["ms_per_image"]
        ours = [e for e in exports if e["coco_AP"] >= peer["coco_AP"]]
        fastest = min(ours, key=lambda e: e["timing"]["b1"]["ms_per_image"], default=None)
        met = bool(fastest and fastest["timing"]["b1"]["ms_per_image"] < ms)
        goal["peers"][peer["peer"]] = {"peer_ms_b1": ms, "peer_coco_AP": peer["coco_AP"], "met": met,
                                       "ours": fastest and fastest["format"],
                                       "ours_ms_b1": fastest and fastest["timing"]["b1"]["ms_per_image"],
                                       "ours_coco_AP": fastest and fastest["coco_AP"]}
        rows.append((f"goal: faster than {peer['peer']} at >= its COCO AP ({peer['coco_AP']:.3f}), b1",
                     f"{'met' if met else 'MISSED'}: " + (f"{fastest['format']} {fastest['timing']['b1']['ms_per_image']:.2f}"
                                                         f" vs {ms:.2f} ms" if fastest else "no export as accurate")))
    return rows, goal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a trained detection checkpoint")
    parser.add_argument("--data", required=True, help="its dataset (calibration: train split; scoring: held-out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (batch 8: a quarter)")
    parser.add_argument("--calib-images", type=int, default=100)
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=ONNX")
    parser.add_argument("--peer-result", action="append", default=[], metavar="NAME=RESULT_JSON",
                        help="bench/accuracy_suite.py's result.json of that peer trained on --data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: list[dict] = []
    size = load_model(args.weights, "cpu").meta.img_size
    images = test_batch(args.data, size, max(BATCHES))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"pytorch eager": Path(args.weights)}
        files["onnxruntime fp32"] = boxforge.export_onnx(args.weights, Path(tmp) / "fp32.onnx",
                                                         dynamic_batch=True).path
        files["onnxruntime int8"] = boxforge.export_onnx(args.weights, Path(tmp) / "int8.onnx", dynamic_batch=True,
                                                         int8=True, calib=args.data,
                                                         calib_images=args.calib_images).path
        if package("openvino"):
            files["openvino fp32"] = boxforge.export_onnx(args.weights, Path(tmp) / "ov", format="openvino",
                                                          dynamic_batch=True).path
            if package("nncf"):
                files["openvino int8"] = boxforge.export_onnx(args.weights, Path(tmp) / "ov8", format="openvino",
                                                              dynamic_batch=True, int8=True, calib=args.data,
                                                              calib_images=args.calib_images).path
        loaded = {name: load_model(path, "cpu", threads=args.threads) for name, path in files.items()}
        for name, model in loaded.items():
            backend = model.backend
            backend.configure(score_thresh=0.001, iou_thresh=None, max_det=100)
            ev = boxforge.evaluate(args.data, weights=files[name], metrics=["coco", "voc12"], progress=False)
            entry = {"format": name, "img_size": size, "coco_AP": float(ev.results["coco"]["AP"]),
                     "voc12_map": float(ev.results["voc12"]["map"]), "eval_images": ev.images, "timing": {}}
            with torch.no_grad():
                entry["timing"] = per_batch(lambda x: backend.run(x), images, args.repeats)
            results.append(entry)
        scored = dict(spec.split("=", 1) for spec in args.peer_result)
        for spec in args.peer:
            results.append(time_peer(*spec.split("=", 1), scored, args, size))
    rows, goal = summarize(results)
    write("deploy_speed", {"weights": args.weights, "data": args.data, "threads": args.threads,
                           "calib_images": args.calib_images,
                           "packages": {p: package(p) for p in ("onnxruntime", "openvino", "nncf", "torch")},
                           "results": results, "goal": goal}, rows)


if __name__ == "__main__":
    main()
