"""Curves from a darknet training log: loss (raw and darknet's avg), learning rate, and per detection
layer the Region Avg IOU and recall at IoU .5 and .75. CSVs hold the same numbers for other tools."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from boxforge.errors import BoxforgeError
from boxforge.plots.common import PlotReport, maybe_log_y, new_figure, running_mean, save, write_csv
from boxforge.plots.darknet_log import REASONS, DarknetSeries, parse_darknet_log

LOSS_CSV, REGION_CSV = "darknet_loss.csv", "darknet_region.csv"
LOSS_PNG, REGION_PNG = "darknet_loss.png", "darknet_region.png"
REGION_METRICS = (("iou", "Region Avg IOU"), ("recall50", "recall at IoU .5 (.5R)"),
                  ("recall75", "recall at IoU .75 (.75R)"))


def _x_label(series: DarknetSeries) -> str:
    if series.bucket_width > 1:
        return f"iteration (each point: mean of a bucket of {series.bucket_width} iterations)"
    return "iteration"


def loss_figure(series: DarknetSeries, title: str) -> Figure:
    """Two panels: raw loss (faint) and darknet's own running `avg` loss; learning rate."""
    fig, axes = new_figure(2, row_height=3.4)
    ax = axes[0, 0]
    ax.plot(series.iteration, series.loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    ax.plot(series.iteration, series.avg_loss, color="tab:blue", linewidth=1.8, label="avg loss (darknet)")
    maybe_log_y(ax, series.loss, series.avg_loss)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(True, alpha=0.3)
    ax = axes[1, 0]
    ax.plot(series.iteration, series.rate, color="tab:green", linewidth=1.2, label="learning rate")
    ax.set_ylabel("learning rate")
    ax.set_xlabel(_x_label(series))
    ax.grid(True, alpha=0.3)
    return fig


def region_figure(series: DarknetSeries, title: str, smooth: int) -> Figure:
    """One panel per metric (IOU, .5R, .75R); one colour per detection layer; smoothed over `smooth` points."""
    fig, axes = new_figure(len(REGION_METRICS), row_height=3.0)
    colours = [f"C{i}" for i in range(10)]
    for (attr, label), ax in zip(REGION_METRICS, axes[:, 0]):
        for i, (name, layer) in enumerate(series.layers.items()):
            y = getattr(layer, attr)
            if not np.isfinite(y).any():
                continue
            colour = colours[i % len(colours)]
            if smooth > 1:
                ax.plot(layer.iteration, y, color=colour, alpha=0.25, linewidth=0.7)
            ax.plot(layer.iteration, running_mean(y, smooth), color=colour, linewidth=1.6, label=f"layer {name}")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize="small")
        else:
            ax.text(0.5, 0.5, "not in this log format", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
    smooth_note = f" (running mean of {smooth} points over the faint raw values)" if smooth > 1 else ""
    axes[0, 0].set_title(title + smooth_note)
    axes[-1, 0].set_xlabel(_x_label(series))
    return fig


def write_csvs(series: DarknetSeries, out: Path, smooth: int) -> list[Path]:
    written = [write_csv(out / LOSS_CSV, ("iteration", "loss", "avg_loss", "rate", "seconds", "images", "lines"),
                         zip(series.iteration, series.loss, series.avg_loss, series.rate, series.seconds,
                             series.images, series.loss_lines))]
    if series.layers:
        header = ("iteration", "layer", "iou", "iou_smooth", "recall50", "recall50_smooth", "recall75",
                  "recall75_smooth", "class", "obj", "no_obj", "objects", "lines")
        rows = itertools.chain.from_iterable(
            zip(s.iteration, itertools.repeat(name), s.iou, running_mean(s.iou, smooth), s.recall50,
                running_mean(s.recall50, smooth), s.recall75, running_mean(s.recall75, smooth), s.cls, s.obj,
                s.no_obj, s.objects, s.lines)
            for name, s in series.layers.items())
        written.append(write_csv(out / REGION_CSV, header, rows))
    return written


def plot_darknet(log: Path, out: Path, *, smooth: int, from_step: int | None, to_step: int | None,
                 max_points: int = 20_000) -> PlotReport:
    """Parse `log` (streaming) and write darknet_loss.png/.csv and darknet_region.png/.csv into `out`."""
    series = parse_darknet_log(log, from_step=from_step, to_step=to_step, max_points=max_points)
    report = PlotReport(kind="darknet", source=log, out_dir=out, lines=series.lines, skipped=series.skipped,
                        reasons=dict(REASONS),
                        parsed={"loss lines": series.loss_lines_total, "Region lines": series.region_lines_total,
                                "detection layers": len(series.layers)})
    if series.iteration.size == 0:
        wanted = "'6274: 0.479518, 0.625265 avg, 0.001000 rate, 3.029 seconds, 401536 images'"
        raise BoxforgeError(f"{log}: no darknet loss lines found{' in the step range' if from_step or to_step else ''} "
                            f"({series.lines} lines read); expected lines like {wanted}")
    title = f"{log.name}: iterations {series.iteration[0]:.0f} to {series.iteration[-1]:.0f}"
    report.files += write_csvs(series, out, smooth)
    report.files.append(save(loss_figure(series, title), out / LOSS_PNG))
    if series.layers:
        report.files.append(save(region_figure(series, title, smooth), out / REGION_PNG))
    else:
        report.notes.append("no Region lines in this log: AlexeyAB darknet prints them to stderr, "
                            "so capture with `2>&1 | tee train.txt`")
    if series.bucket_width > 1:
        report.notes.append(f"{series.bucket_width} iterations per point (the log has more iterations than "
                            f"{max_points} points); CSV rows are bucket means")
    return report
