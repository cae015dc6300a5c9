"""Plots: training curves from a boxforge run or a darknet log, and a picture of a dataset.

    plot_log(source, out_dir=None, *, smooth=20, from_step=None, to_step=None) -> PlotReport
    plot_dataset(index, out_dir, *, samples=16) -> list[Path]

matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from boxforge.plots.logs import detect_log, plot_log

if TYPE_CHECKING:
    from boxforge.data.index import DatasetIndex
    from boxforge.plots.common import PlotReport  # noqa: F401

__all__ = ["detect_log", "plot_dataset", "plot_log"]


def plot_dataset(index: "DatasetIndex", out_dir: str | Path, *, samples: int = 16) -> list[Path]:
    """See `boxforge.plots.dataset.plot_dataset`."""
    from boxforge.plots.dataset import plot_dataset as _plot

    return _plot(index, out_dir, samples=samples)
