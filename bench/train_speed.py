"""Training: images per second, boxforge `train` vs the torchvision reference loop, and mAP after the same images.

Same synthetic data (boxforge synth, train/test split), same model object (boxforge's
builders), same image size, batch size, worker count and base learning rate:

- reference (bench/reference.py): PIL + transforms v2 preset (`ssdlite` for ssdlite320 and the
  tiny model, `ssd` for ssd300_vgg16, as the torchvision recipes use), default DataLoader,
  fp32 eager `train_one_epoch`, SGD momentum 0.9, warm-up in the first epoch, cosine per epoch;
- boxforge: `boxforge train` in a subprocess at its defaults for the same settings
  (its `ssd` augmentation recipe for every model, cosine schedule, threads split between
  the training process and the workers).

The reference is also run with one intra-op thread ("ref at 1 thread"): with 2 data workers on
2 cores, torch's default of one thread per core oversubscribes the CPU, which boxforge avoids
by giving the training process the cores the workers leave; this row separates that effect
from the data pipeline's.

img/s is measured from per-step timestamps inside epochs (the first --skip steps of the run
are warm-up and left out; the gaps between epochs, where boxforge saves and the reference
restarts its workers, are left out for both). Accuracy: the tiny model trains for the same
number of images on both sides and both are scored by the same code (VOC12 mAP on the
test split, boxforge.engine.validate), so speed is not bought with accuracy.

The GPU figure (ssd300_vgg16 with AMP beside NVIDIA's published 724 img/s) is bench/gpu_train.py.

    python bench/train_speed.py [--images 240 --epochs 5 --batch 8 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402
from common import write  # noqa: E402

from boxforge import load_dataset  # noqa: E402
from boxforge.data.synth import synthesize_detection  # noqa: E402
from boxforge.engine.setup import DEFAULT_LR, DEFAULT_WD  # noqa: E402
from boxforge.engine.validate import validate  # noqa: E402
from boxforge.models import get_model  # noqa: E402

A100_ANCHOR = {"img_per_s": 724, "model": "SSD300-ResNet50", "precision": "AMP", "gpu": "1x A100",
               "source": "NVIDIA DeepLearningExamples, PyTorch SSD, training performance"}
PRESET = {"ssd_tiny": "ssdlite", "ssdlite320_mobilenet_v3_large": "ssdlite", "ssd300_vgg16": "ssd"}
SIZE = {"ssd_tiny": 256, "ssdlite320_mobilenet_v3_large": 320, "ssd300_vgg16": 300}


def steady_rate(steps: list[tuple[int, float, int]], skip: int) -> float:
    """images/s over (epoch, time, images) step records, within epochs, after the first `skip` steps."""
    images = seconds = 0.0
    skip = min(skip, max(0, len(steps) - 2))  # a short run keeps at least one interval
    for (e0, t0, _), (e1, t1, n1) in zip(steps[skip:], steps[skip + 1:]):
        if e0 == e1:
            images += n1
            seconds += t1 - t0
    return images / seconds if seconds else math.nan


def run_reference(model_name: str, train: Any, test: Any | None, args: argparse.Namespace,
                  epochs: int, max_images: int | None, threads: int | None = None) -> dict[str, Any]:
    """threads None: torch's default (one per core), which the references leave alone."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    model = get_model(model_name, num_classes=len(train.classes), class_names=train.classes,
                      img_size=SIZE[model_name])
    batch = batch_size(model_name, args)
    data = reference.loader(reference.ReferenceDataset(train, reference.train_preset(PRESET[model_name])),
                            batch, args.workers, seed=args.seed)
    lr = DEFAULT_LR["sgd"] * batch / 16
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=DEFAULT_WD["sgd"])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    steps: list[tuple[int, float, int]] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        reference.train_one_epoch(model, optimizer, data, epoch, min(1000, len(data) - 1),
                                  on_step=lambda n, e=epoch: steps.append((e, time.perf_counter(), n)),
                                  max_images=max_images)
        cosine.step()
    wall = time.perf_counter() - start
    out = {"img_per_s": steady_rate(steps, args.skip), "images": sum(n for *_, n in steps), "wall_s": wall}
    if test is not None:
        out["voc12_map"] = validate(model, test, device=torch.device("cpu"), batch_size=batch)["voc12_map"]
    return out


