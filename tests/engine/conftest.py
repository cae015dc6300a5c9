"""Small runs for engine tests: a synthetic set, the tiny model at 96 px, one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from boxforge.data.synth import synthesize_detection


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine") / "synth"
    synthesize_detection(root, images=24, classes=2, seed=3, image_size=(160, 120))
    return root


def train_args(data: Path, out: Path, *extra: str, report: bool = False) -> list[str]:
    """`boxforge train` of the tiny model on DATA. No report.html unless `report`: drawing it costs a tiny run
    about 2.5 s (matplotlib, and the checkpoint evaluated again), and tests/plots checks it on its own run."""
    return ["train", "--data", str(data), "--out", str(out), "--model", "ssd_tiny", "--img-size", "96", "--batch-size", "4",
            "--threads", "1", "--log-every", "1", "--seed", "7", *([] if report else ["--no-report"]), *extra]


def run_cli(args: list[str], timeout: float = 300, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "boxforge", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def descendants(pid: int) -> list[int]:
    """All live descendant pids of `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
