"""Training logs: readable lines on the console, one JSON object a line in RUN_DIR/metrics.jsonl.

Only rank 0 writes. The console line looks like
`epoch 3 iter 120/500 loss 2.314 (avg 2.501) cls 1.62 box 0.69 lr 0.0150 18.3 img/s eta 0:04:12 mem 1.2G`.
"""

from __future__ import annotations

import datetime
import json
import math
import resource
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

import torch

# Short names for torchvision's loss keys on the console.
_SHORT = {"bbox_regression": "box", "classification": "cls", "bbox_ctrness": "ctr"}


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


class MetricsLog:
    """Append-only metrics.jsonl plus console lines, with a running average of the loss."""

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, stream: TextIO = sys.stdout,
                 window: int = 50) -> None:
        self.enabled = enabled
        self.stream = stream
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir else None
        self._avg: deque[float] = deque(maxlen=window)
        self._fh = None
        if enabled and self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None

    def record(self, event: dict[str, Any]) -> None:
        """One JSON line (finite floats only; NaN/inf become null so the file stays valid JSON)."""
        if not self._fh:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
        self._fh.write(json.dumps({"time": time.time(), **clean}) + "\n")
        self._fh.flush()

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def step(self, *, epoch: int, iteration: int, iters_per_epoch: int, step: int, losses: dict[str, float],
             lr: float, images_seen: int, img_per_s: float, eta_s: float | None, device: torch.device,
             log_line: bool) -> None:
        total = float(sum(losses.values()))
        self._avg.append(total)
        avg = sum(self._avg) / len(self._avg)
        self.record({"type": "train", "step": step, "epoch": epoch, "iter": iteration, "loss": total, "loss_avg": avg,
                     **{f"loss_{k}": v for k, v in losses.items()}, "lr": lr, "images_seen": images_seen,
                     "img_per_s": img_per_s})
        if not log_line:
            return
        parts = " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in losses.items())
        eta = f" eta {datetime.timedelta(seconds=int(eta_s))}" if eta_s is not None else ""
        self.print(f"epoch {epoch} iter {iteration}/{iters_per_epoch} loss {total:.3f} (avg {avg:.3f}) {parts} "
                   f"lr {lr:.4f} {img_per_s:.1f} img/s{eta} mem {memory_gb(device):.1f}G")

    def validation(self, *, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        self.record({"type": "val", "step": step, "epoch": epoch, **metrics})
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.print(f"validation epoch {epoch}: {shown}")
