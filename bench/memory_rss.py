"""Memory: RSS of a training run epoch over epoch, and per-worker memory of a large index (copy-on-read).

1. `boxforge train` (ssd_tiny, --workers 2) for --epochs epochs in a subprocess; the RSS of
   the training process and of the whole process tree (workers, forkserver) is sampled every
   0.2 s and its peak taken per epoch (epoch boundaries from metrics.jsonl). Target: the last
   epoch's peak within 5% of the second's (the first includes start-up).
2. Copy-on-read: an index of --index-size samples (3 boxes each, tiny images, no transform) read
   for one epoch by 2 DataLoader workers, (a) as the reference way holds it (a list of Python
   dicts, default fork workers) and (b) as boxforge holds it (flat numpy arrays, forkserver
   workers). Each worker's unique memory (USS) is read after its first batch and at the end of
   the epoch: reference counts written to on read make forked workers copy the Python objects
   page by page; numpy arrays have no per-sample objects to touch.

    python bench/memory_rss.py [--epochs 4 --images 160 --index-size 60000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402
from common import write  # noqa: E402

from boxforge.data.index import DatasetIndex, Sample  # noqa: E402
from boxforge.data.loading import DetectionDataset, make_loader  # noqa: E402
from boxforge.data.synth import synthesize_detection  # noqa: E402

MIB = 2**20


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of proc, RSS summed over proc and its descendants), bytes; 0 for processes that left."""
    try:
        own = proc.memory_info().rss
        total = own + sum(c.memory_info().rss for c in proc.children(recursive=True) if c.is_running())
        return own, total
    except psutil.Error:
        return 0, 0


def training_rss(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    root = tmp / "synth"
    synthesize_detection(root, images=args.images, classes=3, seed=0)
    run = tmp / "run"
    cmd = [sys.executable, "-m", "boxforge", "train", "--data", str(root), "--model", "ssd_tiny", "--img-size", "128",
           "--batch-size", "8", "--workers", "2", "--epochs", str(args.epochs), "--val-every", "1000",
           "--out", str(run), "--no-report", "--log-every", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, samples = psutil.Process(proc.pid), []
    while proc.poll() is None:
        own, total = tree_rss(ps)
        if own:
            samples.append((time.time(), own, total))
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"boxforge train failed:\n{proc.stderr.read()[-3000:]}")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ends = {}
    for r in records:
        if r.get("type") == "train":
            ends[r["epoch"]] = r["time"]
    per_epoch, start = [], 0.0
    for epoch in sorted(ends):
        inside = [s for s in samples if start < s[0] <= ends[epoch]]
        per_epoch.append({"epoch": epoch, "peak_main_mib": max(s[1] for s in inside) / MIB,
                          "peak_tree_mib": max(s[2] for s in inside) / MIB, "samples": len(inside)})
        start = ends[epoch]
    second, last = per_epoch[min(1, len(per_epoch) - 1)], per_epoch[-1]
    growth = {k: last[k] / second[k] - 1 for k in ("peak_main_mib", "peak_tree_mib")}
    return {"epochs": args.epochs, "images": args.images, "per_epoch": per_epoch,
            "growth_last_vs_second": growth, "target": 0.05,
            "met": all(abs(g) <= 0.05 for g in growth.values())}


def big_index(tmp: Path, n: int) -> DatasetIndex:
    """n samples over 8 tiny JPEGs (paths repeat), 3 boxes each."""
    paths = []
    for k in range(8):
        path = tmp / f"img{k}.jpg"
        Image.fromarray(np.full((16, 16, 3), 30 * k, np.uint8)).save(path)
        paths.append(path)
    boxes = np.array([[1, 1, 8, 8], [2, 2, 12, 10], [4, 3, 15, 15]], np.float32)
    samples = [Sample(f"{i:07d}", paths[i % 8], 16, 16, boxes=boxes.copy(), labels=np.array([0, 1, 0]))
               for i in range(n)]
    return DatasetIndex(["a", "b"], samples, "voc", tmp)


def worker_uss(pids: list[int]) -> dict[int, int]:
    """Unique set size (bytes) of each live worker process."""
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            continue
    return out


def epoch_uss(loader: Any) -> dict[str, Any]:
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # the DataLoader's worker processes
    time.sleep(0.5)
    first = worker_uss(pids)
    peak: dict[int, int] = dict(first)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for pid, uss in worker_uss(pids).items():
                peak[pid] = max(peak.get(pid, 0), uss)
            time.sleep(0.5)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    for _ in it:
        pass
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    pids = sorted(set(first) & set(peak))
    return {"workers": len(pids), "uss_first_batch_mib": [first[p] / MIB for p in pids],
            "uss_peak_mib": [peak[p] / MIB for p in pids],
            "growth_mib": [(peak[p] - first[p]) / MIB for p in pids], "epoch_s": seconds}


def copy_on_read(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    index = big_index(tmp, args.index_size)
    out = {"samples": args.index_size}
    ref = reference.ReferenceDataset(index, None)
    out["reference (list of dicts, fork)"] = epoch_uss(reference.loader(ref, 64, 2))
    ours = DetectionDataset(index)
    loader = make_loader(ours, 64, shuffle=True, workers=2)
    out["boxforge (numpy arrays, forkserver)"] = epoch_uss(loader)
    del loader
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--index-size", type=int, default=60000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = training_rss(args, Path(tmp))
        cor = copy_on_read(args, Path(tmp))
    rows = [(f"train epoch {e['epoch']} peak RSS (main / tree)", f"{e['peak_main_mib']:.0f} / {e['peak_tree_mib']:.0f} MiB")
            for e in train["per_epoch"]]
    g = train["growth_last_vs_second"]
    rows.append(("growth last vs 2nd epoch", f"main {100 * g['peak_main_mib']:+.1f}%  tree {100 * g['peak_tree_mib']:+.1f}%"
                 f"  (target within 5%: {'met' if train['met'] else 'MISSED'})"))
    for name in ("reference (list of dicts, fork)", "boxforge (numpy arrays, forkserver)"):
        c = cor[name]
        rows.append((f"{cor['samples']} samples, per-worker USS: {name}",
                     " ".join(f"{a:.0f}->{b:.0f}" for a, b in zip(c["uss_first_batch_mib"], c["uss_peak_mib"]))
                     + " MiB (first batch -> epoch peak)"))
    write("memory_rss", {"training": train, "copy_on_read": cor}, rows)


if __name__ == "__main__":
    main()