def timed_train(flags: list[str], run_dir: Path, skip: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`boxforge train FLAGS --out RUN_DIR` in a subprocess; img/s from its per-step records, and the records."""
    cmd = [sys.executable, "-m", "boxforge", "train", *flags, "--out", str(run_dir), "--log-every", "1000",
           "--no-report"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps, seen = [], 0
    for r in records:
        if r.get("type") == "train":
            steps.append((r["epoch"], r["time"], r["images_seen"] - seen))
            seen = r["images_seen"]
    return {"img_per_s": steady_rate(steps, skip), "images": seen, "wall_s": wall}, records


def run_boxforge(model_name: str, data: Path, args: argparse.Namespace, epochs: int | None,
                 iterations: int | None, run_dir: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    length = ["--epochs", str(epochs), "--val-every", str(epochs)] if epochs else ["--iterations", str(iterations)]
    out, records = timed_train(["--data", str(data), "--model", model_name, "--img-size", str(SIZE[model_name]),
                                "--batch-size", str(batch_size(model_name, args)), "--workers", str(args.workers),
                                "--seed", str(args.seed), *length, *extra], run_dir, args.skip)
    val = [r for r in records if r.get("type") == "val"]
    if epochs and val:
        out["voc12_map"] = val[-1]["voc12_map"]
    return out


def batch_size(model_name: str, args: argparse.Namespace) -> int:
    return args.vgg_batch if model_name == "ssd300_vgg16" else args.batch


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=240, help="synthetic images (80%% train, 20%% test)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the tiny model for the accuracy figure")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeats of the throughput-only runs")
    ap.add_argument("--ssdlite-iters", type=int, default=12)
    ap.add_argument("--vgg-iters", type=int, default=5)
    ap.add_argument("--vgg-batch", type=int, default=4, help="batch of ssd300_vgg16 (both sides)")
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of img/s")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    doc: dict[str, Any] = {"batch": args.batch, "workers": args.workers, "images": args.images, "models": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synthesize_detection(root, images=args.images, classes=3, seed=args.seed)
        train, test = load_dataset(root, split="train"), load_dataset(root, split="test")
        # accuracy + speed, the tiny model: both sides see epochs x len(train) images
        ref = run_reference("ssd_tiny", train, test, args, args.epochs, None)
        ours = run_boxforge("ssd_tiny", root, args, args.epochs, None, Path(tmp) / "tiny")
        one = run_reference("ssd_tiny", train, None, args, 1, None, threads=1)
        doc["models"]["ssd_tiny"] = {"img_size": SIZE["ssd_tiny"], "epochs": args.epochs, "train_images": len(train),
                                     "test_images": len(test), "reference": ref, "boxforge": ours,
                                     "reference_1_thread": one}
        rows.append(("ssd_tiny img/s (ref -> boxforge)", f"{ref['img_per_s']:.1f} -> {ours['img_per_s']:.1f}  "
                     f"x{ours['img_per_s'] / ref['img_per_s']:.2f}  (ref at 1 thread: {one['img_per_s']:.1f})"))
        rows.append((f"ssd_tiny VOC12 mAP after {ours['images']} images",
                     f"reference {ref['voc12_map']:.4f}  boxforge {ours['voc12_map']:.4f}"))
        for name, iters in (("ssdlite320_mobilenet_v3_large", args.ssdlite_iters), ("ssd300_vgg16", args.vgg_iters)):
            refs, bfs, ones = [], [], []
            images = iters * batch_size(name, args)
            for r in range(args.repeats):  # interleaved
                refs.append(run_reference(name, train, None, args, 1, images))
                bfs.append(run_boxforge(name, root, args, None, iters, Path(tmp) / f"{name}-{r}"))
                ones.append(run_reference(name, train, None, args, 1, images, threads=1))
            ref_rate = summary([x["img_per_s"] for x in refs])
            bf_rate = summary([x["img_per_s"] for x in bfs])
            one_rate = summary([x["img_per_s"] for x in ones])
            doc["models"][name] = {"img_size": SIZE[name], "iterations": iters, "batch": batch_size(name, args),
                                   "reference": ref_rate, "boxforge": bf_rate, "reference_1_thread": one_rate}
            rows.append((f"{name} img/s (ref -> boxforge)", f"{ref_rate['median']:.2f} -> {bf_rate['median']:.2f}  "
                         f"x{bf_rate['median'] / ref_rate['median']:.2f}  (ref at 1 thread: {one_rate['median']:.2f})"))
    write("train_speed", doc, rows)


if __name__ == "__main__":
    main()
