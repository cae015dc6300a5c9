"""Inference speed: PyTorch eager (the Detector, torchvision post-processing) vs onnxruntime (the exported graph).

For ssd_tiny, ssdlite320_mobilenet_v3_large and yolo_csp (the default detector) at 320 px (random weights with a random classification
bias, so scores vary as in a trained model), batch 1 and batch 8, evaluation post-processing (score
threshold 0.001, 100 detections per image: the heaviest NMS case). Both sides get the same
(B, 3, 320, 320) float tensor and the same number of threads; image decoding is not included.
Per-image latency = median batch time / B over --repeats timed runs after warm-up.
Prints a table and writes bench/results/inference_speed.json.

    .venv/bin/python bench/inference_speed.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from boxforge.checkpoint import CHECKPOINT_FORMAT, save_checkpoint  # noqa: E402
from boxforge.api import export_onnx  # noqa: E402
from boxforge.models import get_model  # noqa: E402

MODELS = ("ssd_tiny", "ssdlite320_mobilenet_v3_large", "yolo_csp")  # yolo_csp: the default detector
BATCHES = (1, 8)
SIZE = 320


def checkpoint(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = get_model(name, num_classes=3, img_size=SIZE)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "classification_head" in key and key.endswith("bias"):
                p.normal_(0.0, 1.0)
    state = {"format": CHECKPOINT_FORMAT, "task": "detect", "model_name": name, "class_names": model.class_names,
             "img_size": SIZE, "config": {}, "build_args": dict(model.build_args), "model": model.state_dict()}
    return save_checkpoint(state, folder / f"{name}.pt")


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_eager(model, x: torch.Tensor, top: int = 8) -> list[dict[str, float]]:
    """torch.profiler: the ops with the most self CPU time over 10 eager calls (ms per call)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_call": e.self_cpu_time_total / 1000 / 10} for e in events]


def profile_onnxruntime(onnx_path: Path, feed: dict, threads: int, top: int = 8) -> list[dict[str, float]]:
    """onnxruntime's own profiler: time per operator type over 10 runs (ms per run)."""
    import json as _json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_path.with_suffix(""))
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, feed)
    trace = _json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000 / 10
    return [{"op": k, "ms_per_run": v} for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (batch 8: a quarter)")
    args = parser.parse_args()
    import onnxruntime as ort

    from boxforge.inference import load_detector

    torch.set_num_threads(args.threads)
    results, rows, targets = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            ckpt = checkpoint(name, Path(tmp))
            onnx_path = Path(tmp) / f"{name}.onnx"
            export_onnx(ckpt, onnx_path, dynamic_batch=True, check=False)
            model, _ = load_detector(ckpt)
            model.set_postprocess(score_thresh=0.001, detections_per_img=100)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            for batch in BATCHES:
                x = torch.rand(batch, 3, SIZE, SIZE)
                feed = {"images": x.numpy()}
                repeats = max(3, args.repeats // (4 if batch > 1 else 1))
                with torch.no_grad():
                    eager = median_seconds(lambda: model(x), repeats)
                runtime = median_seconds(lambda: session.run(None, feed), repeats)
                for backend, seconds in (("pytorch", eager), ("onnxruntime", runtime)):
                    entry = {"model": name, "img_size": SIZE, "batch": batch, "backend": backend,
                             "batch_median_s": seconds, "ms_per_image": 1000 * seconds / batch,
                             "images_per_s": batch / seconds, "repeats": repeats}
                    results.append(entry)
                    rows.append((f"{name:<30} b{batch}  {backend:<11}",
                                 f"{entry['ms_per_image']:7.1f} ms/img  {entry['images_per_s']:6.1f} img/s"))
                rows.append((f"{name:<30} b{batch}  speed-up", f"{eager / runtime:7.2f}x onnxruntime over eager"))
                if batch == 1:
                    case = {"model": name, "speedup": eager / runtime, "target": 2.0, "met": eager / runtime >= 2.0}
                    if not case["met"]:  # explain the miss with both profilers
                        case["profile_eager"] = profile_eager(model, x)
                        case["profile_onnxruntime"] = profile_onnxruntime(onnx_path, feed, args.threads)
                    targets.append(case)
                    rows.append((f"{name:<30} b1  target 2x", "met" if case["met"] else "MISSED (profiles in JSON)"))
    write("inference_speed", {"threads": args.threads, "onnxruntime": version("onnxruntime"),
                              "postprocess": {"score_thresh": 0.001, "detections_per_img": 100},
                              "results": results, "batch1_targets": targets}, rows)


if __name__ == "__main__":
    main()
