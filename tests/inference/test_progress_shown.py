"""`predict` and `eval` progress on stderr: a tqdm bar on a terminal, today's plain lines on a pipe."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from boxforge.cli import main
from boxforge.progress import ENV
from tests.terminal import Terminal


@pytest.fixture
def sixty(synth: Path, tmp_path: Path) -> Path:
    """60 image files (the synthetic set's 12, five times): enough for the plain lines (50 and up)."""
    folder = tmp_path / "sixty"
    folder.mkdir()
    for n, path in enumerate(sorted((synth / "JPEGImages").glob("*.jpg")) * 5):
        shutil.copy(path, folder / f"{n:03d}.jpg")
    return folder


def _on_terminal(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    term = Terminal(columns=120)
    monkeypatch.setattr(sys, "stderr", term.open_writer())
    code = main(args)
    monkeypatch.undo()
    shown = term.close()
    assert code == 0, shown
    return shown


def test_predict_and_eval_on_a_terminal_show_a_bar(untrained_ckpt: Path, synth: Path, sixty: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(ENV, raising=False)
    shown = _on_terminal(["predict", "--weights", str(untrained_ckpt), str(sixty), "--out", str(tmp_path / "p"),
                          "--no-draw", "--batch-size", "16"], monkeypatch)
    assert re.search(r"\r(?!\n)", shown) and "predict: 100%|" in shown and "60/60" in shown, repr(shown)
    assert "img/s" in shown and "60/60 images" not in shown, repr(shown)
    shown = _on_terminal(["eval", "--data", str(synth), "--weights", str(untrained_ckpt), "--split", "train",
                          "--metric", "voc12"], monkeypatch)
    assert "eval: 100%|" in shown and "img/s" in shown, repr(shown)
    assert "voc12 AP" in capsys.readouterr().out  # the results still go to stdout


def test_predict_on_a_pipe_prints_the_plain_line(untrained_ckpt: Path, sixty: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert main(["predict", "--weights", str(untrained_ckpt), str(sixty), "--out", str(tmp_path / "p"), "--no-draw",
                 "--batch-size", "16"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.fullmatch(r"predict: 60/60 images, \d+\.\d img/s", err.splitlines()[-1]), err
