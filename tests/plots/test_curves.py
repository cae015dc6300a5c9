"""boxforge runs: metrics.jsonl -> curves PNGs, CSVs, the best checkpoint, resumed runs, step ranges."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from boxforge.cli import main
from boxforge.plots import detect_log, plot_log
from boxforge.plots.common import read_csv, running_mean
from boxforge.plots.curves import best_index, loss_figure, read_metrics, steps_per_epoch, val_figure
from tests.plots._png import assert_png

STEPS_PER_EPOCH = 10
VOC12 = {10: 0.2, 20: 0.5, 30: 0.5, 40: 0.4}  # a tie at 30: fit() keeps the first (saves on ">" only)


def train_row(step: int, scale: float = 1.0) -> dict:
    box, cls = scale / step, 2 * scale / step
    return {"time": 0.0, "type": "train", "step": step, "epoch": (step - 1) // STEPS_PER_EPOCH,
            "iter": (step - 1) % STEPS_PER_EPOCH + 1, "loss": box + cls, "loss_avg": box + cls,
            "loss_bbox_regression": box, "loss_classification": cls, "lr": 0.01 * step / 40,
            "images_seen": 8 * step, "img_per_s": 20.0 + step % 3}


def val_row(step: int) -> dict:
    return {"time": 0.0, "type": "val", "step": step, "epoch": step // STEPS_PER_EPOCH, "voc07_map": VOC12[step] - 0.01,
            "voc12_map": VOC12[step], "coco_AP": None if step == 10 else VOC12[step] / 2, "coco_AP50": VOC12[step],
            "coco_AP75": VOC12[step] / 3, "mean_iou": 0.5 + step / 100}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run killed after step 25 and resumed from its step-20 checkpoint (steps 21-25 replayed)."""
    lines = [json.dumps(train_row(s, scale=99.0 if s > 20 else 1.0)) for s in range(1, 26)]
    lines.insert(10, json.dumps(val_row(10)))
    lines.insert(21, json.dumps(val_row(20)))
    lines.append('{"type": "train", "step": 26, "lo')  # the line being written when it was killed
    lines.append(json.dumps({"type": "note", "text": "resumed"}))
    for s in range(21, 41):
        lines.append(json.dumps(train_row(s)))
        if s in (30, 40):
            lines.append(json.dumps(val_row(s)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_best_index_is_the_highest_finite_and_first_on_ties() -> None:
    assert best_index(np.array([math.nan, 0.2, 0.5, 0.5, 0.4])) == 2
    assert best_index(np.array([math.nan, math.nan])) is None
    assert best_index(np.array([])) is None


def test_read_metrics_replays_resumed_steps_and_counts_bad_lines(run_dir: Path) -> None:
    s = read_metrics(run_dir / "metrics.jsonl")
    np.testing.assert_array_equal(s.train["step"], np.arange(1, 41))
    np.testing.assert_allclose(s.train["loss"], 3.0 / np.arange(1, 41))  # the replayed (scale 99) rows are gone
    np.testing.assert_array_equal(s.val["step"], [10, 20, 30, 40])
    assert math.isnan(s.val["coco_AP"][0])
    assert s.components == ["loss_bbox_regression", "loss_classification"]
    assert dict(s.skipped) == {"replaced": 5, "malformed": 1, "other": 1}
    assert s.best == 1 and s.val["step"][s.best] == 20
    assert steps_per_epoch(s.train) == pytest.approx(STEPS_PER_EPOCH)


def test_plot_run_writes_pngs_and_csvs_of_the_series(run_dir: Path) -> None:
    report = plot_log(run_dir, smooth=5)
    out = run_dir / "plots"
    assert report.kind == "boxforge" and report.out_dir == out
    assert sorted(p.name for p in report.files) == ["loss.png", "lr_throughput.png", "train.csv", "val.csv",
                                                    "validation.png"]
    for name in ("loss.png", "lr_throughput.png", "validation.png"):
        assert_png(out / name)
    train = read_csv(out / "train.csv")
    steps = np.arange(1, 41)
    np.testing.assert_allclose(train["step"], steps)
    np.testing.assert_allclose(train["loss_classification"], 2.0 / steps)
    np.testing.assert_allclose(train["loss_smooth"], running_mean(3.0 / steps, 5))
    np.testing.assert_allclose(train["loss_smooth"][4], np.mean(3.0 / steps[:5]))
    val = read_csv(out / "val.csv")
    np.testing.assert_allclose(val["voc12_map"], [0.2, 0.5, 0.5, 0.4])
    np.testing.assert_array_equal(val["best"], [0, 1, 0, 0])
    assert any("best checkpoint (best.pt): step 20" in n for n in report.notes)


def test_figures_draw_the_series_and_mark_the_best(run_dir: Path) -> None:
    s = read_metrics(run_dir / "metrics.jsonl")
    fig = val_figure(s, "t")
    stars = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert len(stars) == 1
    assert list(stars[0].get_xdata()) == [20] and list(stars[0].get_ydata()) == [0.5]
    voc12 = next(ln for ln in fig.axes[0].lines if ln.get_label() == "voc12_map")
    np.testing.assert_allclose(voc12.get_ydata(), [0.2, 0.5, 0.5, 0.4])
    fig = loss_figure(s, 4, "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == ["total loss", "bbox_regression", "classification"]
    total = fig.axes[0]
    np.testing.assert_allclose(total.lines[0].get_ydata(), 3.0 / np.arange(1, 41))
    np.testing.assert_allclose(total.lines[1].get_ydata(), running_mean(3.0 / np.arange(1, 41), 4))
    best_lines = [ln for ln in total.lines if ln.get_label() == "best.pt"]
    assert len(best_lines) == 1 and list(best_lines[0].get_xdata()) == [20, 20]


def test_step_range(run_dir: Path, tmp_path: Path) -> None:
    report = plot_log(run_dir / "metrics.jsonl", tmp_path / "a", from_step=15, to_step=30)
    train = read_csv(tmp_path / "a" / "train.csv")
    np.testing.assert_array_equal(train["step"], np.arange(15, 31))
    val = read_csv(tmp_path / "a" / "val.csv")
    np.testing.assert_array_equal(val["step"], [20, 30])
    np.testing.assert_array_equal(val["best"], [1, 0])
    assert report.skipped["out_of_range"] == 24 + 2
    # The best checkpoint is the run's, not the range's: outside the range nothing is marked.
    plot_log(run_dir, tmp_path / "b", from_step=25)
    val = read_csv(tmp_path / "b" / "val.csv")
    np.testing.assert_array_equal(val["step"], [30, 40])
    np.testing.assert_array_equal(val["best"], [0, 0])


def test_detection_and_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert detect_log(run_dir) == ("boxforge", run_dir / "metrics.jsonl")
    renamed = tmp_path / "copy.log"
    renamed.write_bytes((run_dir / "metrics.jsonl").read_bytes())
    assert detect_log(renamed)[0] == "boxforge"  # by content, not by name
    assert main(["plot", str(run_dir), "--smooth", "3", "--to-step", "35"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_dir / 'plots' / 'validation.png'}" in out
    assert "replaced" in out and "malformed" in out
    assert main(["plot", str(run_dir), "--smooth", "0"]) == 2
    assert main(["plot", str(run_dir), "--from-step", "100"]) == 2
    assert "no train or val records" in capsys.readouterr().err


def test_run_without_validation(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(train_row(s)) + "\n" for s in range(1, 6)))
    report = plot_log(tmp_path)
    assert not (tmp_path / "plots" / "validation.png").exists()
    assert_png(tmp_path / "plots" / "loss.png")
    assert any("no validation records" in n for n in report.notes)
