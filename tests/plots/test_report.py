"""RUN_DIR/report.html: written by a real training run, self-contained, right in content, regenerable,
never fatal to a run, and rendered by a real browser (headless Chromium) when one is installed."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import boxforge
from boxforge.checkpoint import load_checkpoint
from boxforge.cli import build_parser, main
from boxforge.config import make_config
from boxforge.evaluation.errors import error_rows
from boxforge.evaluation.table import table_rows
from tests.engine.conftest import train_args
from tests.plots._png import assert_png
from tests.plots.conftest import Run

SECTIONS = ["settings", "dataset", "curves", "evaluation", "predictions"]
DATA_URI = ("data:image/png;base64,", "data:image/jpeg;base64,")


class Page(HTMLParser):
    """What a test needs from the page: section ids, every attribute that can load something, table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (section, src)
        self.alts: list[str] = []
        self.links: list[str] = []  # every href, src, srcset, action, poster, data attribute
        self.tags: set[str] = set()
        self.tables: dict[str, list[list[str]]] = {}  # section -> rows of the first table's cells
        self._section, self._row, self._cell = "", None, None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [v or "" for k, v in attrs if k in ("href", "src", "srcset", "action", "poster", "data")]
        if tag == "section":
            self._section = a.get("id") or ""
            self.sections.append(self._section)
        elif tag == "img":
            self.images.append((self._section, a.get("src") or ""))
            self.alts.append(a.get("alt") or "")
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell or "")
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self._section, []).append(self._row)
            self._row = None


def decode(src: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))


def assert_self_contained(page: Page, text: str) -> None:
    assert page.images, "no image in the report"
    for _, src in page.images:
        assert src.startswith(DATA_URI), f"<img> not inlined: {src[:60]}"
    external = [link for link in page.links if not link.startswith(("#",) + DATA_URI)]
    assert not external, f"external references: {external}"
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}, page.tags
    assert "url(" not in text and "@import" not in text


def test_training_writes_a_self_contained_report(trained_run: Run) -> None:
    path = trained_run.dir / "report.html"
    assert f"report written to {path}" in trained_run.stdout
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS
    assert_self_contained(page, text)
    for _, src in page.images:
        with decode(src) as im:
            im.verify()

    # settings: config.yaml verbatim
    config = yaml.safe_load((trained_run.dir / "config.yaml").read_text())
    assert f"iterations: {config['iterations']}" in text and "model: ssd_tiny" in text

    # dataset: the split sizes and per-class box counts the run trained and validated on
    train = boxforge.load_dataset(trained_run.data, split="trainval")
    test = boxforge.load_dataset(trained_run.data, split="test")
    header, *rows = page.tables["dataset"]
    assert header == ["split", "sources", "images", "boxes", *train.classes]
    for row, index in zip(rows, (train, test)):  # the sources as RUN_DIR/splits.json names them
        counts = index.class_counts()
        assert row[1:] == [f"{trained_run.data}: {index.split}", str(len(index)), str(index.num_objects)] + [
            str(counts[c]) for c in train.classes]

    # curves: loss, lr/throughput, validation
    assert [s for s, _ in page.images].count("curves") == 3

    # evaluation: exactly the table `boxforge eval` gives for best.pt on the validation split
    report = boxforge.evaluate(trained_run.data, weights=trained_run.dir / "best.pt", split="test", progress=False,
                               errors=True)
    headers, expected = table_rows(report.results)
    per_class, errors = page.tables["evaluation"][:len(expected) + 1], page.tables["evaluation"][len(expected) + 1:]
    assert per_class == [headers] + expected
    # and where the AP goes: `eval --errors`' breakdown of the same checkpoint (evaluation/errors.py)
    assert errors == [["error type", "count", "dAP50", "dAP"]] + error_rows(report.results["errors"])
    assert [s for s, _ in page.images].count("evaluation") == 3  # VOC and COCO precision/recall, AP lost by error

    # predictions: every validation image (5 < 6 shown at most), drawn as JPEG
    drawn = {alt: src for (s, src), alt in zip(page.images, page.alts) if s == "predictions"}
    assert sorted(drawn) == sorted(s.image_id for s in test.samples)
    for sample in test.samples:
        assert drawn[sample.image_id].startswith("data:image/jpeg;base64,")
        with decode(drawn[sample.image_id]) as im:
            assert im.size == (sample.width, sample.height)  # small images are drawn at their own size
            assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 50


