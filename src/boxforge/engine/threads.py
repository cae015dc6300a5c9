"""How many intra-op threads a training process takes: its share of the cores, whatever the load.

Thread counts change float summation order, and so the weights: measured, a seeded 12-step ssd_tiny
run ended 0.063 apart (largest weight difference) at 1 and 2 threads. A count chosen from the load
at start would make the same command with the same seed give different models on a busy machine,
so by default the count depends only on the machine (its cores, less none) and the local ranks.
A resumed run keeps the count its checkpoint was trained with (`keep_checkpoint_threads`, from engine/setup.py).

Why adapting to load is still offered (bench/thread_split.py, 2 cores, batch 8): on idle cores every
core trains fastest, even beside 2 data workers, which mostly sleep on a full prefetch queue; when
another process keeps a core busy, the thread that shares that core holds up every parallel region,
and 2 threads trained at about half the 1-thread speed. `--threads auto` leaves out the cores other
processes keep busy as the run starts (a 0.3 s look at /proc/stat), and gives up bit-identity for it.
By default that look still runs, only to say in the log that the load is there and which flag adapts.
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
    """Sets torch's intra-op threads for this run; returns a line for the log when load was seen.

    --threads N wins. Otherwise the cores split between local ranks (on CUDA the data workers get them
    first, since the training process only feeds the GPU). --threads auto, on CPU and a single process,
    also leaves out the cores other processes keep busy (rounded: a light load does not count); by
    default that load is only reported, so the seeded run stays bit-identical. Under torchrun the other
    ranks, busy starting up, would read as load, so no probe is made there.
    """
    note = None
    if isinstance(cfg.threads, int) and not isinstance(cfg.threads, bool):
        threads = cfg.threads
    else:
        cpus = usable_cpus()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size if info.enabled else 1))
        share = max(1, len(cpus) // max(local, 1))
        threads = max(1, share - cfg.workers) if device.type != "cpu" else share
        if device.type == "cpu" and local <= 1:
            busy = probe(cpus) or 0.0
            adapted = max(1, share - round(busy))
            seen = f"other processes kept {busy:.1f} of the {len(cpus)} cores busy as the run started"
            if cfg.threads == "auto":
                threads = adapted
                if adapted < share:
                    note = (f"threads {adapted} of {share} (--threads auto): {seen}; not bit-identical to a run "
                            f"started on idle cores (--threads {share} for that)")
            elif adapted < share:
                note = (f"threads {share}: {seen}; keeping {share} so that this seeded run repeats exactly "
                        f"(--threads auto would take {adapted}: faster under this load, not bit-identical)")
    torch.set_num_threads(threads)
    return note


def keep_checkpoint_threads(cfg: TrainConfig, trained_with: object) -> str | None:
    """On resume without --threads: the thread count the checkpoint was trained with, for a bit-identical run.

    Returns a line to log when that changed the count; a count above this machine's cores is
    not kept (the run continues, no longer bit-identical, and the line says so).
    """
    if cfg.threads is not None or not isinstance(trained_with, int) or trained_with < 1 or trained_with == torch.get_num_threads():
        return None
    if trained_with > len(usable_cpus()):
        return (f"threads {torch.get_num_threads()}: the checkpoint was trained with {trained_with}, more than "
                f"this machine's {len(usable_cpus())} cores, so the resumed run will not be bit-identical")
    torch.set_num_threads(trained_with)
    return f"threads {trained_with}, as the checkpoint was trained (thread counts change float rounding)"
