"""Shared plotting pieces: figures on the Agg canvas, running means, CSV output, the report.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global
backend is switched, nothing is kept alive between calls, and it works headless.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from boxforge.errors import BoxforgeError

DPI = 110
# Loss curves whose values span more than this factor are drawn on a log axis (darknet starts in the thousands).
LOG_SCALE_RATIO = 100.0


@dataclass
class PlotReport:
    """What `plot_log` read and wrote.

    kind: "boxforge" (a run's metrics.jsonl) or "darknet" (a darknet training log).
    lines: non-blank lines read. parsed: counts of what was used, by kind of record.
    skipped: lines left out, by reason (see `reasons` for the words). files: PNGs and CSVs written.
    """

    kind: str
    source: Path
    out_dir: Path
    lines: int = 0
    parsed: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parsed = ", ".join(f"{n} {what}" for what, n in self.parsed.items())
        out = [f"{self.source} ({self.kind}): {self.lines} lines read; parsed {parsed}"]
        out += [f"  wrote {p}" for p in self.files]
        if self.skipped:
            out.append(f"  skipped {sum(self.skipped.values())} lines:")
            for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
                out.append(f"    {reason:<14} {n:>10}  {self.reasons.get(reason, '')}".rstrip())
        else:
            out.append("  skipped 0 lines")
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


def check_range(from_step: int | None, to_step: int | None, smooth: int) -> None:
    if from_step is not None and to_step is not None and from_step > to_step:
        raise BoxforgeError(f"--from-step {from_step} is after --to-step {to_step}; allowed: A <= B")
    if smooth < 1:
        raise BoxforgeError(f"--smooth {smooth}: allowed: a window of 1 (no smoothing) or more points")


def in_range(step: float, from_step: int | None, to_step: int | None) -> bool:
    return (from_step is None or step >= from_step) and (to_step is None or step <= to_step)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values at each point (NaNs are ignored, not spread).

    values: (N,) float. Returns (N,) float64; NaN where the window holds no finite value.
    """
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or v.size == 0:
        return v.copy()
    finite = np.isfinite(v)
    csum = np.concatenate(([0.0], np.cumsum(np.where(finite, v, 0.0))))
    ccnt = np.concatenate(([0], np.cumsum(finite)))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    n = ccnt[idx] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (csum[idx] - csum[lo]) / np.maximum(n, 1), np.nan)


def new_figure(rows: int, cols: int = 1, *, width: float = 10.0, row_height: float = 3.2,
               sharex: bool = True) -> tuple[Figure, np.ndarray]:
    """A Figure with a (rows, cols) grid of axes (always a 2-D array)."""
    fig = Figure(figsize=(width, max(2.5, row_height * rows)), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def maybe_log_y(ax, *series: np.ndarray) -> None:
    """Log y axis when every finite value is positive and they span more than LOG_SCALE_RATIO."""
    vals = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in series]) if series else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size and vals.min() > 0 and vals.max() / vals.min() > LOG_SCALE_RATIO:
        ax.set_yscale("log")


def fmt(value: object) -> str:
    """CSV cell: integers as integers, floats at full precision, NaN/None as an empty cell, text as is."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    f = float(value)  # type: ignore[arg-type]
    if not math.isfinite(f):
        return ""
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([fmt(v) for v in row])
    return path


def read_csv(path: Path, text: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Columns of a CSV written by `write_csv`: floats (empty cells NaN), except the `text` columns
    and any column that does not parse as numbers, which stay strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j] for r in body]
        try:
            if name in text:
                raise ValueError(name)
            out[name] = np.array([float(c) if c else np.nan for c in cells], dtype=np.float64)
        except ValueError:
            out[name] = np.array(cells, dtype=object)
    return out
