"""Shared bits of the benchmark scripts: machine facts, repeat-and-median timing, JSON + table output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import numpy
    import torch

    facts = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
             "threads": torch.get_num_threads(), "load_avg_1m_at_write": round(os.getloadavg()[0], 2)}
    if os.environ.get("BENCH_NOTE"):  # e.g. "2 cores shared with other jobs during this run"
        facts["note"] = os.environ["BENCH_NOTE"]
    return facts


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def timed(fn: Callable[[], Any], repeats: int = 3) -> dict[str, float]:
    """Median and spread (min, max) of wall seconds over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def write(name: str, doc: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), **doc}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"== {name}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print(f"  (written to {RESULTS / f'{name}.json'})")
