"""`train --tensorboard`: the scalars of metrics.jsonl, read back from the event file; a clear one-line error
at start when the optional package is missing; the extra declared in pyproject.toml."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from boxforge.cli import main
from boxforge.engine.logging import TENSORBOARD_MISSING
from tests.engine.conftest import train_args
from tests.plots.conftest import HAVE_TENSORBOARD, Run

REPO = Path(__file__).resolve().parents[2]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="the tensorboard package is not importable "
                    "(pip install 'boxforge[tensorboard]')")
def test_tensorboard_holds_every_scalar_of_metrics_jsonl(trained_run: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((trained_run.dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected: dict[str, dict[int, float]] = {}
    for rec in records(trained_run.dir):
        for key, value in rec.items():
            if key not in ("type", "step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{rec['type']}/{key}", {})[rec["step"]] = float(value)
    assert {"train/loss", "train/lr", "train/loss_classification", "train/loss_bbox_regression", "val/voc12_map",
            "val/voc07_map", "val/coco_AP", "val/coco_AP50"} <= set(expected)
    assert tags == set(expected)
    for tag, by_step in expected.items():
        logged = {e.step: e.value for e in acc.Scalars(tag)}
        assert set(logged) == set(by_step), tag
        for step, value in by_step.items():
            assert math.isclose(logged[step], value, rel_tol=1e-6, abs_tol=1e-7), (tag, step)  # float32 in events
    assert len(expected["val/voc12_map"]) == 4  # one validation per epoch, 4 epochs of 4 steps


def test_missing_tensorboard_fails_at_start_with_one_line(trained_run: Run, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    out = tmp_path / "run"
    assert main(train_args(trained_run.data, out, "--iterations", "2", "--tensorboard")) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"boxforge train: error: {TENSORBOARD_MISSING}"]
    assert "pip install 'boxforge[tensorboard]'" in TENSORBOARD_MISSING
    assert not out.exists(), "the run started before the missing package was noticed"


def test_tensorboard_is_an_extra_and_part_of_dev() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("tensorboard") for req in extras["tensorboard"])
    assert any(req.startswith("tensorboard") for req in extras["dev"])
