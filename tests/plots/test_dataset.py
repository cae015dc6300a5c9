"""`boxforge check DATA --plots DIR` and `plot_dataset`: histograms, box sizes and a sample grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from boxforge.cli import main
from boxforge.data.formats.detect import load_dataset
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.synth import synthesize_classification, synthesize_detection
from boxforge.plots import plot_dataset
from boxforge.plots.dataset import _box_table, box_size_figure, class_figure, pick_samples, samples_figure
from tests.plots._png import assert_png

FILES = ["classes.png", "boxes_per_image.png", "box_sizes.png", "aspect_ratios.png", "samples.png"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plots") / "voc"
    synthesize_detection(root, images=8)
    return root


def test_check_plots_cli(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plots"
    assert main(["check", str(voc), "--plots", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in FILES:
        assert f"plot written to {out / name}" in printed
        assert_png(out / name)


def test_figures_hold_the_index_numbers(voc: Path) -> None:
    index = load_dataset(voc)
    counts = index.class_counts()
    bars = class_figure(index).axes[0].patches
    assert sorted(int(b.get_width()) for b in bars) == sorted(counts.values())
    wh, size, labels = _box_table(index)
    assert len(wh) == index.num_objects == len(labels)
    scatter = box_size_figure(wh, size).axes[0].collections[0]
    np.testing.assert_allclose(scatter.get_offsets(), wh / size)
    chosen = pick_samples(index, 16)
    assert len(chosen) == 8
    fig = samples_figure(index, chosen)
    drawn = sum(len(ax.patches) for ax in fig.axes)
    assert drawn == sum(s.num_objects for s in chosen)
    names = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert names <= set(index.classes) and names


def test_sample_choice_is_deterministic_and_spread() -> None:
    samples = [Sample(image_id=f"{i:03d}", image_path=Path(f"/nowhere/{i}.jpg")) for i in range(100)]
    index = DatasetIndex(classes=["a"], samples=samples[::-1], format="voc", root=Path("/nowhere"))
    ids = [s.image_id for s in pick_samples(index, 16)]
    assert ids == [s.image_id for s in pick_samples(index, 16)]
    assert len(ids) == 16 and ids[0] == "000" and ids[-1] == "099" and ids == sorted(ids)


def test_unreadable_images_and_bad_boxes_do_not_stop_the_plots(tmp_path: Path) -> None:
    good = Sample(image_id="ok", image_path=tmp_path / "missing.jpg", width=100, height=50,
                  boxes=[[10, 10, 60, 40], [5, 5, 5, 20], [np.nan, 0, 1, 1]], labels=[0, 1, 1])
    index = DatasetIndex(classes=["cat", "dog"], samples=[good], format="voc", root=tmp_path)
    files = plot_dataset(index, tmp_path / "out")
    assert [p.name for p in files] == FILES
    wh, size, _ = _box_table(index)
    np.testing.assert_allclose(wh, [[50, 30]])  # the zero-width and NaN boxes are left out
    assert_png(tmp_path / "out" / "samples.png", min_size=(200, 150))


def test_classification_set_gets_class_histogram_and_samples(tmp_path: Path) -> None:
    synthesize_classification(tmp_path / "cls", images=6)
    index = load_dataset(tmp_path / "cls")
    files = plot_dataset(index, tmp_path / "out")
    assert [p.name for p in files] == ["classes.png", "samples.png"]
    for p in files:
        assert_png(p, min_size=(200, 150))
