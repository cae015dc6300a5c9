"""The commands that need no model start without importing torch (about 3 s saved each on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_voc

PROBE = """
import sys
from boxforge.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = {"a": [("cat", 5, 6, 30, 40)], "b": [("dog", 1, 1, 60, 40)]}
    return make_voc(tmp_path_factory.mktemp("startup") / "voc", items, splits={"train": ["a"], "test": ["b"]})


def _darknet_log(path: Path) -> Path:
    lines = [f" {i}: {3.0 - i * 0.01:.4f}, {3.1 - i * 0.01:.4f} avg loss, 0.001000 rate, 0.5 seconds, {i * 64} images"
             for i in range(1, 40)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", ["help", "check", "convert", "synth", "plot-darknet", "pack-help"])
def test_commands_without_a_model_do_not_import_torch(voc: Path, tmp_path: Path, command: str) -> None:
    argv = {"help": ["--help"], "check": ["check", str(voc)], "convert": ["convert", str(voc), str(tmp_path / "c"),
                                                                          "--to", "yolo"],
            "synth": ["synth", str(tmp_path / "s"), "--images", "4"],
            "plot-darknet": ["plot", str(_darknet_log(tmp_path / "train.txt")), "--out", str(tmp_path / "p")],
            "pack-help": ["pack", "--help"]}[command]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.split()[1] in ("0", "None"), proc.stdout + proc.stderr
    assert last.startswith("NO-TORCH"), f"{command} imported torch"


def test_a_reader_that_goes_away_ends_the_command_quietly(voc: Path) -> None:
    """`boxforge check DATA | head -1`: once the reader has closed the pipe, the command ends with SIGPIPE's
    status (141) and no traceback, as Unix tools do, instead of 'BrokenPipeError' on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "boxforge", "check", str(voc)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
