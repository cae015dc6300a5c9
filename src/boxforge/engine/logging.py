"""Training logs: readable lines on the console, one JSON object a line in RUN_DIR/metrics.jsonl,
and with `--tensorboard` the same scalars as TensorBoard events in RUN_DIR/tensorboard.

Only rank 0 writes. Inside `epoch()` the console shows what boxforge/progress.py chooses: on a
terminal a bar per epoch (batches done, then loss, img/s, lr and the run's eta beside it; other lines are
printed above it), otherwise the line every `--log-every` steps, which looks like
`epoch 3 iter 120/500 loss 2.314 (avg 2.501) cls 1.62 box 0.69 lr 0.0150 18.3 img/s eta 0:04:12 mem 1.2G`.
metrics.jsonl is the same either way.
TensorBoard is an optional dependency (`pip install 'boxforge[tensorboard]'`): asking for it without the
package fails before any data is read, on every rank, with one line saying how to install it.
"""

from __future__ import annotations

import datetime
import json
import math
import resource
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch

from boxforge.errors import BoxforgeError
from boxforge.progress import Progress, progress

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_MISSING = ("--tensorboard needs the tensorboard package, which is not installed; "
                       "install it with: pip install 'boxforge[tensorboard]'")

# Short names for torchvision's loss keys on the console.
_SHORT = {"bbox_regression": "box", "classification": "cls", "bbox_ctrness": "ctr", "bbox_distribution": "dfl"}


def open_tensorboard(log_dir: Path | None) -> Any:
    """A `SummaryWriter` on `log_dir` (None: only check that TensorBoard can be imported, as on ranks > 0)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch.utils.tensorboard raises ImportError when the package is absent
        raise BoxforgeError(TENSORBOARD_MISSING) from exc
    return SummaryWriter(str(log_dir), flush_secs=30) if log_dir is not None else None


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


class MetricsLog:
    """Append-only metrics.jsonl plus console lines, with a running average of the loss.

    tensorboard: also write every numeric field of each train/val record as a scalar `train/<key>` or
    `val/<key>` at its `step` into RUN_DIR/tensorboard (raises BoxforgeError when the package is missing).
    """

    def __init__(self, run_dir: Path | None, *, enabled: bool = True, stream: TextIO | None = None,
                 window: int = 50, tensorboard: bool = False) -> None:
        self._tb = open_tensorboard(Path(run_dir) / TENSORBOARD_DIR if enabled and run_dir else None) \
            if tensorboard else None
        self.enabled = enabled
        self._stream = stream  # None: whatever sys.stdout is when printing (redirections made later apply)
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir else None
        self._avg: deque[float] = deque(maxlen=window)
        self._shown: Progress | None = None  # the epoch's progress, inside `epoch()`
        self._fh = None
        if enabled and self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
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
        if self._tb is not None:
            self._scalars(clean)

    def _scalars(self, event: dict[str, Any]) -> None:
        """The record's numbers as TensorBoard scalars (null/NaN values, bools and text are left out)."""
        kind, step = event.get("type"), event.get("step")
        if kind not in ("train", "val") or not isinstance(step, int):
            return
        for key, value in event.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if kind == "val":
            self._tb.flush()  # validations are rare and the ones worth seeing at once

    @contextmanager
    def epoch(self, epoch: int, *, total: int, done: int = 0) -> Iterator[None]:
        """Progress of one epoch of `total` batches, `done` of them already (a resumed epoch)."""
        self._shown = progress(total, label=f"epoch {epoch}", unit="batches", stream=self._stream or sys.stdout,
                               initial=done, every=None, enabled=self.enabled, rate=False)
        try:
            yield
        finally:
            self._shown.close()
            self._shown = None

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._shown is not None:
            self._shown.write(text)  # above the bar, when one is drawn
        else:
            print(text, file=self._stream or sys.stdout, flush=True)

    def step(self, *, epoch: int, iteration: int, iters_per_epoch: int, step: int, losses: dict[str, float],
             lr: float, images_seen: int, img_per_s: float, eta_s: float | None, device: torch.device,
             log_line: bool) -> None:
        total = float(sum(losses.values()))
        self._avg.append(total)
        avg = sum(self._avg) / len(self._avg)
        self.record({"type": "train", "step": step, "epoch": epoch, "iter": iteration, "loss": total, "loss_avg": avg,
                     **{f"loss_{k}": v for k, v in losses.items()}, "lr": lr, "images_seen": images_seen,
                     "img_per_s": img_per_s})
        eta = str(datetime.timedelta(seconds=int(eta_s))) if eta_s is not None else None
        line = None
        if log_line:
            parts = " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in losses.items())
            line = (f"epoch {epoch} iter {iteration}/{iters_per_epoch} loss {total:.3f} (avg {avg:.3f}) {parts} "
                    f"lr {lr:.4f} {img_per_s:.1f} img/s{f' eta {eta}' if eta else ''} mem {memory_gb(device):.1f}G")
        if self._shown is None:
            if line is not None:
                self.print(line)
            return
        postfix = {"loss": f"{total:.3f}", "img/s": f"{img_per_s:.1f}", "lr": f"{lr:.4f}"}  # short: a line wide
        if eta:
            postfix["run eta"] = eta
        self._shown.update(iteration - self._shown.done, line=line, **postfix)

    def validation(self, *, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        self.record({"type": "val", "step": step, "epoch": epoch, **metrics})
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.print(f"validation epoch {epoch}: {shown}")
