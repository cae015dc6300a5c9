"""Distributed: when one of two ranks (gloo, CPU) stalls or dies, the other exits with a clear message
within the stall timeout instead of hanging in a collective.

The stall runs under torchrun, whose agent cannot see a stall: the surviving rank's watchdog is what ends
it. The death is launched without torchrun's agent (the same RANK/WORLD_SIZE/MASTER_* environment it
sets), because the agent would otherwise kill the surviving rank itself and hide whether boxforge copes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxforge.engine.watchdog import EXIT_STALL
from tests.reliability.conftest import alive, descendants, proc_state, train_args, wait_for_steps, wait_gone

pytestmark = pytest.mark.slow

STALL_S = 10
MARGIN = 20  # see test_stalls.py: polling, dumping, and a machine shared with other runs


def _args(synth_set: Path, run: Path) -> list[str]:
    return train_args(synth_set, run, "--iterations", "100000", "--batch-size", "2", "--val-every", "1000",
                      "--stall-timeout", str(STALL_S))


def _rank_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the boxforge processes below `parent` (read from their environment)."""
    ranks = {}
    for pid in descendants(parent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank and b"boxforge" in cmd and b"torch.distributed.run" not in cmd:
            ranks[int(rank[0][5:])] = pid
    return ranks


def _wait_exit(pid: int, timeout: float) -> float:
    """Seconds until `pid` ended (gone or zombie); fails after `timeout`."""
    started = time.monotonic()
    while proc_state(pid) not in (None, "Z"):
        assert time.monotonic() - started < timeout, f"pid {pid} still running after {timeout} s: it hangs"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_stalled_rank_ends_the_other_within_the_timeout(synth_set, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "boxforge", *_args(synth_set, run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_steps(proc, run, 3)
        ranks = _rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        family = descendants(proc.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        elapsed = _wait_exit(ranks[0], STALL_S + MARGIN)
        os.kill(ranks[1], signal.SIGCONT)  # end the injected fault: torchrun's pending SIGTERM now lands
        _, err = proc.communicate(timeout=60)
    finally:
        for pid in alive(descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
    assert STALL_S - 1 < elapsed < STALL_S + MARGIN, elapsed
    assert "boxforge watchdog: no training progress" in err and "stuck in the training step" in err, err
    assert f"exitcode  : {EXIT_STALL}" in err  # torchrun's summary names rank 0's stall exit
    assert list(run.glob("stall-*.txt")), "no stack dump"
    assert not wait_gone(family, 10), "stray processes left"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_rank_ends_the_other_at_once_with_a_clear_message(synth_set, tmp_path):
    run = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "boxforge", *_args(synth_set, run)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        wait_for_steps(procs[0], run, 3)
        family = descendants(procs[0].pid)
        procs[1].kill()
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=STALL_S + MARGIN)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.stdout.close()  # the killed rank's pipes (communicate closed the other's)
            p.stderr.close()
    assert procs[0].returncode in (2, EXIT_STALL), err
    assert elapsed < STALL_S + MARGIN
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    if procs[0].returncode == 2:  # the usual case: the transport error arrives at once
        assert last.startswith("boxforge train: error: rank 0 of 2: a collective operation failed (") and \
            "another rank died or stalled" in last, last
    else:  # a collective that had not started yet waits, and the watchdog ends it
        assert "boxforge watchdog: no training progress" in last, last
    assert not wait_gone(family, 10), "stray processes left"
