"""Streaming parser for darknet training logs (`./darknet detector train ... | tee train.txt`).

Lines understood (pjreddie and AlexeyAB darknet, YOLOv2 to v4):

    6274: 0.479518, 0.625265 avg, 0.001000 rate, 3.029 seconds, 401536 images
    1234: 0.479518, 0.625265 avg loss, 0.001000 rate, 3.029 seconds, 401536 images, 12.3 hours left
    Region Avg IOU: 0.326577, Class: 0.742537, Obj: 0.033966, No Obj: 0.000793, Avg Recall: 0.125, count: 8
    Region 82 Avg IOU: 0.354, Class: 0.51, Obj: 0.30, No Obj: 0.005, .5R: 0.2, .75R: 0.0,  count: 5
    v3 (mse loss, Normalizer: (iou: 0.75, cls: 1.00) Region 82 Avg (IOU: 0.331, GIOU: 0.31), Class: 0.5, ...
        .5R: 0.2, .75R: 0.0, count: 9, class_loss = 2.1, iou_loss = 0.4, total_loss = 2.5
    v3 (iou loss, Normalizer: (iou: 0.07, obj: 1.00, cls: 1.00) Region 139 Avg (IOU: 0.34), count: 6, ...

Darknet prints a batch's Region lines (one per subdivision and detection layer)
before that batch's loss line, so Region lines are summed per layer until the next
loss line names their iteration. Everything is aggregated on the fly into at most
`max_points` buckets of iterations (the bucket width doubles when full), so memory
stays constant whatever the log size; per-iteration values are exact while the
log holds no more than `max_points` iterations.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A printf("%f") value, including the NaN/inf spellings of glibc (-nan) and MSVC (-nan(ind), 1.#IND).
_NUM = rb"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|(?i:nan)(?:\([a-z]*\))?|(?i:inf)|\d\.#[A-Za-z]+\d*))"
_ITER = re.compile(rb"\s*(\d+)\s*:\s*" + _NUM + rb",\s*" + _NUM + rb"\s+avg(?: loss)?,\s*" + _NUM
                   + rb"\s+rate,\s*" + _NUM + rb"\s+seconds,\s*(\d+)\s+images")
_ITER_HINT = re.compile(rb"\s*\d+\s*:")
# Groups: 1 layer, 2/3 IOU (two spellings), 4 GIoU, 5 Class, 6 Obj, 7 No Obj, 8 .5R, 9 .75R, 10 Avg Recall (v2), 11 count.
_REGION = re.compile(rb"Region(?: (\d+))? Avg (?:IOU: " + _NUM + rb"|\(IOU: " + _NUM + rb"(?:, (?i:GIoU): " + _NUM
                     + rb")?\))(?:, Class: " + _NUM + rb", Obj: " + _NUM + rb", No Obj: " + _NUM
                     + rb", (?:\.5R: " + _NUM + rb", \.75R: " + _NUM + rb"|Avg Recall: " + _NUM + rb"))?,\s*count: (\d+)")

REASONS = {
    "nan": "a loss or Region value is nan/inf",
    "no_objects": "Region line with count 0 (darknet prints -nan there: nothing to average)",
    "sync": "multi-GPU 'Syncing' line",
    "malformed": "looks like a loss or Region line but does not parse (truncated or garbled)",
    "incomplete": "Region lines after the last loss line (the batch never finished)",
    "out_of_range": "outside --from-step/--to-step",
    "other": "not a training metric line (layer table, Loaded:, mAP, ...)",
}

# Bucket columns: iteration lines seen, sum of their numbers, then finite-loss lines and sums.
_IT_N, _IT_SUM, _LOSS_N, _LOSS, _AVG, _RATE, _SECONDS, _IMAGES = range(8)
_BASE = 8
# Per-layer columns (weighted by the line's object count where darknet averages over objects).
(_L_LINES, _L_OBJ, _L_IOU, _L_FULL_OBJ, _L_R50, _L_R75_OBJ, _L_R75, _L_CLS, _L_OBJNESS, _L_NOOBJ,
 _L_FULL_LINES) = range(11)
_LAYER_COLS = 11


def _f(token: bytes) -> float:
    try:
        return float(token)
    except ValueError:  # nan(ind), 1.#IND and friends
        return math.nan


@dataclass
class LayerSeries:
    """Per-bucket Region statistics of one detection layer; arrays are (B,) float64, NaN where unknown."""

    iteration: np.ndarray
    iou: np.ndarray
    recall50: np.ndarray
    recall75: np.ndarray
    cls: np.ndarray
    obj: np.ndarray
    no_obj: np.ndarray
    objects: np.ndarray
    lines: np.ndarray


@dataclass
class DarknetSeries:
    """What a darknet log holds, per bucket of `bucket_width` iterations (x = mean iteration of the bucket).

    iteration, loss, avg_loss, rate, seconds, images: (B,) float64 means over the bucket's loss lines.
    loss_lines: (B,) how many loss lines each bucket averages. layers: layer name -> LayerSeries.
    """

    iteration: np.ndarray
    loss: np.ndarray
    avg_loss: np.ndarray
    rate: np.ndarray
    seconds: np.ndarray
    images: np.ndarray
    loss_lines: np.ndarray
    layers: dict[str, LayerSeries]
    bucket_width: int
    lines: int
    loss_lines_total: int
    region_lines_total: int
    skipped: Counter = field(default_factory=Counter)


class DarknetLogParser:
    """Feed lines (bytes) one at a time, then call `result()`. Never raises on bad input: it counts it."""

    def __init__(self, *, from_step: int | None = None, to_step: int | None = None, max_points: int = 20_000) -> None:
        if max_points < 2:
            raise ValueError(f"max_points={max_points}; allowed: 2 or more")
        self.from_step, self.to_step, self.max_points = from_step, to_step, max_points
        self.width = 1
        self.buckets: dict[int, array] = {}  # bucket key -> columns (doubles: 8 bytes each, not a float object)
        self.slots: dict[bytes, int] = {}  # layer name -> column offset
        self.pending: dict[bytes, list[float]] = {}
        self.pending_lines = 0
        self.skipped: Counter = Counter()
        self.lines = self.loss_lines = self.region_lines = 0
        self._key: int | None = None
        self._row = array("d")

    def feed(self, line: bytes) -> None:
        self.feed_lines((line,))

    def feed_lines(self, lines) -> None:
        """Feed an iterable of lines (bytes, without their newline)."""
        region, iteration, hint, skipped = self._region, self._iteration, _ITER_HINT.match, self.skipped
        n = 0
        for line in lines:
            if not line or line.isspace():
                continue
            n += 1
            if b"Region" in line:
                region(line)
            elif hint(line):
                iteration(line)
            elif b"Syncing" in line:
                skipped["sync"] += 1
            else:
                skipped["other"] += 1
        self.lines += n

    def _region(self, line: bytes) -> None:
        zero = line.find(b"count: 0")
        if zero >= 0 and not line[zero + 8:zero + 9].isdigit():  # the common empty-layer line, without the regex
            self.skipped["no_objects"] += 1
            return
        m = _REGION.search(line)
        if m is None:
            self.skipped["malformed"] += 1
            return
        g = m.groups()
        count = int(g[10])
        if count == 0:
            self.skipped["no_objects"] += 1
            return
        full = g[4] is not None
        try:  # float() reads glibc's nan/-nan/inf; MSVC's spellings fall to _f below
            iou = float(g[1] if g[1] is not None else g[2])
            if full:
                cls, obj, noobj = float(g[4]), float(g[5]), float(g[6])
                r50 = float(g[7] if g[7] is not None else g[9])
                r75 = float(g[8]) if g[8] is not None else 0.0
        except ValueError:
            iou = _f(g[1] if g[1] is not None else g[2])
            if full:
                cls, obj, noobj = _f(g[4]), _f(g[5]), _f(g[6])
                r50 = _f(g[7] if g[7] is not None else g[9])
                r75 = _f(g[8]) if g[8] is not None else 0.0
        check = iou + cls + obj + noobj + r50 + r75 if full else iou
        if not math.isfinite(check):
            self.skipped["nan"] += 1
            return
        acc = self.pending.get(g[0] or b"region")
        if acc is None:
            acc = self.pending[g[0] or b"region"] = [0.0] * _LAYER_COLS
        acc[_L_LINES] += 1
        acc[_L_OBJ] += count
        acc[_L_IOU] += iou * count
        if full:
            acc[_L_FULL_OBJ] += count
            acc[_L_FULL_LINES] += 1
            acc[_L_R50] += r50 * count
            acc[_L_CLS] += cls * count
            acc[_L_OBJNESS] += obj * count
            acc[_L_NOOBJ] += noobj
            if g[8] is not None:
                acc[_L_R75_OBJ] += count
                acc[_L_R75] += r75 * count
        self.pending_lines += 1

    def _iteration(self, line: bytes) -> None:
        m = _ITER.match(line)
        if m is None:
            self.skipped["malformed"] += 1
            return
        it = int(m.group(1))
        if not ((self.from_step is None or it >= self.from_step) and (self.to_step is None or it <= self.to_step)):
            self.skipped["out_of_range"] += 1 + self.pending_lines
            self._clear_pending()
            return
        loss, avg, rate, secs = _f(m.group(2)), _f(m.group(3)), _f(m.group(4)), _f(m.group(5))
        row = self._bucket(it // self.width)
        row[_IT_N] += 1
        row[_IT_SUM] += it
        if math.isfinite(loss + avg + rate + secs):
            row[_LOSS_N] += 1
            row[_LOSS] += loss
            row[_AVG] += avg
            row[_RATE] += rate
            row[_SECONDS] += secs
            row[_IMAGES] += int(m.group(6))
            self.loss_lines += 1
        else:
            self.skipped["nan"] += 1
        for layer, acc in self.pending.items():
            off = self.slots.get(layer)
            if off is None:
                off = self.slots[layer] = _BASE + _LAYER_COLS * len(self.slots)
            if len(row) < off + _LAYER_COLS:
                row.extend([0.0] * (off + _LAYER_COLS - len(row)))
            for i in range(_LAYER_COLS):
                row[off + i] += acc[i]
        self.region_lines += self.pending_lines
        self._clear_pending()

    def _clear_pending(self) -> None:
        self.pending = {}
        self.pending_lines = 0

    def _bucket(self, key: int) -> array:
        if key == self._key:
            return self._row
        row = self.buckets.get(key)
        if row is None:
            if len(self.buckets) >= self.max_points:
                self._coarsen()
                return self._bucket(key // 2)
            row = self.buckets[key] = array("d", bytes(8 * _BASE))
        self._key, self._row = key, row
        return row

    def _coarsen(self) -> None:
        """Double the bucket width, merging pairs of buckets (all columns are sums, so merging is exact)."""
        self.width *= 2
        merged: dict[int, array] = {}
        for key, row in self.buckets.items():
            into = merged.get(key // 2)
            if into is None:
                merged[key // 2] = row
                continue
            if len(into) < len(row):
                into.extend([0.0] * (len(row) - len(into)))
            for i, v in enumerate(row):
                into[i] += v
        self.buckets = merged
        self._key, self._row = None, array("d")

    def result(self) -> DarknetSeries:
        skipped = Counter(self.skipped)
        if self.pending_lines:
            skipped["incomplete"] += self.pending_lines
        keys = sorted(self.buckets)
        ncols = _BASE + _LAYER_COLS * len(self.slots)
        table = np.zeros((len(keys), ncols), dtype=np.float64)
        for r, key in enumerate(keys):
            row = self.buckets[key]
            table[r, :len(row)] = row
        x = _div(table[:, _IT_SUM], table[:, _IT_N])
        n = table[:, _LOSS_N]
        layers = {name.decode("ascii", "replace"): _layer(table[:, off:off + _LAYER_COLS], x)
                  for name, off in sorted(self.slots.items(), key=lambda kv: _layer_order(kv[0]))}
        return DarknetSeries(iteration=x, loss=_div(table[:, _LOSS], n), avg_loss=_div(table[:, _AVG], n),
                             rate=_div(table[:, _RATE], n), seconds=_div(table[:, _SECONDS], n),
                             images=_div(table[:, _IMAGES], n), loss_lines=n, layers=layers,
                             bucket_width=self.width, lines=self.lines, loss_lines_total=self.loss_lines,
                             region_lines_total=self.region_lines, skipped=skipped)


def _layer_order(name: bytes) -> tuple[int, bytes]:
    return (int(name), b"") if name.isdigit() else (1 << 30, name)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _layer(cols: np.ndarray, x: np.ndarray) -> LayerSeries:
    keep = cols[:, _L_LINES] > 0
    c, x = cols[keep], x[keep]
    full = c[:, _L_FULL_OBJ]
    return LayerSeries(iteration=x, iou=_div(c[:, _L_IOU], c[:, _L_OBJ]), recall50=_div(c[:, _L_R50], full),
                       recall75=_div(c[:, _L_R75], c[:, _L_R75_OBJ]), cls=_div(c[:, _L_CLS], full),
                       obj=_div(c[:, _L_OBJNESS], full), no_obj=_div(c[:, _L_NOOBJ], c[:, _L_FULL_LINES]),
                       objects=c[:, _L_OBJ], lines=c[:, _L_LINES])


def iter_lines(path: Path, chunk_size: int = 1 << 20, max_line: int = 1 << 16):
    """Lines of `path` as bytes, read in chunks: constant memory even for a log without newlines.

    `\\r\\n` and lone `\\r` (progress output) both end a line. A line longer than
    `max_line` bytes is cut into pieces (they are then skipped as unparseable).
    """
    rest = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                break
            parts = (rest + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            rest = parts.pop()
            yield from parts
            while len(rest) > max_line:
                yield rest[:max_line]
                rest = rest[max_line:]
    if rest:
        yield rest


def parse_darknet_log(path: str | Path, *, from_step: int | None = None, to_step: int | None = None,
                      max_points: int = 20_000) -> DarknetSeries:
    """Parse a darknet training log, streaming; see the module docstring for the lines understood."""
    parser = DarknetLogParser(from_step=from_step, to_step=to_step, max_points=max_points)
    parser.feed_lines(iter_lines(Path(path)))
    return parser.result()

