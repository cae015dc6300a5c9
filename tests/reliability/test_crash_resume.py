"""Crashes lose nothing: a run SIGKILLed mid-epoch, right after a checkpoint, or while a checkpoint is being
written, then resumed with `--resume auto`, ends with bit-identical weights to an uninterrupted run (CPU,
fixed seed), for the tiny SGD model and for the default recipe (yolo_csp: AdamW, EMA, bf16 autocast where the
CPU has it, channels-last) with data workers and mosaic. Ctrl-C saves first. (Moved here from
tests/engine/test_resume.py and extended.)
"""

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
from boxforge.config import fast_autocast
from tests.reliability.conftest import (descendants, run_cli, start_training, steps_logged, train_args,
                                        wait_for_steps, wait_gone)

pytestmark = pytest.mark.slow

# 19 training images, batch 2: 9 batches an epoch; saves every 3 steps land mid-epoch. The run saves
# last.pt at steps 3, 6, 9 (the end of epoch 0), 12, 15 and 16 (the end of the budget).
ITERS = ["--iterations", "16", "--batch-size", "2", "--save-every", "3", "--val-every", "100"]
EPOCH_END_SAVE = 3  # the third save: step 9, epoch 1 iteration 0
# The default recipe at a small size, with the parts the tiny runs above leave out: 2 forkserver workers and
# mosaic (per-sample seeds), AdamW, EMA, bf16 autocast (where the CPU has it natively), channels-last.
# --threads is explicit in both runs (train_args gives 1 again here), so no load-based policy can differ.
DEFAULT_RECIPE = ["--model", "yolo_csp", "--img-size", "64", "--workers", "2", "--mosaic", "0.5", "--threads", "1"]


def _kill_after(args: list[str], run: Path, step: int, timeout: float = 240) -> None:
    """Start training, SIGKILL it once `step` steps are logged (somewhere mid-epoch); its data loader workers,
    their forkserver and resource tracker must end by themselves within a few seconds."""
    proc = start_training(args, stdout=subprocess.DEVNULL)
    try:
        wait_for_steps(proc, run, step, timeout)
        family = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.stderr.close()  # read only if it ended early (wait_for_steps); left open, it warns when collected
    left = wait_gone(family, timeout=10)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"the killed run left processes behind: {left}"


