"""Darknet training logs: both formats, nan/Syncing/garbage lines counted by reason, CSVs and PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from boxforge.cli import main
from boxforge.plots import detect_log, plot_log
from boxforge.plots.common import read_csv
from boxforge.plots.darknet import loss_figure, region_figure
from boxforge.plots.darknet_log import DarknetLogParser, iter_lines, parse_darknet_log
from tests.plots._png import assert_png

NAN = math.nan

# pjreddie darknet (YOLOv3), LF line endings. Region lines come before their batch's loss line.
PJREDDIE = [
    "yolov3-voc",
    "Learning Rate: 0.001, Momentum: 0.9, Decay: 0.0005",
    "Loaded: 0.000030 seconds",
    "Region 82 Avg IOU: 0.500000, Class: 0.600000, Obj: 0.700000, No Obj: 0.010000, .5R: 1.000000, .75R: 0.500000,  count: 2",
    "Region 94 Avg IOU: 0.200000, Class: 0.300000, Obj: 0.400000, No Obj: 0.020000, .5R: 0.000000, .75R: 0.000000,  count: 1",
    "Region 106 Avg IOU: -nan, Class: -nan, Obj: -nan, No Obj: 0.000015, .5R: -nan, .75R: -nan,  count: 0",
    "Region 82 Avg IOU: 0.800000, Class: 0.400000, Obj: 0.500000, No Obj: 0.030000, .5R: 1.000000, .75R: 1.000000,  count: 2",
    "1: 1800.500000, 1810.250000 avg, 0.000100 rate, 1.500000 seconds, 64 images",
    "Loaded: 0.000031 seconds",
    "Region 82 Avg IOU: 0.400000, Class: 0.500000, Obj: 0.500000, No Obj: 0.010000, .5R: 0.500000, .75R: 0.250000,  count: 4",
    "Region 106 Avg IOU: 0.900000, Class: 0.900000, Obj: 0.900000, No Obj: 0.001000, .5R: 1.000000, .75R: 1.000000,  count: 1",
    "Syncing... Done!",
    "2: -nan, -nan avg, 0.000200 rate, 1.500000 seconds, 128 images",
    "Region 82 Avg IOU: -nan, Class: 0.5, Obj: 0.5, No Obj: 0.01, .5R: 0.5, .75R: 0.25,  count: 3",
    "Region 94 Avg IOU: 0.3000, Cla",
    "3: 10.000000, 700.000000 avg, 0.001000 rate, 2.000000 seconds, 192 images",
    "%%% random garbage \udcff",
    "4: not a loss line",
    "",
]
PJREDDIE_SKIPPED = {"no_objects": 1, "sync": 1, "nan": 2, "malformed": 2, "other": 5}

_V3 = "v3 (mse loss, Normalizer: (iou: 0.75, cls: 1.00) "
_V4 = "v3 (iou loss, Normalizer: (iou: 0.07, obj: 1.00, cls: 1.00) "
# AlexeyAB darknet (YOLOv3/v4, Windows build: CRLF and MSVC's nan spellings), ending in a cut-off line.
ALEXEYAB = [
    " (next mAP calculation at 1000 iterations) ",
    _V3 + "Region 82 Avg (IOU: 0.600000, GIOU: 0.550000), Class: 0.500000, Obj: 0.200000, No Obj: 0.003000, "
          ".5R: 1.000000, .75R: 0.000000, count: 1, class_loss = 2.100000, iou_loss = 0.400000, total_loss = 2.500000 ",
    _V3 + "Region 94 Avg (IOU: 0.331, GIoU: 0.31), Class: 0.5, Obj: 0.2, No Obj: 0.003, .5R: 0.2, .75R: 0.0, "
          "count: 9, class_loss = 2.1, iou_loss = 0.4, total_loss = 2.5",
    _V4 + "Region 139 Avg (IOU: 0.342851), count: 6, class_loss = 976.097534, iou_loss = 1.449280, "
          "total_loss = 977.546814 ",
    " 1234: 0.479518, 0.625265 avg loss, 0.001000 rate, 3.029000 seconds, 401536 images, 12.300000 hours left",
    " Tensor Cores are used.",
    _V3 + "Region 82 Avg (IOU: -nan(ind), GIOU: -nan(ind)), Class: -nan(ind), Obj: -nan(ind), No Obj: 0.000100, "
          ".5R: -nan(ind), .75R: -nan(ind), count: 0, class_loss = 0.1, iou_loss = 0.0, total_loss = 0.1 ",
    _V3 + "Region 82 Avg (IOU: 0.900000, GIOU: 0.880000), Class: 1.#IND00, Obj: 0.5, No Obj: 0.001, .5R: 1.0, "
          ".75R: 1.0, count: 2, class_loss = 1, iou_loss = 1, total_loss = 2 ",
    _V3 + "Region 82 Avg (IOU: 0.700000, GIOU: 0.680000), Class: 0.8, Obj: 0.6, No Obj: 0.002, .5R: 1.0, "
          ".75R: 0.5, count: 4, class_loss = 1, iou_loss = 1, total_loss = 2 ",
    "Syncing...",
    " 1235: -nan(ind), -nan(ind) avg loss, 0.001000 rate, 3.000000 seconds, 401600 images, 12.2 hours left",
    " 1236: 0.400000, 0.600000 avg loss, 0.000900 rate, 3.000000 seconds, 401664 images, 12.100000 hours left",
    _V4 + "Region 139 Avg (IOU: 0.5), count: 2, class_loss = 1, iou_loss = 1, total_loss = 2 ",
    " 1237: 0.4, 0.6 avg lo",
]
ALEXEYAB_SKIPPED = {"other": 2, "no_objects": 1, "nan": 2, "sync": 1, "incomplete": 1, "malformed": 1}


def write_log(path: Path, lines: list[str], newline: str) -> Path:
    text = newline.join(lines)  # no newline after the last line: a log still being written
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


@pytest.fixture
def pj_log(tmp_path: Path) -> Path:
    return write_log(tmp_path / "train.txt", PJREDDIE, "\n")


@pytest.fixture
def ab_log(tmp_path: Path) -> Path:
    return write_log(tmp_path / "train_ab.log", ALEXEYAB, "\r\n")


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, equal_nan=True)


def test_pjreddie_series_and_skips(pj_log: Path) -> None:
    s = parse_darknet_log(pj_log)
    close(s.iteration, [1, 2, 3])
    close(s.loss, [1800.5, NAN, 10.0])
    close(s.avg_loss, [1810.25, NAN, 700.0])
    close(s.rate, [0.0001, NAN, 0.001])
    close(s.images, [64, NAN, 192])
    assert list(s.layers) == ["82", "94", "106"]
    l82 = s.layers["82"]
    close(l82.iteration, [1, 2])
    close(l82.iou, [(0.5 * 2 + 0.8 * 2) / 4, 0.4])  # object-weighted, like darknet's own averages
    close(l82.recall50, [1.0, 0.5])
    close(l82.recall75, [0.75, 0.25])
    close(l82.cls, [0.5, 0.5])
    close(l82.no_obj, [0.02, 0.01])
    close(l82.objects, [4, 4])
    close(s.layers["94"].iteration, [1])
    close(s.layers["106"].iou, [0.9])
    close(s.layers["106"].iteration, [2])  # the nan loss line still names its Region lines' iteration
    assert dict(s.skipped) == PJREDDIE_SKIPPED
    assert s.lines == len([x for x in PJREDDIE if x])
    assert (s.loss_lines_total, s.region_lines_total, s.bucket_width) == (2, 5, 1)


def test_alexeyab_series_and_skips(ab_log: Path) -> None:
    s = parse_darknet_log(ab_log)
    close(s.iteration, [1234, 1235, 1236])
    close(s.loss, [0.479518, NAN, 0.4])
    close(s.avg_loss, [0.625265, NAN, 0.6])
    close(s.rate, [0.001, NAN, 0.0009])
    assert list(s.layers) == ["82", "94", "139"]
    close(s.layers["82"].iteration, [1234, 1235])
    close(s.layers["82"].iou, [0.6, 0.7])
    close(s.layers["82"].recall75, [0.0, 0.5])
    close(s.layers["94"].iou, [0.331])
    close(s.layers["94"].recall50, [0.2])
    close(s.layers["139"].iou, [0.342851])
    close(s.layers["139"].recall50, [NAN])  # the newest format prints no recall
    assert dict(s.skipped) == ALEXEYAB_SKIPPED


def test_yolov2_region_lines_have_one_unnamed_layer() -> None:
    p = DarknetLogParser()
    p.feed_lines([b"Region Avg IOU: 0.326577, Class: 0.742537, Obj: 0.033966, No Obj: 0.000793, Avg Recall: 0.125000,  count: 8",
                  b"Region Avg IOU: 0.500000, Class: 1.000000, Obj: 0.500000, No Obj: 0.000500, Avg Recall: 0.500000,  count: 8",
                  b"9798: 0.370096, 0.451929 avg, 0.001000 rate, 3.300000 seconds, 627072 images"])
    s = p.result()
    assert list(s.layers) == ["region"]
    close(s.layers["region"].iou, [(0.326577 + 0.5) / 2])
    close(s.layers["region"].recall50, [(0.125 + 0.5) / 2])
    close(s.layers["region"].recall75, [NAN])


def test_buckets_stay_bounded_and_merge_exactly() -> None:
    p = DarknetLogParser(max_points=8)
    lines = []
    for it in range(1, 101):
        lines.append(f"Region 82 Avg IOU: {it / 100:.2f}, Class: 0.5, Obj: 0.5, No Obj: 0.01, .5R: 1, .75R: 0,  count: {it % 3 + 1}")
        lines.append(f"{it}: {it}.0, {it}.0 avg, 0.001 rate, 1.0 seconds, {it * 64} images")
    p.feed_lines(x.encode() for x in lines)
    s = p.result()
    assert s.iteration.size <= 8 and s.bucket_width == 16
    assert s.loss_lines.sum() == 100
    close(s.loss, s.iteration)  # loss == iteration number, so bucket means agree
    objects = np.array([it % 3 + 1 for it in range(1, 101)])
    l82 = s.layers["82"]
    close((l82.iou * l82.objects).sum() / l82.objects.sum(), (np.arange(1, 101) / 100 * objects).sum() / objects.sum())


def test_step_range_filters_iterations_and_their_region_lines(pj_log: Path) -> None:
    s = parse_darknet_log(pj_log, from_step=2, to_step=3)
    close(s.iteration, [2, 3])
    assert list(s.layers) == ["82", "106"]
    assert s.skipped["out_of_range"] == 1 + 3  # loss line 1 and its three Region lines with objects


def test_iter_lines_handles_crlf_lone_cr_and_endless_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"a\r\nb\rc\n" + b"z" * 50 + b"\nlast")
    assert list(iter_lines(path, chunk_size=7, max_line=20)) == [b"a", b"b", b"c"] + [b"z" * 20] * 2 + [b"z" * 10, b"last"]


def test_plot_writes_csvs_that_match_the_series_and_valid_pngs(ab_log: Path, pj_log: Path, tmp_path: Path) -> None:
    for log in (pj_log, ab_log):
        out = tmp_path / f"out-{log.stem}"
        report = plot_log(log, out, smooth=1)
        s = parse_darknet_log(log)
        assert report.kind == "darknet" and dict(report.skipped) == dict(s.skipped)
        names = sorted(p.name for p in report.files)
        assert names == ["darknet_loss.csv", "darknet_loss.png", "darknet_region.csv", "darknet_region.png"]
        loss = read_csv(out / "darknet_loss.csv")
        close(loss["iteration"], s.iteration)
        close(loss["loss"], s.loss)
        close(loss["avg_loss"], s.avg_loss)
        close(loss["rate"], s.rate)
        region = read_csv(out / "darknet_region.csv", text=("layer",))
        for name, layer in s.layers.items():
            rows = region["layer"] == name
            close(region["iteration"][rows], layer.iteration)
            close(region["iou"][rows], layer.iou)
            close(region["recall50"][rows], layer.recall50)
            close(region["recall75"][rows], layer.recall75)
        assert_png(out / "darknet_loss.png")
        assert_png(out / "darknet_region.png")


def test_figures_draw_the_parsed_series(pj_log: Path) -> None:
    s = parse_darknet_log(pj_log)
    fig = loss_figure(s, "t")
    raw, avg = fig.axes[0].lines[:2]
    close(raw.get_xdata(), s.iteration)
    close(raw.get_ydata(), s.loss)
    close(avg.get_ydata(), s.avg_loss)
    assert fig.axes[0].get_yscale() == "log"  # 10 to 1810: darknet's early losses would flatten the rest
    fig = region_figure(s, "t", smooth=1)
    iou_ax, r50_ax, r75_ax = fig.axes[:3]
    by_label = {line.get_label(): line for line in iou_ax.lines}
    assert set(by_label) == {"layer 82", "layer 94", "layer 106"}
    close(by_label["layer 82"].get_ydata(), s.layers["82"].iou)
    close({ln.get_label(): ln for ln in r75_ax.lines}["layer 82"].get_ydata(), s.layers["82"].recall75)


def test_cli_prints_files_and_skips_by_reason(ab_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(ab_log)]) == 0
    out = capsys.readouterr().out
    default = ab_log.parent / "train_ab-plots"
    assert f"wrote {default / 'darknet_loss.png'}" in out
    assert "3 loss lines" not in out and "2 loss lines" in out
    for reason, n in ALEXEYAB_SKIPPED.items():
        assert any(line.split()[:2] == [reason, str(n)] for line in out.splitlines()), (reason, out)
    assert_png(default / "darknet_region.png")


def test_not_a_log_and_bad_options_fail_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\nworld\n")
    assert detect_log(junk)[0] == "darknet"
    assert main(["plot", str(junk)]) == 2
    assert "no darknet loss lines" in capsys.readouterr().err
    assert main(["plot", str(junk), "--from-step", "5", "--to-step", "2"]) == 2
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert main(["plot", str(tmp_path)]) == 2
    assert "without metrics.jsonl" in capsys.readouterr().err
