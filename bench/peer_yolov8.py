"""The YOLOv8n peer run here, and a paired bootstrap of boxforge runs against it on the same test images.

The issue quotes the peer's figures (VOC12 0.842, COCO AP 0.452) without its per-image predictions,
so bench/accuracy.py can only compare against those numbers as if they were exact. This script
trains the peer on this machine at the settings the issue names (`yolov8n.yaml` from scratch,
imgsz 320, its defaults, the same wall-clock budget), predicts the raccoon test images at the
benchmark convention (score >= 0.001, <= 100 per image), stores those predictions in boxforge's
predictions format, and scores every run with the same boxforge evaluator on the same bootstrap
resamples of the test images: a paired bootstrap, P(boxforge better) per metric.

Ultralytics is AGPL-3.0 and is not a boxforge dependency: nothing of it is imported by boxforge or
copied into it; it runs here as an external program. Install it apart from boxforge's environment,
for example `pip install --target /tmp/ulsite --no-deps ultralytics ultralytics-thop
opencv-python-headless requests polars` and `PYTHONPATH=/tmp/ulsite` for the `train` and `predict`
steps (`compare` needs only boxforge).

    python bench/peer_yolov8.py train --minutes 15 --out runs/peer-v8n
    python bench/peer_yolov8.py train --minutes 15 --out runs/peer-v8n --threads 2 --name v8n_2threads
    python bench/peer_yolov8.py predict --weights runs/peer-v8n/v8n/weights/last.pt
    python bench/peer_yolov8.py compare --ours default=runs/bench-accuracy/default/last.pt [NAME=CKPT_OR_JSON ...] \
        [--peer NAME=PREDICTIONS_JSON ...]

The peer's `last.pt` is used, not its `best.pt`: its validation split here is the test split, so
`best.pt` would be chosen on the test images (bench/accuracy.py evaluates boxforge's last.pt likewise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import RACCOON, _metrics, paired_bootstrap  # noqa: E402
from common import RESULTS, machine  # noqa: E402

PEER_PREDICTIONS = RESULTS / "peer_yolov8n_predictions.json"


def test_index() -> Any:
    from boxforge.data.formats.detect import load_dataset

    return load_dataset(RACCOON, split="test")


def train(minutes: float, out: Path, seed: int, threads: int | None, name: str) -> None:
    """YOLOv8n from its yaml (no pretrained weights), imgsz 320, its defaults, a `time` budget in hours.

    threads None: its own choice, which on CPU is cores - 1 torch threads (1 on 2 cores); a number
    overrides it, to see the peer with every core.
    """
    import subprocess

    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    if threads:
        torch_utils.NUM_THREADS = threads  # what its trainer passes to torch.set_num_threads on CPU

    data = out / "raccoon-yolo"
    for split in ("train", "test"):  # boxforge writes the YOLO layout the peer reads
        subprocess.run([sys.executable, "-m", "boxforge", "convert", str(RACCOON), str(data / split), "--to", "yolo",
                        "--split", split], check=True)
    (data / "data.yaml").write_text(f"path: {data.resolve()}\ntrain: train/images\nval: test/images\n"
                                    "names:\n  0: raccoon\n")
    # plots=False: its plots fetch a font from the internet, which this machine cannot reach
    YOLO("yolov8n.yaml").train(data=str(data / "data.yaml"), imgsz=320, time=minutes / 60, device="cpu", workers=2,
                               plots=False, project=str(out.resolve()), name=name, exist_ok=True, seed=seed)


def predict(weights: Path, out: Path) -> None:
    """The peer's detections on the test images, in boxforge's predictions format."""
    from ultralytics import YOLO

    from boxforge.evaluation.predictions import Predictions, save_predictions

    index = test_index()
    model = YOLO(str(weights))
    preds = Predictions(list(index.classes))
    for sample in index.samples:
        (result,) = model.predict(source=str(sample.image_path), imgsz=320, conf=0.001, iou=0.7, max_det=100,
                                  device="cpu", verbose=False)
        b = result.boxes
        preds.add(sample.image_id, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64))
    save_predictions(preds, index.classes, out)
    print(f"{sum(len(p) for p in preds.images.values())} detections on {len(index.samples)} images -> {out}; "
          f"{_metrics(index, preds)}")


def load_run(spec: str, index: Any) -> tuple[str, Any]:
    """NAME=PATH: a boxforge checkpoint (evaluated like bench/accuracy.py does) or a predictions JSON."""
    from boxforge.inference.evaluate import model_predictions
    from boxforge.inference.load import load_model
    from boxforge.evaluation.predictions import load_predictions

    name, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"--ours {spec!r}: expected NAME=CHECKPOINT_OR_PREDICTIONS_JSON")
    if path.endswith(".json"):
        return name, load_predictions(path, index)
    preds, _, _ = model_predictions(index, load_model(path, "cpu").backend)
    return name, preds


def compare(ours: list[str], peers: list[str], repeats: int) -> None:
    """Every run and every peer scored on the same bootstrap resamples; P(run better than each peer)."""
    index = test_index()
    runs = dict(load_run(spec, index) for spec in ours)
    peer_runs = dict(load_run(spec, index) for spec in peers)
    boot = paired_bootstrap(index, {**runs, **peer_runs}, repeats)
    doc: dict[str, Any] = {"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "bootstrap_resamples": repeats, "peers": {}, "runs": {}}
    for name, preds in peer_runs.items():
        doc["peers"][name] = {k: round(v, 4) for k, v in _metrics(index, preds).items()}
    print("| run | VOC12 mAP@0.5 | COCO AP | " + " | ".join(
        f"vs {peer}: paired P(better) VOC12 / COCO AP, COCO AP difference [95% CI]" for peer in peer_runs) + " |")
    print("|---|---|---|" + "---|" * len(peer_runs))
    for name, preds in runs.items():
        point = _metrics(index, preds)
        entry: dict[str, Any] = {**{k: round(v, 4) for k, v in point.items()}, "vs": {}}
        cells = []
        for peer in peer_runs:
            diff = {k: boot[name][k] - boot[peer][k] for k in ("voc12", "coco_ap")}
            p_better = {k: round(float((d > 0).mean()), 3) for k, d in diff.items()}
            ci = {k: [round(float(np.percentile(d, 2.5)), 4), round(float(np.percentile(d, 97.5)), 4)]
                  for k, d in diff.items()}
            entry["vs"][peer] = {"paired_p_better": p_better, "paired_difference_ci95": ci,
                                 "mean_difference": {k: round(float(d.mean()), 4) for k, d in diff.items()}}
            cells.append(f"{p_better['voc12']:.2f} / {p_better['coco_ap']:.2f}, "
                         f"{float(diff['coco_ap'].mean()):+.3f} [{ci['coco_ap'][0]:+.3f}, {ci['coco_ap'][1]:+.3f}]")
        doc["runs"][name] = entry
        print(f"| {name} | {point['voc12']:.3f} | {point['coco_ap']:.3f} | " + " | ".join(cells) + " |")
    for name, m in doc["peers"].items():
        print(f"| peer: {name} | {m['voc12']:.3f} | {m['coco_ap']:.3f} |" + " |" * len(peer_runs))
    (RESULTS / "peer_yolov8n.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"(written to {RESULTS / 'peer_yolov8n.json'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train the peer (needs ultralytics importable)")
    t.add_argument("--minutes", type=float, default=15.0)
    t.add_argument("--out", type=Path, default=Path("runs/peer-v8n"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="torch threads (default: the peer's own choice, cores - 1)")
    t.add_argument("--name", default="v8n", help="run folder under --out")
    p = sub.add_parser("predict", help="the peer's test predictions -> boxforge predictions JSON")
    p.add_argument("--weights", type=Path, required=True, help="the peer's last.pt (not best.pt: chosen on test)")
    p.add_argument("--out", type=Path, default=PEER_PREDICTIONS)
    c = sub.add_parser("compare", help="paired bootstrap of boxforge runs against the peer's predictions")
    c.add_argument("--ours", nargs="+", required=True, metavar="NAME=PATH")
    c.add_argument("--peer", nargs="+", default=[f"YOLOv8n (run here)={PEER_PREDICTIONS}"], metavar="NAME=JSON",
                   help="peer predictions files written by `predict`")
    c.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    if args.step == "train":
        train(args.minutes, args.out, args.seed, args.threads, args.name)
    elif args.step == "predict":
        predict(args.weights, args.out)
    else:
        compare(args.ours, args.peer, args.bootstrap)


if __name__ == "__main__":
    main()