def _killed_by_hook(args: list[str], hooks: dict[str, str]) -> None:
    proc = start_training(args, hooks=hooks, stdout=subprocess.DEVNULL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"status {proc.returncode}, the hook did not fire: {err}"


def _resume_and_compare(args: list[str], run: Path, reference: dict, expect_from: tuple[int, int, int],
                        parts: tuple[str, ...] = ("model",)) -> dict:
    """Resume; it must start from the checkpoint at (epoch, iteration, step) and end with every tensor of
    `parts` ("model", "ema") equal to `reference`'s; returns the final checkpoint."""
    out = run_cli(args + ["--resume", "auto"])
    assert out.returncode == 0, out.stderr
    epoch, iteration, _ = expect_from
    assert f"last.pt (epoch {epoch}, iteration {iteration})" in out.stdout, out.stdout
    final = load_checkpoint(run / "last.pt")
    assert final["global_step"] == reference["global_step"] == 16
    for part in parts:
        assert final[part].keys() == reference[part].keys(), part
        for key, ref in reference[part].items():
            got = final[part][key]
            assert torch.equal(got, ref), f"{part} {key}: max abs diff {(got.double() - ref.double()).abs().max()}"
    assert not list(run.glob(".*.tmp-*")), "a torn temp file was left behind"
    return final


@pytest.fixture(scope="module")
def reference(synth_set, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("ref") / "run"
    out = run_cli(train_args(synth_set, run, *ITERS))
    assert out.returncode == 0, out.stderr
    return load_checkpoint(run / "last.pt")


@pytest.mark.parametrize("kill_at", [5, 13])
def test_sigkill_mid_epoch_then_resume_auto_gives_identical_weights(synth_set, tmp_path, reference, kill_at):
    run = tmp_path / "run"
    args = train_args(synth_set, run, *ITERS)
    _kill_after(args, run, kill_at)
    partial = load_checkpoint(run / "last.pt")
    assert 0 < partial["global_step"] < 16 and partial["iteration"] > 0  # interrupted mid-epoch
    _resume_and_compare(args, run, reference, (partial["epoch"], partial["iteration"], partial["global_step"]))


def test_default_recipe_with_workers_and_mosaic_sigkilled_mid_epoch_resumes_bit_identically(synth_set, tmp_path):
    reference_run = tmp_path / "reference"
    out = run_cli(train_args(synth_set, reference_run, *ITERS, *DEFAULT_RECIPE))
    assert out.returncode == 0, out.stderr
    reference = load_checkpoint(reference_run / "last.pt")
    saved = reference["config"]  # the recipe really is the default one (config.MODEL_DEFAULTS)
    assert (saved["optimizer"], saved["ema"], saved["amp"], saved["channels_last"]) == ("adamw", True,
                                                                                       fast_autocast(), True)
    assert (saved["workers"], saved["mosaic"], saved["threads"]) == (2, 0.5, 1)
    run = tmp_path / "run"
    args = train_args(synth_set, run, *ITERS, *DEFAULT_RECIPE)
    _kill_after(args, run, 5)
    partial = load_checkpoint(run / "last.pt")
    assert 0 < partial["global_step"] < 16 and 0 < partial["iteration"] < 9  # interrupted mid-epoch
    final = _resume_and_compare(args, run, reference, (partial["epoch"], partial["iteration"], partial["global_step"]),
                                parts=("model", "ema"))
    for part in ("model", "ema"):  # the resumed steps changed both, so equality is not that of untouched tensors
        assert any(not torch.equal(final[part][k], partial[part][k]) for k in final[part]
                   if final[part][k].is_floating_point()), part


def test_sigkill_right_after_a_checkpoint_then_resume_gives_identical_weights(synth_set, tmp_path, reference):
    run = tmp_path / "run"
    args = train_args(synth_set, run, *ITERS)
    _killed_by_hook(args, {"BOXFORGE_TEST_KILL_AFTER_SAVE": str(EPOCH_END_SAVE)})
    saved = load_checkpoint(run / "last.pt")
    assert (saved["epoch"], saved["iteration"], saved["global_step"]) == (1, 0, 9)
    assert steps_logged(run) == 9  # killed before another step ran
    _resume_and_compare(args, run, reference, (1, 0, 9))


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(synth_set, tmp_path, reference):
    run = tmp_path / "run"
    args = train_args(synth_set, run, *ITERS)
    _killed_by_hook(args, {"BOXFORGE_TEST_KILL_IN_SAVE": str(EPOCH_END_SAVE)})
    torn = list(run.glob(".last.pt.tmp-*"))
    assert len(torn) == 1 and torn[0].stat().st_size < (run / "last.pt").stat().st_size  # the write was torn
    saved = load_checkpoint(run / "last.pt")  # still the previous save, intact
    assert (saved["epoch"], saved["iteration"], saved["global_step"]) == (0, 6, 6)
    _resume_and_compare(args, run, reference, (0, 6, 6))


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


def _steps_and_positions(run: Path) -> list[tuple[int, int, int]]:
    """(step, epoch, iteration) of every training step row in RUN/metrics.jsonl, in order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["epoch"], r["iter"]) for r in rows if r.get("type") == "train"]


def test_ctrl_c_saves_last_checkpoint(synth_set, tmp_path):
    """The interrupt's own save, not an epoch-end one: batch 1 gives 19 iterations an epoch, and the run is
    interrupted after a few, so the only save that can exist is the one Ctrl-C makes, at the last logged step."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "boxforge",
                             *train_args(synth_set, run, "--iterations", "400", "--batch-size", "1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while steps_logged(run) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: saving last.pt before exiting" in out, out
    saved = load_checkpoint(run / "last.pt")
    step, epoch, iteration = _steps_and_positions(run)[-1]  # nothing is logged after the interrupt
    assert saved["global_step"] == step >= 3
    assert (saved["epoch"], saved["iteration"]) == (epoch, iteration) == (0, step)
    assert 0 < saved["iteration"] < 19  # mid-epoch: no epoch-end save has happened
