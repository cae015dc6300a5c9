"""Nothing hangs silently: a frozen or killed data loader worker ends the run with a message and a stack dump."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxforge.engine.watchdog import EXIT_STALL, Watchdog
from tests.engine.conftest import descendants, train_args

pytestmark = pytest.mark.slow


def _steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(x).get("step", 0) for x in lines if x.strip()), default=0)


def _start(synth_set: Path, run: Path, timeout: str) -> subprocess.Popen:
    args = train_args(synth_set, run, "--iterations", "100000", "--workers", "1", "--stall-timeout", timeout,
                      "--batch-size", "2")
    return subprocess.Popen([sys.executable, "-m", "boxforge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc: subprocess.Popen, run: Path, n: int) -> None:
    deadline = time.monotonic() + 240
    while _steps(run) < n:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _workers(pid: int) -> list[int]:
    """Data loader workers: grandchildren (forkserver -> workers) of the training process."""
    kids = set(descendants(pid))
    return [p for p in kids if Path(f"/proc/{p}/stat").exists()
            and int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) in kids]


def test_sigstopped_worker_ends_the_run_with_a_stack_dump(synth_set, tmp_path):
    run = tmp_path / "run"
    proc = _start(synth_set, run, "6")
    _wait_for_steps(proc, run, 2)
    workers = _workers(proc.pid)
    assert workers, "no data loader worker found"
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - stopped_at
    assert proc.returncode == EXIT_STALL, err
    assert elapsed < 6 + 15, elapsed
    assert "restart with --resume auto" in err
    dumps = list(run.glob("stall-*.txt"))
    assert dumps and "Thread" in dumps[0].read_text()
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and
                Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"], "stray worker left"


def test_killed_worker_is_reported(synth_set, tmp_path):
    run = tmp_path / "run"
    proc = _start(synth_set, run, "60")
    _wait_for_steps(proc, run, 2)
    workers = _workers(proc.pid)
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == EXIT_STALL, err
    # The dead worker is named by pid ("data loader worker 0 (pid P) killed by signal 9", or the loader's own
    # "DataLoader worker (pid(s) P) exited unexpectedly"); rarely the queue breaks before either is visible.
    assert "data loading failed" in err
    assert any(str(pid) in err for pid in workers) or "Connection reset" in err, err


def test_watchdog_fires_in_process(tmp_path):
    """The watchdog thread itself: a loop that stops beating is ended with EXIT_STALL and a dump naming the stage."""
    code = ("import time; from boxforge.engine.watchdog import Watchdog; from pathlib import Path\n"
            f"w = Watchdog(1.0, Path(r'{tmp_path}')).start(); w.beat('waiting for data'); time.sleep(30)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_STALL
    assert "stuck waiting for data" in out.stderr
    assert len(list(tmp_path.glob("stall-*.txt"))) == 1


def test_watchdog_stays_quiet_while_beating():
    w = Watchdog(0.5, None, poll=0.05).start()
    for _ in range(20):
        w.beat("in the training step")
        time.sleep(0.05)
    w.stop()
