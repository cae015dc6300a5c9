"""Pictures of an evaluation (`boxforge eval ... --plots DIR`, and the run report): per-class
precision/recall curves and the results table as an image.

    pr_voc.png    VOC: each class's precision against recall at the VOC IoU threshold, detections in score
                  order (the curve the devkit integrates; the legend gives its VOC12 AP)
    pr_coco.png   COCO: pycocotools' interpolated precision at its 101 recall points, area "all", 100
                  detections; one panel at IoU .50, one averaged over IoU .50:.95 (legend: that panel's AP)
    table.png     the per-class table `boxforge eval` prints (evaluation/table.py), plus COCO's 12 numbers

The numbers behind each curve figure are written beside it as CSV (pr_voc.csv, pr_coco.csv), one row per
class and point. COCO curves need pycocotools' full precision array, which the results dict does not keep,
so pycocotools runs a second time here: plotting costs about as much as the COCO evaluation itself.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.coco import precision_curves, run_cocoeval
from boxforge.evaluation.errors import error_rows
from boxforge.evaluation.predictions import Predictions
from boxforge.evaluation.table import coco_lines, table_rows
from boxforge.evaluation.voc import GroundTruth, class_curves, voc_ap
from boxforge.plots.common import DPI, new_figure, save, write_csv

PR_VOC_PNG, PR_COCO_PNG, TABLE_PNG = "pr_voc.png", "pr_coco.png", "table.png"
PR_VOC_CSV, PR_COCO_CSV = "pr_voc.csv", "pr_coco.csv"
ERRORS_PNG, ERRORS_CSV = "errors.png", "errors.csv"
VOC_CURVE = tuple[np.ndarray, np.ndarray, int]  # recall (D,), precision (D,), non-difficult ground truth


def voc_curves(index: DatasetIndex, preds: Predictions, iou_thresh: float = 0.5) -> dict[str, VOC_CURVE]:
    """Per class: (recall (D,), precision (D,), npos), detections in score order, matched as the devkit does."""
    gt = GroundTruth.from_index(index)
    det = preds.flatten([s.image_id for s in index.samples])
    return dict(zip(index.classes, class_curves(gt, det, len(index.classes), iou_thresh)))


def coco_curves(index: DatasetIndex, preds: Predictions) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(recall points (101,), {class: (precision at IoU .50 (101,), mean over IoU .50:.95 (101,))}), nan where
    the class has no ground truth or pycocotools left a point undefined."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = run_cocoeval(index, preds)
    recall, ious, curves = precision_curves(evaluator, index)
    at50 = int(np.argmin(np.abs(ious - 0.5)))
    out = {}
    for name, precision in curves.items():
        finite = np.isfinite(precision)
        count = finite.sum(axis=0)
        mean = np.where(count > 0, np.where(finite, precision, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        out[name] = (precision[at50], mean)
    return recall, out


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _pr_axes(ax: Any, title: str, n_lines: int) -> None:
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    if n_lines:
        ax.legend(loc="lower left", fontsize="small" if n_lines <= 12 else "x-small", ncol=1 if n_lines <= 12 else 2)


def voc_figure(curves: dict[str, VOC_CURVE], iou_thresh: float, title: str = "") -> Figure:
    """All classes in one panel; a class without ground truth is named in the title, not drawn."""
    fig, axes = new_figure(1, sharex=False, width=8, row_height=6)
    ax = axes[0, 0]
    drawn, empty = 0, []
    for (name, (rec, prec, npos)), colour in zip(curves.items(), _colours(len(curves))):
        if not npos:
            empty.append(name)
            continue
        ap = voc_ap(rec, prec, use_07_metric=False)
        ax.plot(np.concatenate(([0.0], rec)), np.concatenate(([prec[0] if len(prec) else 0.0], prec)),
                color=colour, linewidth=1.5, label=f"{name} (AP {ap:.3f}, {npos} gt)")
        drawn += 1
    note = f"; no ground truth: {', '.join(empty)}" if empty else ""
    _pr_axes(ax, f"{title + ': ' if title else ''}VOC precision/recall at IoU {iou_thresh:g}{note}", drawn)
    return fig


def coco_figure(recall: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """Two panels: IoU .50 and the mean over .50:.95; legends give each class's AP in that panel."""
    fig, axes = new_figure(1, 2, sharex=False, width=13, row_height=6)
    for col, (label, which) in enumerate((("IoU .50", 0), ("IoU .50:.95 (mean)", 1))):
        ax = axes[0, col]
        drawn = 0
        for (name, pair), colour in zip(curves.items(), _colours(len(curves))):
            precision = pair[which]
            if not np.isfinite(precision).any():
                continue
            ax.plot(recall, precision, color=colour, linewidth=1.5,
                    label=f"{name} (AP {_finite_mean(precision):.3f})")
            drawn += 1
        _pr_axes(ax, f"{title + ': ' if title else ''}COCO precision/recall, {label}", drawn)
    return fig


