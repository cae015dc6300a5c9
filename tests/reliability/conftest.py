"""Helpers for the reliability suite: the engine tests' small runs, plus process and file-system probes.

The training helpers (`synth_set`, `train_args`, `run_cli`, `descendants`) are the engine tests' own,
imported so both suites train the same tiny model on the same synthetic set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.engine.conftest import descendants, run_cli, synth_set, train_args  # noqa: F401  (fixture re-export)

HOOKS = Path(__file__).resolve().parent / "hooks"


def steps_logged(run: Path) -> int:
    """The highest optimizer step written to RUN/metrics.jsonl so far (0 before the first)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:  # a line being written right now
            continue
    return max(steps, default=0)


def start_training(args: list[str], *, hooks: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """`python -m boxforge ARGS` in the background; `hooks` (env vars) switch on tests/reliability/hooks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if hooks:
        env.update(hooks)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), env.get("PYTHONPATH", "")]))
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "boxforge", *args], text=True, env=env, **popen)


def wait_for_steps(proc: subprocess.Popen, run: Path, n: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while steps_logged(run) < n:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (status {proc.returncode}) before step {n}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"training did not reach step {n} within {timeout} s"
        time.sleep(0.05)


def proc_state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, T, Z, ...), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (zombies, which hold nothing but a table entry, are not counted)."""
    return [p for p in pids if proc_state(p) not in (None, "Z")]


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait up to `timeout` s for `pids` to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def workers_of(pid: int) -> list[int]:
    """Data loader workers: grandchildren (forkserver -> workers) of the training process."""
    kids = set(descendants(pid))
    out = []
    for p in kids:
        try:
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in kids:
            out.append(p)
    return out
