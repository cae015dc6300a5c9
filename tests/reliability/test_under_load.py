"""Under load: a long run keeps its memory flat and its file handles and processes bounded.

A small set trained for many epochs with a persistent data loader worker and periodic validation and
checkpoints; the training process's RSS (/proc/PID/status), open descriptors (/proc/PID/fd) and
descendant processes are sampled throughout. After a warm-up, the last epochs must use no more than the
early ones (within a small allowance for the allocator): a leak per epoch, per checkpoint or per
validation would grow with the epoch count and fail this.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import descendants, start_training, steps_logged, train_args

pytestmark = pytest.mark.slow

EPOCHS = 40
RSS_ALLOWANCE_MB = 40.0  # allocator noise; a leak of even 2 MB an epoch exceeds it over 40 epochs


def _sample(pid: int) -> tuple[float, int, int, int] | None:
    """(RSS MiB, open fds of the process, open fds of its descendants, descendant count), or None if gone."""
    try:
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        kids = descendants(pid)
        kid_fds = 0
        for kid in kids:
            try:
                kid_fds += len(os.listdir(f"/proc/{kid}/fd"))
            except OSError:
                continue
        return rss_kb / 1024, fds, kid_fds, len(kids)
    except (OSError, StopIteration):
        return None


def test_many_epochs_keep_memory_flat_and_handles_bounded(synth_set, tmp_path):
    run = tmp_path / "run"
    args = train_args(synth_set, run, "--epochs", str(EPOCHS), "--img-size", "64", "--workers", "1",
                      "--val-every", "5", "--snapshot-every", "20", "--keep", "2", "--log-every", "50")
    proc = start_training(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[int, tuple[float, int, int, int]]] = []
    while proc.poll() is None:
        sample = _sample(proc.pid)
        if sample is not None:
            samples.append((steps_logged(run), sample))
        time.sleep(0.2)
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    total = steps_logged(run)
    steps_per_epoch = total // EPOCHS
    assert steps_per_epoch >= 1
    early = [s for step, s in samples if 5 * steps_per_epoch <= step < 15 * steps_per_epoch]
    late = [s for step, s in samples if step >= (EPOCHS - 10) * steps_per_epoch]
    assert len(early) >= 5 and len(late) >= 5, (len(early), len(late))

    rss_early, rss_late = statistics.median(s[0] for s in early), statistics.median(s[0] for s in late)
    assert rss_late - rss_early < RSS_ALLOWANCE_MB, f"RSS grew from {rss_early:.0f} to {rss_late:.0f} MiB"
    # Descriptors come and go while a batch or a checkpoint is in flight, so the baseline (median) must not
    # grow, and no moment may hold more than a fixed bound.
    for what, i in (("descriptors of the training process", 1), ("descriptors of its workers", 2),
                    ("child processes", 3)):
        typical_early, typical_late = statistics.median(s[i] for s in early), statistics.median(s[i] for s in late)
        assert typical_late <= typical_early + 1, f"{what}: {typical_early} early, {typical_late} late"
    # The descendants' bound is 24 each for the four allowed below: each holds about 16, and their sum peaks at
    # 54 to 66 while a validation worker starts (measured on 2 cores), so the former 64 failed by chance. A leak
    # would show as growth of the medians above long before it reached this.
    assert max(s[1] for _, s in samples) <= 64 and max(s[2] for _, s in samples) <= 4 * 24
    assert max(s[3] for _, s in samples) <= 4  # resource tracker, forkserver, one worker (+ a validation one)
