"""Training's progress: a bar per epoch on a terminal, the `--log-every` lines of before anywhere else."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import boxforge
from boxforge.engine.logging import MetricsLog
from boxforge.progress import ENV
from tests.terminal import Terminal

SMALL = {"model": "ssd_tiny", "img_size": 96, "batch_size": 4, "threads": 1, "seed": 7, "log_every": 2, "report": False}


def test_off_a_terminal_the_log_prints_exactly_its_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    stream = io.StringIO()
    log = MetricsLog(tmp_path, stream=stream)
    with log.epoch(3, total=4, done=1):
        for iteration in (2, 3, 4):
            log.step(epoch=3, iteration=iteration, iters_per_epoch=4, step=iteration, losses={"classification": 1.0,
                     "bbox_regression": 0.5}, lr=0.015, images_seen=8 * iteration, img_per_s=18.34, eta_s=252.0,
                     device=torch.device("cpu"), log_line=iteration % 2 == 0)
            if iteration == 3:
                log.print("warning: something to say mid-epoch")
    log.print("validation epoch 4: map 0.5000")
    log.close()
    line = r"epoch 3 iter {}/4 loss 1\.500 \(avg 1\.500\) cls 1\.000 box 0\.500 lr 0\.0150 18\.3 img/s eta 0:04:12 mem \d+\.\dG"
    lines = stream.getvalue().split("\n")
    assert len(lines) == 5 and lines[-1] == "" and "\r" not in stream.getvalue(), lines
    assert re.fullmatch(line.format(2), lines[0]) and re.fullmatch(line.format(4), lines[2]), lines
    assert lines[1] == "warning: something to say mid-epoch" and lines[3] == "validation epoch 4: map 0.5000"
    rows = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows] == [2, 3, 4]  # every step recorded, logged to the console or not


def test_training_on_a_terminal_shows_a_bar_per_epoch(synth_set: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch of 4 batches (19 training images, batch 4, the last partial batch dropped), then validation: the bar reaches 100% with the
    loss beside it, the validation line follows, and no plain `epoch 0 iter` line is printed."""
    monkeypatch.delenv(ENV, raising=False)
    term = Terminal(columns=120)
    monkeypatch.setattr(sys, "stdout", term.open_writer())
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), epochs=1, **SMALL)
    monkeypatch.undo()
    shown = term.close()
    assert result.epochs_done == 1
    assert re.search(r"\r(?!\n)", shown) and "epoch 0: 100%|" in shown and "4/4 [" in shown, repr(shown)
    assert "batch/s" not in shown and "loss=" in shown and "img/s=" in shown and "run eta=" in shown, repr(shown)
    assert "\nvalidation epoch 1: " in shown and "epoch 0 iter" not in shown, repr(shown)
    rows = [json.loads(row) for row in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows if row["type"] == "train"] == [1, 2, 3, 4]