def table_figure(results: dict[str, Any], title: str = "") -> Figure:
    """The per-class table as a picture: header row shaded, the mean row bold, COCO's 12 numbers below."""
    headers, rows = table_rows(results)
    coco = coco_lines(results)
    width = max(5.0, 1.0 + 1.25 * len(headers) + 0.06 * max((len(r[0]) for r in rows), default=0))
    height = 0.45 + 0.3 * (len(rows) + 1) + (0.45 if coco else 0.0)  # inches: margins, rows, COCO's two lines
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    if not headers:
        ax.text(0.5, 0.5, "(no results)", ha="center", va="center")
        return fig
    table = ax.table(cellText=rows, colLabels=headers, loc="upper center", cellLoc="right", colLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1.0, 1.3)
    for (row, col), cell in table.get_celld().items():
        if col == 0:
            cell.set_text_props(ha="left")
        if row == 0:
            cell.set_facecolor("#dde6f2")
            cell.set_text_props(weight="bold")
        elif row == len(rows):
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#f2f2f2")
    if coco:
        fig.text(0.02, 0.02, "\n".join(line.strip() for line in coco), family="monospace", fontsize=8.5,
                 va="bottom")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def errors_figure(doc: dict[str, Any], title: str = "") -> Figure:
    """`eval --errors`: the AP gained by fixing each error type, at IoU .50 and averaged over .50:.95, as bars."""
    rows = error_rows(doc)
    fig, axes = new_figure(1, 1, width=7.5, row_height=3.6)
    ax = axes[0, 0]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [float(r[2]) for r in rows], width=0.4, label="dAP @ IoU .50", color="#4c72b0")
    ax.bar(x + 0.2, [float(r[3]) for r in rows], width=0.4, label="dAP @ .50:.95", color="#dd8452")
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("AP points gained if fixed")
    ax.set_title(title or f"where the AP goes (AP50 {doc['ap50']:.3f}, AP {doc['ap']:.3f})")
    ax.legend(loc="upper right")
    return fig


def _write_voc_csv(path: Path, curves: dict[str, VOC_CURVE]) -> Path:
    rows = ((name, i + 1, r, p) for name, (rec, prec, npos) in curves.items() if npos
            for i, (r, p) in enumerate(zip(rec, prec)))
    return write_csv(path, ["class", "detection", "recall", "precision"], rows)


def _write_coco_csv(path: Path, recall: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    rows = ((name, r, p50, pm) for name, (at50, mean) in curves.items() for r, p50, pm in zip(recall, at50, mean))
    return write_csv(path, ["class", "recall", "precision_50", "precision_50_95"], rows)


def plot_evaluation(index: DatasetIndex, preds: Predictions, results: dict[str, Any], out_dir: str | Path, *,
                    iou_thresh: float = 0.5, metrics: Sequence[str] = ("voc07", "voc12", "coco"),
                    title: str = "") -> list[Path]:
    """Write pr_voc.png/.csv (if a VOC metric is asked), pr_coco.png/.csv (if coco is), table.png, and
    errors.png/.csv when `results` holds an error analysis (`eval --errors`); returns them.

    results: what `evaluate_detections(index, preds, metrics, iou_thresh)` returned for the same inputs.
    """
    out = Path(out_dir)
    written: list[Path] = []
    if any(m in metrics for m in ("voc07", "voc12")):
        curves = voc_curves(index, preds, iou_thresh)
        written += [save(voc_figure(curves, iou_thresh, title), out / PR_VOC_PNG), _write_voc_csv(out / PR_VOC_CSV,
                                                                                                  curves)]
    if "coco" in metrics:
        recall, curves_coco = coco_curves(index, preds)
        written += [save(coco_figure(recall, curves_coco, title), out / PR_COCO_PNG),
                    _write_coco_csv(out / PR_COCO_CSV, recall, curves_coco)]
    written.append(save(table_figure(results, title), out / TABLE_PNG))
    if "errors" in results:
        written += [save(errors_figure(results["errors"]), out / ERRORS_PNG),
                    write_csv(out / ERRORS_CSV, ["type", "count", "dAP50_points", "dAP_points"],
                              error_rows(results["errors"]))]
    return written
