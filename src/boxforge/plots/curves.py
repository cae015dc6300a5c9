"""Curves from a boxforge run's metrics.jsonl: losses with running means, learning rate, throughput,
validation mAP and mean IoU against steps (epochs on the top axis), with the best checkpoint marked.

A resumed run appends to metrics.jsonl and replays the steps after its checkpoint;
the later records win (earlier ones from that step on are dropped as `replaced`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from boxforge.errors import BoxforgeError
from boxforge.evaluation import BEST_METRIC, DETECT_BEST
from boxforge.plots.common import PlotReport, in_range, maybe_log_y, new_figure, running_mean, save, write_csv

VAL_METRICS = ("voc07_map", "voc12_map", "coco_AP", "coco_AP50", "coco_AP75")
BEST_KEY = BEST_METRIC["detect"][0]  # what fit() keeps best.pt by, unless the run's --best-metric says otherwise
EXTRA_VAL = ("fitness", "mean_iou")  # logged too, not drawn as mAP curves
TRAIN_CSV, VAL_CSV = "train.csv", "val.csv"
LOSS_PNG, LR_PNG, VAL_PNG = "loss.png", "lr_throughput.png", "validation.png"
REASONS = {
    "malformed": "not a JSON object (e.g. the last line of a killed run)",
    "no_step": "a train/val record without a numeric step",
    "other": "a record of another type",
    "replaced": "superseded by a resumed run that replayed these steps",
    "out_of_range": "outside --from-step/--to-step",
}


@dataclass
class RunSeries:
    """Columns of the train and val records: name -> (N,) float64 (NaN where a record lacks the key).

    components: loss component keys in order of appearance (`loss_bbox_regression`, ...).
    best: row of `val` holding the best checkpoint (highest finite `best_key`, earliest on ties), or None.
    best_key: the metric that chose best.pt (the run's --best-metric; VOC12 mAP by default).
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    components: list[str]
    best: int | None
    lines: int
    skipped: Counter = field(default_factory=Counter)
    best_key: str = BEST_KEY


def _append(rows: list[dict[str, Any]], row: dict[str, Any], skipped: Counter) -> None:
    """Append, first dropping the rows a resumed run replays (steps >= the new one, when it goes back)."""
    if rows and row["step"] < rows[-1]["step"]:
        while rows and rows[-1]["step"] >= row["step"]:
            rows.pop()
            skipped["replaced"] += 1
    rows.append(row)


def _columns(rows: list[dict[str, Any]], first: tuple[str, ...]) -> dict[str, np.ndarray]:
    keys = list(first)
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("type", "time")]
    return {k: np.array([_num(r.get(k)) for r in rows], dtype=np.float64) for k in keys}


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def best_index(voc12: np.ndarray) -> int | None:
    """Row of the best checkpoint: the highest finite value, the earliest on ties (fit() saves on `>` only)."""
    v = np.asarray(voc12, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(v))
    if finite.size == 0:
        return None
    return int(finite[np.argmax(v[finite])])