def test_plot_report_rewrites_the_report(trained_run: Run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = shutil.copytree(trained_run.dir, tmp_path / "run")
    (run / "report.html").unlink()
    assert main(["plot", str(run), "--report"]) == 0
    out = capsys.readouterr().out
    assert f"report written to {run / 'report.html'}" in out
    assert_png(run / "plots" / "loss.png")
    text = (run / "report.html").read_text()
    page = Page(text)
    assert page.sections == SECTIONS
    assert_self_contained(page, text)
    original = Page((trained_run.dir / "report.html").read_text())
    assert page.tables == original.tables  # same checkpoint, same data: same numbers


def test_report_of_a_run_whose_dataset_moved_says_so(trained_run: Run, tmp_path: Path) -> None:
    run = shutil.copytree(trained_run.dir, tmp_path / "run", ignore=shutil.ignore_patterns("report.html"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = [str(tmp_path / "gone")]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    text = boxforge.api.report(run).read_text()
    page = Page(text)
    assert page.sections == SECTIONS
    assert "cannot read the run&#x27;s dataset" in text
    assert "no validation split to evaluate on" in text
    assert [s for s, _ in page.images].count("curves") == 3  # what does not need the data is still there


def test_plot_report_refuses_a_darknet_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "train.txt"
    log.write_text("".join(f"{i}: {9 - i}.5, {9 - i}.0 avg, 0.001 rate, 1.0 seconds, {64 * i} images\n"
                           for i in range(1, 6)))
    assert main(["plot", str(log), "--report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"boxforge plot: error: --report: {log} is a darknet log; a report needs a boxforge run directory"]


def test_a_failing_report_is_a_warning_and_keeps_the_checkpoints(trained_run: Run, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    import boxforge.run_report

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(boxforge.run_report, "write_report", broken)
    out = tmp_path / "run"
    assert main(train_args(trained_run.data, out, "--iterations", "5", report=True)) == 0
    captured = capsys.readouterr()
    assert "done: 5 steps" in captured.out
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: could not write {out / 'report.html'}: RuntimeError: disk on fire; the "
                       f"checkpoints are intact; retry with: boxforge plot {out} --report"]
    assert not (out / "report.html").exists()
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(out / name)["global_step"] > 0  # complete and loadable


def test_no_report_option_reaches_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--no-report"])
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    assert make_config(settings).report is False
    args = build_parser().parse_args(["train", "--data", str(tmp_path)])
    assert make_config({k: v for k, v in vars(args).items() if k not in ("command", "config")}).report is True


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)


def _headless(browser: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="headless render check skipped: no chromium on PATH "
                    "(Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(trained_run: Run, tmp_path: Path) -> None:
    browser = _chromium()
    assert browser is not None
    url = (trained_run.dir / "report.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = _headless(browser, profile, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    assert page.sections == SECTIONS
    assert len(page.images) >= 3 + 2 + 5
    assert_self_contained(page, dom.stdout)

    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        done = _headless(browser, profile, "--hide-scrollbars", "--window-size=1280,3000", f"--screenshot={shot}",
                         url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_png(shot, min_size=(1280, 3000))
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    ink = (pixels < 200).any(axis=2)
    assert ink.mean() > 0.02, "the screenshot is almost blank"
    rows_with_ink = ink.any(axis=1)
    assert rows_with_ink[:1000].mean() > 0.3 and rows_with_ink[1000:].mean() > 0.3, "content missing down the page"
