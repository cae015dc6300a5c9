"""How many intra-op threads a training process takes: its share of the cores, less those busy elsewhere.

Why (bench/thread_split.py, 2 cores, batch 8, medians of 2 runs): on idle cores the training
process trains fastest with every core, even beside 2 data workers, which mostly sleep on a full
prefetch queue (ssdlite320 17.2 img/s at 2 threads vs 12.4 at 1; yolo_csp 24.1 vs 18.7). When
another process keeps a core busy, the thread that shares that core is the slowest of every
parallel region and the others wait for it: 2 threads then trained at about half the 1-thread
speed (ssdlite320 6.1 vs 11.7, yolo_csp 9.0 vs 17.7). So the default counts the cores other
processes keep busy when the run starts, over a short window, and leaves them out.

Thread counts change float summation order, so a resumed run keeps the count its checkpoint
was trained with (engine/fit.py), whatever the load at resume time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from boxforge.config import TrainConfig
from boxforge.engine.distributed import DistInfo

PROBE_SECONDS = 0.3


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity), or all of them where that is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cpu_times(path: Path) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat; idle and iowait count as not busy."""
    out = {}
    for line in path.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(x) for x in fields[:8]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def busy_cores(cpus: Iterable[int], seconds: float = PROBE_SECONDS, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of `cpus` other processes keep busy, measured over `seconds` while this process sleeps.

    None where /proc/stat cannot be read (not Linux): the caller then assumes idle cores.
    """
    try:
        before = _cpu_times(stat)
        time.sleep(seconds)
        after = _cpu_times(stat)
    except (OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            busy += (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1])
    return busy


def set_threads(cfg: TrainConfig, info: DistInfo, device: torch.device,
                probe: Callable[[Iterable[int]], float | None] = busy_cores) -> str | None:
    """Sets torch's intra-op threads for this run; returns a line saying why when the load lowered them.

    --threads N wins. Otherwise the cores split between local ranks; on CPU a single process
    leaves out the cores other processes keep busy (rounded; a light background load does not
    count). Under torchrun the other ranks, busy starting up, would read as load, so ranks take
    their share. On CUDA the training process only feeds the GPU and the data workers get the
    cores first.
    """
    note = None
    if cfg.threads:
        threads = cfg.threads
    else:
        cpus = usable_cpus()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size if info.enabled else 1))
        share = max(1, len(cpus) // max(local, 1))
        if device.type != "cpu":
            threads = max(1, share - cfg.workers)
        elif local > 1:
            threads = share
        else:
            busy = probe(cpus) or 0.0
            threads = max(1, share - round(busy))
            if threads < share:
                note = (f"threads {threads} of {share}: other processes kept {busy:.1f} of the {len(cpus)} cores "
                        f"busy as the run started (--threads {share} to use them all anyway)")
    torch.set_num_threads(threads)
    return note


def keep_checkpoint_threads(cfg: TrainConfig, trained_with: object) -> str | None:
    """On resume without --threads: the thread count the checkpoint was trained with, for a bit-identical run.

    Returns a line to log when that changed the count; a count above this machine's cores is
    not kept (the run continues, no longer bit-identical, and the line says so).
    """
    if cfg.threads or not isinstance(trained_with, int) or trained_with < 1 or trained_with == torch.get_num_threads():
        return None
    if trained_with > len(usable_cpus()):
        return (f"threads {torch.get_num_threads()}: the checkpoint was trained with {trained_with}, more than "
                f"this machine's {len(usable_cpus())} cores, so the resumed run will not be bit-identical")
    torch.set_num_threads(trained_with)
    return f"threads {trained_with}, as the checkpoint was trained (thread counts change float rounding)"