def _best_key(metrics: Path) -> str:
    """The metric the run chose best.pt by: its config.yaml's best_metric (default VOC12 mAP)."""
    import yaml

    try:
        config = yaml.safe_load((Path(metrics).parent / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    choice = config.get("best_metric", "voc12") if isinstance(config, dict) else "voc12"
    return DETECT_BEST.get(choice, DETECT_BEST["voc12"])[0]


def read_metrics(path: Path, *, from_step: int | None = None, to_step: int | None = None) -> RunSeries:
    """Read metrics.jsonl line by line; bad lines are counted by reason, never fatal."""
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    lines = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            lines += 1
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                skipped["malformed"] += 1
                continue
            kind = rec.get("type")
            if kind not in ("train", "val"):
                skipped["other"] += 1
            elif not isinstance(rec.get("step"), (int, float)) or isinstance(rec.get("step"), bool):
                skipped["no_step"] += 1
            else:
                _append(train if kind == "train" else val, rec, skipped)
    val_cols = _columns(val, ("step", "epoch") + VAL_METRICS + EXTRA_VAL)
    best_key = _best_key(path)
    best = best_index(val_cols[best_key])
    keep_train = [in_range(r["step"], from_step, to_step) for r in train]
    keep_val = np.array([in_range(s, from_step, to_step) for s in val_cols["step"]], dtype=bool)
    skipped["out_of_range"] += keep_train.count(False) + int((~keep_val).sum())
    if best is not None:
        best = int(keep_val[:best].sum()) if keep_val[best] else None
    train_cols = _columns([r for r, k in zip(train, keep_train) if k],
                          ("step", "epoch", "iter", "loss", "loss_avg", "lr", "images_seen", "img_per_s"))
    components = [k for k in train_cols if k.startswith("loss_") and k != "loss_avg"]
    val_cols = {k: v[keep_val] for k, v in val_cols.items()}
    skipped = Counter({k: v for k, v in skipped.items() if v})
    return RunSeries(train_cols, val_cols, components, best, lines, skipped, best_key)


def steps_per_epoch(train: dict[str, np.ndarray]) -> float | None:
    """Optimizer steps per epoch, estimated from (step, epoch, iter) records; None when unknown."""
    step, epoch, it = train["step"], train["epoch"], train["iter"]
    ok = np.isfinite(step) & np.isfinite(epoch) & np.isfinite(it)
    if not ok.any():
        return None
    per_epoch = np.nanmax(it[ok])
    frac = epoch[ok] + it[ok] / per_epoch
    good = frac > 0
    if not good.any():
        return None
    spe = float(np.median(step[ok][good] / frac[good]))
    return spe if spe > 0 else None


def _epoch_axis(ax, spe: float | None) -> None:
    if spe:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")


def _mark_best(axes, series: RunSeries) -> None:
    if series.best is None:
        return
    step = series.val["step"][series.best]
    for ax in axes:
        ax.axvline(step, color="black", alpha=0.6, linestyle=":", linewidth=1.2, label="best.pt")


def loss_figure(series: RunSeries, smooth: int, title: str) -> Figure:
    """One panel per loss series (total first, then each component): raw faint, running mean solid."""
    names = ["loss"] + series.components
    cols = 1 if len(names) == 1 else 2
    rows = math.ceil(len(names) / cols)
    fig, axes = new_figure(rows, cols, width=12 if cols == 2 else 10, row_height=3.0)
    step = series.train["step"]
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        y = series.train[names[i]]
        ax.plot(step, y, color="tab:blue", alpha=0.3, linewidth=0.7, label="raw")
        ax.plot(step, running_mean(y, smooth), color="tab:blue", linewidth=1.6, label=f"running mean ({smooth})")
        maybe_log_y(ax, y)
        ax.set_title("total loss" if names[i] == "loss" else names[i].removeprefix("loss_"), fontsize="medium")
        ax.grid(True, alpha=0.3)
        _mark_best([ax], series)
        if i == 0:
            ax.legend(loc="upper right", fontsize="small")
    spe = steps_per_epoch(series.train)
    for ax in axes[0]:
        if ax.get_visible():
            _epoch_axis(ax, spe)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    return fig


def lr_figure(series: RunSeries, smooth: int, title: str) -> Figure:
    fig, axes = new_figure(2, row_height=3.0)
    step = series.train["step"]
    axes[0, 0].plot(step, series.train["lr"], color="tab:green", linewidth=1.4)
    axes[0, 0].set_ylabel("learning rate")
    rate = series.train["img_per_s"]
    axes[1, 0].plot(step, rate, color="tab:purple", alpha=0.3, linewidth=0.7)
    axes[1, 0].plot(step, running_mean(rate, smooth), color="tab:purple", linewidth=1.6)
    axes[1, 0].set_ylabel("throughput (img/s)")
    axes[1, 0].set_xlabel("step")
    for ax in axes[:, 0]:
        ax.grid(True, alpha=0.3)
    _mark_best(axes[:, 0], series)
    _epoch_axis(axes[0, 0], steps_per_epoch(series.train))
    axes[0, 0].set_title(title)
    return fig


def val_figure(series: RunSeries, title: str) -> Figure:
    """mAP metrics in one panel, mean IoU of matched predictions in another; best.pt starred."""
    fig, axes = new_figure(2, row_height=3.4)
    step = series.val["step"]
    ax = axes[0, 0]
    for key in VAL_METRICS:
        if key in series.val and np.isfinite(series.val[key]).any():
            ax.plot(step, series.val[key], marker="o", markersize=3, linewidth=1.4, label=key)
    ax.set_ylabel("mAP")
    ax2 = axes[1, 0]
    ax2.plot(step, series.val["mean_iou"], marker="o", markersize=3, color="tab:brown", label="mean IoU (matched)")
    ax2.set_ylabel("mean IoU")
    ax2.set_xlabel("step")
    if series.best is not None:
        b = series.best
        best = series.val[series.best_key][b]
        ax.plot([step[b]], [best], marker="*", markersize=18, color="gold", markeredgecolor="black",
                linestyle="none", label=f"best.pt: {series.best_key} {best:.4f} @ step {step[b]:.0f}", zorder=5)
        ax.annotate(f"best.pt {best:.4f}", (step[b], best), textcoords="offset points", xytext=(10, -16))
    _mark_best([ax2], series)
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
        a.legend(loc="best", fontsize="small")
    _epoch_axis(ax, steps_per_epoch(series.train) if series.train["step"].size else None)
    ax.set_title(title)
    return fig


def write_csvs(series: RunSeries, out: Path, smooth: int) -> list[Path]:
    t = series.train
    header = list(t)
    for name in ["loss"] + series.components:
        header.insert(header.index(name) + 1, f"{name}_smooth")
    cols = [t[k] if k in t else running_mean(t[k.removesuffix("_smooth")], smooth) for k in header]
    written = [write_csv(out / TRAIN_CSV, header, zip(*cols))]
    v = series.val
    best = np.zeros(len(v["step"]))
    if series.best is not None:
        best[series.best] = 1
    written.append(write_csv(out / VAL_CSV, list(v) + ["best"], zip(*v.values(), best)))
    return written


def plot_run(metrics: Path, out: Path, *, smooth: int, from_step: int | None, to_step: int | None) -> PlotReport:
    series = read_metrics(metrics, from_step=from_step, to_step=to_step)
    report = PlotReport(kind="boxforge", source=metrics, out_dir=out, lines=series.lines, skipped=series.skipped,
                        reasons=dict(REASONS), parsed={"train records": len(series.train["step"]),
                                                       "val records": len(series.val["step"])})
    if not series.train["step"].size and not series.val["step"].size:
        raise BoxforgeError(f"{metrics}: no train or val records{' in the step range' if from_step or to_step else ''}"
                            f" ({series.lines} lines read)")
    title = f"{metrics.parent.name}/{metrics.name}"
    report.files += write_csvs(series, out, smooth)
    if series.train["step"].size:
        report.files.append(save(loss_figure(series, smooth, title), out / LOSS_PNG))
        report.files.append(save(lr_figure(series, smooth, title), out / LR_PNG))
    if series.val["step"].size:
        report.files.append(save(val_figure(series, title), out / VAL_PNG))
    else:
        report.notes.append("no validation records: validation.png not drawn")
    if series.best is not None:
        b = series.best
        report.notes.append(f"best checkpoint (best.pt): step {series.val['step'][b]:.0f}, epoch "
                            f"{series.val['epoch'][b]:.0f}, {series.best_key} {series.val[series.best_key][b]:.4f}")
    return report
