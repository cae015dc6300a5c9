"""Exact resume: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from boxforge.checkpoint import load_checkpoint
from tests.engine.conftest import run_cli, train_args

pytestmark = pytest.mark.slow

# 19 training images, batch 2: 9 batches an epoch; saves every 3 steps land mid-epoch.
ITERS = ["--iterations", "16", "--batch-size", "2", "--save-every", "3", "--val-every", "100"]


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _kill_after(args: list[str], run: Path, step: int, timeout: float = 240) -> None:
    """Start training, SIGKILL it once `step` steps are logged (somewhere mid-epoch)."""
    proc = subprocess.Popen([sys.executable, "-m", "boxforge", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while _steps_logged(run) < step:
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "training did not reach the kill point in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(synth_set, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("ref") / "run"
    out = run_cli(train_args(synth_set, run, *ITERS))
    assert out.returncode == 0, out.stderr
    return load_checkpoint(run / "last.pt")


@pytest.mark.parametrize("kill_at", [5, 13])
def test_sigkill_then_resume_auto_gives_identical_weights(synth_set, tmp_path, reference, kill_at):
    run = tmp_path / "run"
    args = train_args(synth_set, run, *ITERS)
    _kill_after(args, run, kill_at)
    partial = load_checkpoint(run / "last.pt")
    assert 0 < partial["global_step"] < 16 and partial["iteration"] > 0  # interrupted mid-epoch
    out = run_cli(args + ["--resume", "auto"])
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stdout
    final = load_checkpoint(run / "last.pt")
    assert final["global_step"] == reference["global_step"] == 16
    for key, ref in reference["model"].items():
        assert torch.equal(final["model"][key], ref), f"{key}: max abs diff {(final['model'][key] - ref).abs().max()}"


def test_resume_skips_a_corrupt_last_checkpoint(synth_set, tmp_path):
    run = tmp_path / "run"
    args = train_args(synth_set, run, "--iterations", "6", "--snapshot-every", "2", "--val-every", "100")
    assert run_cli(args).returncode == 0
    (run / "last.pt").write_bytes(b"\0" * 100)
    out = run_cli(train_args(synth_set, run, "--iterations", "8", "--snapshot-every", "2", "--val-every", "100",
                             "--resume", "auto"))
    assert out.returncode == 0, out.stderr
    assert "skipping" in out.stdout and "step-6.pt" in out.stdout
    assert load_checkpoint(run / "last.pt")["global_step"] == 8


def test_ctrl_c_saves_last_checkpoint(synth_set, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "boxforge", *train_args(synth_set, run, "--iterations", "400")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _steps_logged(run) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    saved = load_checkpoint(run / "last.pt")
    assert saved["global_step"] >= 3
