"""`boxforge plot`: find out what SOURCE is (a boxforge run or a darknet log) and draw it."""

from __future__ import annotations

import json
from pathlib import Path

from boxforge.errors import BoxforgeError
from boxforge.plots.common import PlotReport, check_range

METRICS_FILE = "metrics.jsonl"
_SNIFF_BYTES = 1 << 16


def detect_log(source: Path) -> tuple[str, Path]:
    """("boxforge", RUN_DIR/metrics.jsonl) or ("darknet", log file), by content, not by name alone."""
    if source.is_dir():
        metrics = source / METRICS_FILE
        if not metrics.is_file():
            raise BoxforgeError(f"{source}: a folder without {METRICS_FILE}; give a boxforge run directory, "
                                f"its {METRICS_FILE}, or a darknet training log file")
        return "boxforge", metrics
    if not source.is_file():
        raise BoxforgeError(f"{source}: no such file or folder")
    with open(source, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if source.name == METRICS_FILE or _first_record_is_boxforge(head):
        return "boxforge", source
    # Anything else is read as a darknet log, whose header (layer table, weight loading) can be long;
    # the parser then says so if it finds no darknet loss line at all.
    return "darknet", source


def _first_record_is_boxforge(head: bytes) -> bool:
    for line in head.splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                return False
            return isinstance(rec, dict) and rec.get("type") in ("train", "val")
    return False


def default_out(kind: str, path: Path) -> Path:
    """RUN_DIR/plots for a run; LOGNAME-plots beside a darknet log (train.txt -> train-plots/)."""
    return path.parent / "plots" if kind == "boxforge" else path.parent / f"{path.stem}-plots"


def plot_log(source: str | Path, out_dir: str | Path | None = None, *, smooth: int = 20,
             from_step: int | None = None, to_step: int | None = None) -> PlotReport:
    """Draw training curves (PNG) and write their series (CSV) from a boxforge run or a darknet log.

    source: a run directory, its metrics.jsonl, or a darknet log (pjreddie or AlexeyAB); detected by content.
    out_dir: default RUN_DIR/plots, or LOGNAME-plots beside a darknet log.
    smooth: running-mean window in points. from_step/to_step: inclusive step (iteration) range.
    """
    check_range(from_step, to_step, smooth)
    kind, path = detect_log(Path(source))
    out = Path(out_dir) if out_dir is not None else default_out(kind, path)
    if kind == "boxforge":
        from boxforge.plots.curves import plot_run

        return plot_run(path, out, smooth=smooth, from_step=from_step, to_step=to_step)
    from boxforge.plots.darknet import plot_darknet

    return plot_darknet(path, out, smooth=smooth, from_step=from_step, to_step=to_step)
