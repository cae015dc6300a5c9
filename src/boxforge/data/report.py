"""The readable summary `boxforge check` prints: counts, class histogram, box sizes, problems by kind."""

from __future__ import annotations

from collections import defaultdict

from boxforge.data.check import CheckReport
from boxforge.data.problems import KINDS, Problem

SHOW_PER_KIND = 5


def format_report(report: CheckReport, source: str = "") -> str:
    lines = [f"dataset {source} ({report.format})" if source else f"dataset ({report.format})",
             f"  images {report.images}   objects {report.objects}   classes {len(report.classes)}   "
             f"difficult {report.difficult}"]
    if report.classes:
        width = max(len(n) for n in report.classes)
        top = max(report.classes.values()) or 1
        lines.append("  class histogram:")
        for name, count in report.classes.items():
            bar = "#" * max(1 if count else 0, round(30 * count / top))
            lines.append(f"    {name:<{width}} {count:>7}  {bar}")
    if report.box_sizes:
        b = report.box_sizes
        rel = f", median {b['relative_median']:.1%} of the image side" if "relative_median" in b else ""
        lines.append(f"  box size (sqrt area, px): min {b['side_min']:.1f}  median {b['side_median']:.1f}  "
                     f"max {b['side_max']:.1f}{rel}")
    if report.splits:
        sp = report.splits
        lines.append(f"  splits: training {sp.get('train') or '(every image)'}, validation {sp.get('val') or '(none)'}, "
                     f"eval {sp.get('eval') or '(every image)'}")
    lines += _problem_lines(report.problems)
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "OK: ready to train" if n_err == 0 else "NOT READY: fix the errors above (or quarantine them with --fix)"
    lines.append(f"{n_err} errors, {n_warn} warnings. {verdict}")
    return printable("\n".join(lines))


def printable(text: str) -> str:
    """`text` safe for any stdout: bytes of a non-UTF-8 file name (surrogate escapes) shown as `\\xff`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _problem_lines(problems: list[Problem]) -> list[str]:
    if not problems:
        return ["  no problems found"]
    grouped: dict[tuple[str, str], list[Problem]] = defaultdict(list)
    for p in problems:
        grouped[(p.severity, p.kind)].append(p)
    order = sorted(grouped, key=lambda k: (k[0] != "error", KINDS.index(k[1])))
    lines = ["  problems:"]
    for severity, kind in order:
        items = grouped[(severity, kind)]
        lines.append(f"    {severity:<7} {kind:<20} {len(items):>6}")
        for p in items[:SHOW_PER_KIND]:
            lines.append(f"      {p.where()}: {p.detail}")
        if len(items) > SHOW_PER_KIND:
            lines.append(f"      ... and {len(items) - SHOW_PER_KIND} more (see --json)")
    return lines
