"""One real training run shared by the report, eval-plot and TensorBoard tests (about 15 s on 2 cores).

ssd_tiny at 96 px, 16 steps on the engine tests' synthetic set (19 train / 5 test images, 2 classes),
validated after each of its 4 epochs, through the real CLI: it writes report.html at the end and, when
the tensorboard package is importable, TensorBoard events.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from boxforge.cli import main
from tests.engine.conftest import synth_set, train_args  # noqa: F401 - synth_set is a fixture used here

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@dataclass
class Run:
    dir: Path
    data: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def trained_run(synth_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:  # noqa: F811
    out = tmp_path_factory.mktemp("plots-run") / "run"
    args = train_args(synth_set, out, "--iterations", "16", *(["--tensorboard"] if HAVE_TENSORBOARD else []),
                      report=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    assert code == 0, stderr.getvalue()
    assert (out / "best.pt").is_file(), stdout.getvalue()
    return Run(out, synth_set, stdout.getvalue(), stderr.getvalue())
