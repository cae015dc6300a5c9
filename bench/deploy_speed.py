"""Deployment formats of trained detectors: speed and COCO AP of each, all in one run.

For trained checkpoints (e.g. bench/accuracy.py's yolo_csp, ssdlite320 and ssd300 on raccoon: `--weights` once
each; the first is the default model, the one compared with peers) and their dataset: PyTorch eager (the
checkpoint), onnxruntime fp32, onnxruntime INT8 (`export --int8`), OpenVINO fp32 and OpenVINO INT8 (NNCF),
each exported by boxforge here, calibrated on --calib-images of the train split, timed at batch 1 and 8 on
the test split's preprocessed images (ms per image: median and min/max over --repeats timed runs, the same
--threads everywhere; decoding not included; a model's formats timed in interleaved rounds, so a swing in the
machine's load falls on all of them alike), and scored by the one evaluator on the held-out split (COCO
AP, VOC12). Optionally a peer ONNX file (--peer NAME=FILE, e.g. YOLO26n exported by Ultralytics, an external
program: `yolo export model=last.pt format=onnx imgsz=320`) is timed with onnxruntime on the same test images
preprocessed at its own input size (read from the file's static input shape); its accuracy comes from
--peer-result NAME=RESULT_JSON, a bench/accuracy_suite.py job's result.json for that peer trained on the same
data (scored there by the same evaluator on the same held-out split), and is "not scored" without one. When a
scored peer's input size differs from the first model's, that model is also exported, timed and scored at the
peer's size (a fully convolutional detector runs at any multiple of its stride), so the two meet at equal input
size as well as each at its own.

    .venv/bin/python bench/deploy_speed.py --weights runs/bench-accuracy/default/last.pt \
        [--weights runs/bench-accuracy/ssdlite320/last.pt --weights runs/bench-accuracy/ssd300/last.pt] \
        --data ../shared/datasets/raccoon [--threads 2] [--repeats 20] [--peer yolo26n=yolo26n.onnx \
        --peer-result yolo26n=runs/accuracy-suite/raccoon/yolo26n-s0/result.json]

Prints a table and writes bench/results/deploy_speed.json. The goals it checks (issue 20): the fastest CPU
export at least 3x eager at batch 1 with at most 1 point of COCO AP lost (per model and size); and, per scored
peer, an export of the first model at the peer's input size at least as accurate and faster at batch 1 (also
reported at any size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import package_version as package, write  # noqa: E402

import boxforge  # noqa: E402
from boxforge.inference import load_model  # noqa: E402

BATCHES = (1, 8)


Runner = tuple[Callable[[torch.Tensor], object], torch.Tensor, tuple[int, ...]]  # run(x), its images, batch sizes


def interleaved(runners: dict[str, Runner], repeats: int, warmup: int = 3) -> dict[str, dict]:
    """{name: {"b1": timing, "b8": ...}} for `run(images[:B])` of each runner, timed in rounds of one call each.

    Interleaving puts every format of a comparison through the same moments of the machine's load (a shared
    2-core machine swings by tens of percent within minutes), so their ratios hold even when the absolute times
    do not. `warmup` untimed calls first (allocations, kernel choice); a quarter of the repeats above batch 1.
    """
    out: dict[str, dict] = {name: {} for name in runners}
    for batch in BATCHES:
        active = {name: (run, images[:batch]) for name, (run, images, sizes) in runners.items() if batch in sizes}
        for run, x in active.values():
            for _ in range(warmup):
                run(x)
        times: dict[str, list[float]] = {name: [] for name in active}
        for _ in range(max(3, repeats // (4 if batch > 1 else 1))):
            for name, (run, x) in active.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            t = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": len(ts)}
            out[name][f"b{batch}"] = {**t, "ms_per_image": 1000 * t["median_s"] / batch,
                                      "min_ms_per_image": 1000 * t["min_s"] / batch}
    return out


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


def open_peer(peer: str, path: str, scored: dict[str, str], args: argparse.Namespace,
              size: int) -> tuple[dict, Runner]:
    """A peer's ONNX in onnxruntime with the test images preprocessed at its own static input size (its runner,
    timed beside the first model's formats); its COCO AP / VOC12 from an accuracy_suite result.json when one is
    given for it."""
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
    batches = tuple(b for b in BATCHES if not isinstance(shape[0], int) or shape[0] == b)
    return entry, (lambda x: session.run(None, {name: x.numpy().astype(np.float32)}), images, batches)


def bench_model(weights: str, size: int | None, args: argparse.Namespace, tmp: Path,
                peers: dict[str, Runner] | None = None) -> dict:
    """One checkpoint at one input size (None: its own): PyTorch eager and each export format, exported here at
    that size, scored by the one evaluator on the held-out split and timed interleaved on the same preprocessed
    test images (with `peers`' runners in the same rounds; their timings returned under "peer_timing")."""
    from boxforge.inference.evaluate import evaluate

    eager = load_model(weights, "cpu", img_size=size, threads=args.threads)
    size = eager.meta.img_size
    tmp = tmp / f"{Path(weights).parent.name}-{size}"
    tmp.mkdir(parents=True)
    common = {"img_size": size, "dynamic_batch": True}
    int8 = {"int8": True, "calib": args.data, "calib_images": args.calib_images}
    files: dict[str, Path] = {"onnxruntime fp32": boxforge.export_onnx(weights, tmp / "fp32.onnx", **common).path,
                              "onnxruntime int8": boxforge.export_onnx(weights, tmp / "int8.onnx", **common,
                                                                       **int8).path}
    if package("openvino"):
        files["openvino fp32"] = boxforge.export_onnx(weights, tmp / "ov", format="openvino", **common).path
        if package("nncf"):
            files["openvino int8"] = boxforge.export_onnx(weights, tmp / "ov8", format="openvino", **common,
                                                          **int8).path
    loaded = {"pytorch eager": eager, **{name: load_model(path, "cpu", threads=args.threads)
                                         for name, path in files.items()}}
    images = test_batch(args.data, size, max(BATCHES))
    results = []
    runners: dict[str, Runner] = {}
    for name, model in loaded.items():
        model.backend.configure(score_thresh=0.001, iou_thresh=None, max_det=100)
        ev = evaluate(args.data, model=model, metrics=["coco", "voc12"], progress=False)
        results.append({"format": name, "img_size": size, "coco_AP": float(ev.results["coco"]["AP"]),
                        "voc12_map": float(ev.results["voc12"]["map"]), "eval_images": ev.images})
        runners[name] = (model.backend.run, images, BATCHES)
    with torch.no_grad():
        timing = interleaved({**runners, **(peers or {})}, args.repeats)
    for entry in results:
        entry["timing"] = timing[entry["format"]]
    return {"weights": weights, "model": eager.meta.model_name, "img_size": size, "results": results,
            "peer_timing": {name: timing[name] for name in peers or {}}}


def summarize(model: dict) -> tuple[list[tuple[str, str]], dict]:
    """Speed-ups against eager (results[0], same model and size) written into each timing, the table rows,
    and the issue's goal: the fastest export within 1 point of COCO AP, at least 3x eager at batch 1."""
    rows: list[tuple[str, str]] = []
    results = model["results"]
    eager = results[0]
    for e in results:
        for b, t in e["timing"].items():
            t["speedup_vs_eager"] = eager["timing"][b]["median_s"] / t["median_s"]
            ap = f"COCO AP {e['coco_AP']:.3f} VOC12 {e['voc12_map']:.3f}"
            rows.append((f"{model['model']} {e['img_size']} px {e['format']:<18} {b}",
                         f"{t['ms_per_image']:7.2f} ms/img (min {t['min_ms_per_image']:.2f})"
                         f"  {t['speedup_vs_eager']:5.2f}x eager  {ap}"))
    within = [e for e in results[1:] if 100 * (eager["coco_AP"] - e["coco_AP"]) <= 1.0]
    best = max(within, key=lambda e: e["timing"]["b1"]["speedup_vs_eager"], default=None)
    goal = {"target_speedup_b1": 3.0, "max_ap_drop_points": 1.0,
            "fastest_within_1_point": best and best["format"],
            "speedup": best and best["timing"]["b1"]["speedup_vs_eager"],
            "met": bool(best and best["timing"]["b1"]["speedup_vs_eager"] >= 3.0)}
    rows.append((f"goal ({model['model']} {model['img_size']} px): >= 3x eager at b1, <= 1 point COCO AP lost",
                 f"{'met' if goal['met'] else 'MISSED'}: {goal['fastest_within_1_point']} "
                 f"{goal['speedup'] or 0:.2f}x"))
    return rows, goal


def against_peer(peer: dict, ours: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """The issue's peer goal: an export of the default model (`ours`: its runs, one per input size) at the
    peer's input size, at least as accurate (COCO AP) and faster at batch 1; and the same at any size."""
    ms = peer["timing"]["b1"]["ms_per_image"]
    verdict: dict = {"peer_ms_b1": ms, "peer_coco_AP": peer["coco_AP"], "peer_img_size": peer["img_size"]}
    rows = []
    for key, runs in (("equal_size", [m for m in ours if m["img_size"] == peer["img_size"]]), ("any_size", ours)):
        exports = [e for m in runs for e in m["results"][1:] if e["coco_AP"] >= peer["coco_AP"]]
        fastest = min(exports, key=lambda e: e["timing"]["b1"]["ms_per_image"], default=None)
        met = bool(fastest and fastest["timing"]["b1"]["ms_per_image"] < ms)
        verdict[key] = {"met": met, "measured": bool(runs), "ours": fastest and fastest["format"],
                        "ours_img_size": fastest and fastest["img_size"],
                        "ours_ms_b1": fastest and fastest["timing"]["b1"]["ms_per_image"],
                        "ours_coco_AP": fastest and fastest["coco_AP"]}
        where = f"at its {peer['img_size']} px" if key == "equal_size" else "at any size"
        rows.append((f"goal: faster than {peer['peer']} {where}, at >= its COCO AP ({peer['coco_AP']:.3f}), b1",
                     f"{'met' if met else 'MISSED'}: " + (
                         f"{fastest['format']} at {fastest['img_size']} px {fastest['timing']['b1']['ms_per_image']:.2f}"
                         f" vs {ms:.2f} ms" if fastest else "no export as accurate" if runs else "not measured")))
    return rows, verdict


def summarize_peers(peers: list[dict], models: list[dict], ours: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """Each peer's rows (speed-ups against the eager model timed in the same rounds) and, for a scored peer, the
    verdict of `against_peer` on the default model's runs `ours`."""
    rows: list[tuple[str, str]] = []
    goals = {}
    for peer in peers:
        eager = models[peer["timed_beside"]]["results"][0]["timing"]
        for b, t in peer["timing"].items():
            t["speedup_vs_eager"] = eager[b]["median_s"] / t["median_s"]
            rows.append((f"{peer['format']} {peer['img_size']} px {b}",
                         f"{t['ms_per_image']:7.2f} ms/img (min {t['min_ms_per_image']:.2f})  "
                         + (f"COCO AP {peer['coco_AP']:.3f} (scored by accuracy_suite)" if "coco_AP" in peer
                            else "not scored")))
        if "coco_AP" in peer:
            verdict_rows, goals[peer["peer"]] = against_peer(peer, ours)
            rows += verdict_rows
    return rows, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, action="append",
                        help="a trained detection checkpoint; repeat for several models (the first is the one "
                             "compared with the peers)")
    parser.add_argument("--data", required=True, help="their dataset (calibration: train split; scoring: held-out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (batch 8: a quarter)")
    parser.add_argument("--calib-images", type=int, default=100)
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=ONNX")
    parser.add_argument("--peer-result", action="append", default=[], metavar="NAME=RESULT_JSON",
                        help="bench/accuracy_suite.py's result.json of that peer trained on --data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models: list[dict] = []
    rows: list[tuple[str, str]] = []
    scored = dict(spec.split("=", 1) for spec in args.peer_result)
    own = load_model(args.weights[0], "cpu").meta.img_size
    opened = [open_peer(*spec.split("=", 1), scored, args, own) for spec in args.peer]
    peers = [entry for entry, _ in opened]
    extra = sorted({p["img_size"] for p in peers if "coco_AP" in p} - {own})  # the default at a peer's size too
    # each peer timed in the rounds of the default model's formats at the peer's size (else at the default's)
    beside = {size: {e["format"]: r for e, r in opened if e["img_size"] == size or (size == own and e["img_size"]
                                                                                   not in extra)}
              for size in [own, *extra]}
    with tempfile.TemporaryDirectory() as tmp:
        for i, weights in enumerate(args.weights):
            models.append(bench_model(weights, None, args, Path(tmp), beside[own] if i == 0 else None))
        for size in extra:
            models.append(bench_model(args.weights[0], size, args, Path(tmp), beside[size]))
    for i, model in enumerate(models):
        for name, timing in model.pop("peer_timing").items():
            next(p for p in peers if p["format"] == name).update(timing=timing, timed_beside=i)
    for model in models:
        model_rows, model["goal"] = summarize(model)
        rows += model_rows
    peer_rows, goals = summarize_peers(peers, models, [m for m in models if m["weights"] == args.weights[0]])
    write("deploy_speed", {"data": args.data, "threads": args.threads, "calib_images": args.calib_images,
                           "packages": {p: package(p) for p in ("onnxruntime", "openvino", "nncf", "torch")},
                           "models": models, "peers": peers, "peer_goals": goals}, rows + peer_rows)


if __name__ == "__main__":
    main()
