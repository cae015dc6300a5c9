"""A per-class table of evaluation results for the terminal: one row per class, one column per metric."""

from __future__ import annotations

import math
from typing import Any

from boxforge.evaluation.coco import STAT_NAMES


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return "-" if math.isnan(value) else f"{value:.4f}"


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the per-class table: one row per class, then the `mean` row last.

    Shared by the terminal table, the run report's HTML table and `eval --plots`' table.png, so
    the three always show the same cells. Empty lists when `results` has no per-class metric.
    """
    metrics = [m for m in results if isinstance(results[m], dict) and "per_class" in results[m]]
    if not metrics:
        return [], []
    classes = list(results[metrics[0]]["per_class"])
    num_gt = next((results[m]["num_gt"] for m in metrics if "num_gt" in results[m]), None)
    headers = ["class"] + (["gt"] if num_gt else []) + [f"{m} AP" for m in metrics]
    rows = []
    for name in classes:
        row = [name] + ([str(num_gt.get(name, ""))] if num_gt else [])
        rows.append(row + [_cell(results[m]["per_class"].get(name)) for m in metrics])
    means = [_cell(results[m]["map"] if "map" in results[m] else results[m].get("AP")) for m in metrics]
    rows.append(["mean"] + ([str(sum(num_gt.values()))] if num_gt else []) + means)
    return headers, rows


def coco_lines(results: dict[str, Any]) -> list[str]:
    """COCO's 12 numbers on two lines (empty when there is no COCO result)."""
    if "coco" not in results or "stats" not in results["coco"]:
        return []
    stats = results["coco"]["stats"]
    return ["COCO: " + "  ".join(f"{k} {v:.4f}" for k, v in zip(STAT_NAMES[:6], stats[:6])),
            "      " + "  ".join(f"{k} {v:.4f}" for k, v in zip(STAT_NAMES[6:], stats[6:]))]


def format_table(results: dict[str, Any]) -> str:
    """The `evaluate_detections` result as text: per-class AP (and GT counts), the means, then COCO's 12 numbers.

    nan (a class without ground truth) prints as `-`.
    """
    headers, rows = table_rows(results)
    if not headers:
        return "(no results)"
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    coco = coco_lines(results)
    if coco:
        out += [""] + coco
    return "\n".join(out)
