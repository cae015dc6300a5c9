"""Training step speed of each detector: contiguous vs channels-last weights, fp32 vs bfloat16 autocast.

Model step only (forward, loss, backward, SGD step) on a fixed random batch, so the data pipeline
is out of the figure; this is what decides fit()'s memory format (models/detector.py) and which
recipes default to `--amp auto`. Median of the steps after two warm-up steps.

    python bench/step_speed.py [--threads 2 --steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from boxforge.models import get_model  # noqa: E402

CASES = [("ssd_tiny", 256, 8), ("ssdlite320_mobilenet_v3_large", 320, 8), ("yolo_csp", 320, 16),
         ("ssd300_vgg16", 300, 4)]


def step_rate(name: str, size: int, batch: int, channels_last: bool, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = get_model(name, num_classes=3, class_names=["a", "b", "c"], img_size=size).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(batch, 3, size, size)
    targets = [{"boxes": torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 210]]), "labels": torch.tensor([1, 2])}
               for _ in range(batch)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {"threads": args.threads, "steps": args.steps, "models": {}}
    rows = []
    for name, size, batch in CASES:
        rates = {f"{'channels_last' if cl else 'contiguous'}_{'bf16' if bf else 'fp32'}":
                 step_rate(name, size, batch, cl, bf, args.steps) for cl in (False, True) for bf in (False, True)}
        doc["models"][name] = {"img_size": size, "batch": batch, "img_per_s": rates}
        base = rates["contiguous_fp32"]
        rows.append((f"{name} @{size} batch {batch}, img/s",
                     "  ".join(f"{k} {v:.1f} (x{v / base:.2f})" for k, v in rates.items())))
    write("step_speed", doc, rows)


if __name__ == "__main__":
    main()
