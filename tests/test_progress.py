"""boxforge/progress.py: a tqdm bar on a terminal, the plain lines of before on a pipe, BOXFORGE_PROGRESS over both.

The terminal cases write to a real pseudo-terminal (tests/terminal.py); the pipe cases to a real pipe.
No torch here: each subprocess starts in well under a second.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from boxforge.cli import main
from boxforge.progress import ENV, progress
from tests.conftest import make_voc
from tests.terminal import Terminal

# 20 images in 4 updates with a loss beside the bar, a log line in the middle; argv[1]: `every` ("none": default)
SCRIPT = """
import sys, time
from boxforge.progress import progress
every = {} if sys.argv[1] == "none" else {"every": float(sys.argv[1])}
with progress(20, label="work", unit="images", **every) as shown:
    for i in range(4):
        time.sleep(0.15)
        shown.update(5, loss="1.234")
        if i == 1:
            shown.write("a log line")
print("after", file=sys.stderr)
"""
BARE_CR = re.compile(r"\r(?!\n)")  # a carriage return that redraws a line, not one ending it


def _run(to_terminal: bool, every: str = "none", setting: str | None = None, size: tuple[int, int] = (100, 24)) -> str:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if setting is not None:
        env[ENV] = setting
    command = [sys.executable, "-c", SCRIPT, every]
    if not to_terminal:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
        assert done.returncode == 0, done.stdout
        return done.stdout.decode()  # bytes: text mode would turn a "\r" into "\n"
    term = Terminal(*size)
    proc = subprocess.Popen(command, stdout=term.fd, stderr=term.fd, env=env)
    assert proc.wait(timeout=60) == 0
    return term.close()


def test_a_terminal_sees_a_tqdm_bar_with_the_log_line_above_it() -> None:
    out = _run(to_terminal=True)
    assert BARE_CR.search(out), repr(out)
    assert "work: 100%|" in out and "20/20" in out and "img/s" in out and "loss=1.234" in out, repr(out)
    assert "\ra log line\n" in out  # the bar is cleared, the line printed, the bar redrawn below it
    assert "20/20 images" not in out  # no plain line beside the bar
    assert out.endswith("after\n")


def test_a_terminal_that_reports_no_size_still_gets_a_bar() -> None:
    out = _run(to_terminal=True, size=(0, 0))  # as some containers' ttys: tqdm alone would draw nothing
    assert BARE_CR.search(out) and "work: 100%|" in out and "img/s" in out, repr(out)


def test_a_pipe_sees_plain_lines_and_no_bar() -> None:
    out = _run(to_terminal=False, every="0")
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[-1] == "after" and "a log line" in lines
    plain = [line for line in lines if line.startswith("work: ")]
    assert [line.split(",")[0] for line in plain] == [f"work: {n}/20 images" for n in (5, 10, 15, 20)], out
    assert all(re.fullmatch(r"work: \d+/20 images, \d+\.\d img/s", line) for line in plain), out


def test_a_short_run_on_a_pipe_prints_only_its_own_lines() -> None:
    assert _run(to_terminal=False) == "a log line\nafter\n"


@pytest.mark.parametrize("setting, to_terminal, bar", [("lines", True, False), ("bar", False, True),
                                                       ("off", True, False), ("", True, True)])
def test_the_setting_overrides_what_the_stream_suggests(setting: str, to_terminal: bool, bar: bool) -> None:
    out = _run(to_terminal=to_terminal, every="0", setting=setting)
    assert bool(BARE_CR.search(out)) is bar and ("100%|" in out) is bar, repr(out)
    assert "a log line" in out and "after" in out
    if setting == "off":
        assert out == "a log line\nafter\n"
    if setting == "lines":
        assert "work: 20/20 images, " in out


def test_an_unknown_setting_is_one_line_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    voc = make_voc(tmp_path / "voc", {"a": [("cat", 5, 6, 30, 40)]})
    monkeypatch.setenv(ENV, "sideways")
    assert main(["check", str(voc)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"boxforge check: error: {ENV}='sideways': allowed bar, lines, off "
                            "(or unset: a bar on a terminal, plain lines otherwise)\n")


def _lines(total: int, batch: int, **options: object) -> list[str]:
    stream = io.StringIO()
    with progress(total, label="eval", stream=stream, **options) as shown:
        for start in range(0, total, batch):
            shown.update(min(batch, total - start))
    return stream.getvalue().splitlines()


def test_the_plain_line_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval/predict's `minimum`: from 50 images a closing line however quick, below it none; without a
    minimum a quick run says nothing; `every` seconds apart lines come (every=0: at each update)."""
    monkeypatch.delenv(ENV, raising=False)
    closing = _lines(60, 8, minimum=50)
    assert len(closing) == 1 and re.fullmatch(r"eval: 60/60 images, \d+\.\d img/s", closing[0]), closing
    assert _lines(49, 8, minimum=50) == [] and _lines(49, 8, minimum=50, every=0) == []
    assert _lines(500, 10) == []
    assert [line.split(",")[0] for line in _lines(30, 10, every=0)] == [f"eval: {n}/30 images" for n in (10, 20, 30)]
    assert _lines(0, 1, every=0) == []  # nothing to do: nothing shown


def test_check_on_a_terminal_shows_a_bar_and_on_a_pipe_what_it_always_said(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", {f"i{n}": [("cat", 5, 6, 30, 40)] for n in range(5)})
    env = {k: v for k, v in os.environ.items() if k != ENV}
    command = [sys.executable, "-m", "boxforge", "check", str(voc)]
    term = Terminal()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=term.fd, env=env)
    assert proc.wait(timeout=120) == 0
    shown = term.close()
    assert BARE_CR.search(shown) and "check: 100%|" in shown and "5/5" in shown and "img/s" in shown, repr(shown)
    piped = subprocess.run(command, capture_output=True, env=env, timeout=120)  # bytes: every "\r" kept
    assert piped.returncode == 0 and piped.stderr == b"" and b"\r" not in piped.stdout, piped.stderr
