"""Slow storage: training samples per second from JPEGs on a store with per-file latency vs from a local pack.

`boxforge pack` exists for data on slow or networked storage (object stores, NFS over a WAN),
where every file read pays a round trip. This machine has no such store, so the store is
simulated: each image read sleeps --latency-ms before reading the local file (the round trip a
GET or an NFS open pays; bandwidth is not modelled), inside each DataLoader worker. The pack is
written once from the same images onto local disk, as `boxforge pack DATA OUT` on a machine
would, and read memory-mapped with no added latency. Same images, same `ssd` recipe, same batch
and workers on both sides; one epoch timed per repeat after a warm-up epoch.

This is a model of the storage, not a measurement of one: the figures say how much of a given
latency the workers hide and what the pack removes, not what a particular store costs.

    python bench/slow_storage.py [--images 120 --latency-ms 0 5 20 --workers 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from data_pipeline import epoch_seconds  # noqa: E402

from boxforge import load_dataset  # noqa: E402
from boxforge.data.loading import DetectionDataset, make_loader  # noqa: E402
from boxforge.data.pack import write_pack  # noqa: E402
from boxforge.data.synth import synthesize_detection  # noqa: E402
from boxforge.data.transforms import detection_transforms  # noqa: E402


class SlowStoreDataset(DetectionDataset):
    """DetectionDataset whose every image read first waits `latency_s`, as on a store with that round trip."""

    latency_s = 0.0

    def load(self, index: int) -> Any:
        time.sleep(self.latency_s)
        return super().load(index)


def slow_dataset(index: Any, transform: Any, latency_s: float) -> SlowStoreDataset:
    data = SlowStoreDataset(index, transform)
    data.latency_s = latency_s
    return data


def rate(loader: Any, repeats: int) -> dict[str, Any]:
    epoch_seconds(loader)  # warm-up: starts the persistent workers
    runs = []
    for _ in range(repeats):
        seconds, n = epoch_seconds(loader)
        runs.append(n / seconds)
    return {"samples_per_s": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120, help="synthetic 500x375 JPEGs")
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 5.0, 20.0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    doc: dict[str, Any] = {"images": args.images, "size": args.size, "batch": args.batch, "workers": args.workers,
                           "store": "simulated: a sleep of latency_ms before each image read", "cases": []}
    rows = []
    transform = detection_transforms(True, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        index = synthesize_detection(Path(tmp) / "synth", images=args.images, classes=3, seed=0,
                                     image_size=(500, 375))
        start = time.perf_counter()
        write_pack(index, Path(tmp) / "pack")
        doc["pack_write_s"] = time.perf_counter() - start
        packed = rate(make_loader(DetectionDataset(load_dataset(Path(tmp) / "pack"), transform), args.batch,
                                  shuffle=True, workers=args.workers), args.repeats)
        for latency in args.latency_ms:
            jpegs = rate(make_loader(slow_dataset(index, transform, latency / 1000), args.batch, shuffle=True,
                                     workers=args.workers), args.repeats)
            doc["cases"].append({"latency_ms": latency, "jpegs": jpegs, "pack": packed,
                                 "pack_vs_jpegs": packed["samples_per_s"] / jpegs["samples_per_s"]})
            rows.append((f"{args.workers} workers, {latency:g} ms per image read",
                         f"JPEGs {jpegs['samples_per_s']:.1f} samples/s  pack {packed['samples_per_s']:.1f}  "
                         f"x{packed['samples_per_s'] / jpegs['samples_per_s']:.2f}"))
    write("slow_storage", doc, rows)


if __name__ == "__main__":
    main()
