"""`boxforge predict`: drawn images, the predictions file, per-class files, sources, unreadable images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxforge.cli import main
from boxforge.data.images import read_image
from boxforge.data.transforms import detection_transforms
from boxforge.plots.draw import class_colour, draw_detections, font_size, line_width
from boxforge.errors import BoxforgeError
from boxforge.inference import load_detector
from boxforge.inference.sources import resolve_sources


@pytest.fixture
def images(synth: Path, tmp_path: Path) -> Path:
    """5 synthetic JPEGs (one in a subfolder), one PNG copy, and a broken file."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    jpgs = sorted((synth / "JPEGImages").glob("*.jpg"))
    for p in jpgs[:4]:
        shutil.copy(p, folder / p.name)
    shutil.copy(jpgs[4], folder / "sub" / jpgs[4].name)
    Image.open(jpgs[5]).save(folder / "sub" / "photo.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def _predict(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_writes_drawn_images_json_and_per_class_files(trained: Path, images: Path, tmp_path: Path,
                                                               capsys) -> None:
    out = tmp_path / "out"
    code, text, _ = _predict(["--weights", str(trained), str(images), "--out", str(out), "--score-thresh", "0.2",
                              "--per-class-json", "--batch-size", "4"], capsys)
    assert code == 0
    drawn = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in (".jpg", ".png"))
    assert drawn == ["000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg", "sub/000004.jpg", "sub/photo.png"]
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["classes"] == ["circle", "square", "triangle"]
    assert sorted(i["image"] for i in doc["images"]) == [d.rsplit(".", 1)[0] for d in drawn]
    assert doc["predictions"] and all(p["score"] >= 0.2 for p in doc["predictions"])
    assert "6 images" in text and "skipped 1 unreadable images" in text and "broken.jpg" in text

    # boxes are in each image's own pixels: they equal the model's output scaled from its 128 px input
    model, _ = load_detector(trained)
    model.set_postprocess(score_thresh=0.2, nms_thresh=0.45, detections_per_img=100)
    pixels = read_image(images / "000001.jpg")
    h, w = pixels.shape[-2:]
    with torch.no_grad():
        ref = model(detection_transforms(False, 128)(pixels)[None])[0]
    expected = ref["boxes"].numpy() * np.array([w / 128, h / 128] * 2)
    mine = [p for p in doc["predictions"] if p["image"] == "000001"]
    assert len(mine) == len(expected) > 0
    np.testing.assert_allclose([p["box"] for p in mine], expected, atol=2e-3)

    # the drawn image differs from the original along the top edge of its most confident box
    original = np.asarray(Image.open(images / "000001.jpg").convert("RGB")).astype(int)
    result = np.asarray(Image.open(out / "000001.jpg").convert("RGB")).astype(int)
    assert original.shape == result.shape
    x1, y1, x2, y2 = (int(round(v)) for v in mine[0]["box"])
    y = min(max(y1, 0), h - 1)
    edge = np.abs(result[y, max(x1, 0):min(x2, w)] - original[y, max(x1, 0):min(x2, w)]).sum(axis=1)
    assert (edge > 60).mean() > 0.5
    assert np.abs(result - original).sum(axis=2).mean() > 1.0

    per_class = {p.stem: json.loads(p.read_text()) for p in (out / "per_class").glob("*.json")}
    assert set(per_class) == {"circle", "square", "triangle"}
    for name, entry in per_class.items():
        boxes = [(i["image"], b) for i in entry["images"] for b in i["boxes"]]
        assert entry["class"] == name and entry["objects"] == len(boxes)
        assert sorted(boxes) == sorted((p["image"], p["box"]) for p in doc["predictions"] if p["label"] == name)


def test_predict_with_onnx_gives_the_checkpoint_detections(trained: Path, exported: Path, images: Path,
                                                            tmp_path: Path, capsys) -> None:
    runs = {}
    for name, weights in (("pt", trained), ("onnx", exported)):
        out = tmp_path / name
        code, _, _ = _predict(["--weights", str(weights), str(images), "--out", str(out), "--score-thresh", "0.1",
                               "--no-draw", "--json", str(tmp_path / f"{name}.json")], capsys)
        assert code == 0 and not list(out.glob("*.jpg"))
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["predictions"]
    assert len(runs["pt"]) == len(runs["onnx"]) > 0
    key = lambda p: (p["image"], -p["score"])  # noqa: E731
    for a, b in zip(sorted(runs["pt"], key=key), sorted(runs["onnx"], key=key)):
        assert a["image"] == b["image"] and a["label"] == b["label"]
        assert abs(a["score"] - b["score"]) < 1e-3 and np.abs(np.subtract(a["box"], b["box"])).max() < 1.0


def test_predict_only_unreadable_images_is_exit_1(trained: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, text, _ = _predict(["--weights", str(trained), str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "0 images" in text and "bad.png" in text


def test_predict_missing_source_is_a_clear_error(trained: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _predict(["--weights", str(trained), str(tmp_path / "nope")], capsys)
    assert code == 2 and "nope: no such image file or folder" in err


def test_sources_folders_globs_files_and_collisions(tmp_path: Path) -> None:
    for rel in ("a/x.jpg", "a/sub/y.png", "a/.hidden/z.jpg", "a/notes.txt", "b/x.jpg", "a/out/old.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    a, b = tmp_path / "a", tmp_path / "b"
    assert resolve_sources([a], exclude=a / "out") == [("sub/y", a / "sub/y.png"), ("x", a / "x.jpg")]
    assert resolve_sources([f"{a}/**/*.jpg"], exclude=a / "out") == [("x", a / "x.jpg")]
    assert [i for i, _ in resolve_sources([a / "x.jpg", a], exclude=a / "out")] == ["x", "sub/y"]
    both = dict(resolve_sources([a, b], exclude=a / "out"))
    assert both == {"a/x": a / "x.jpg", "sub/y": a / "sub/y.png", "b/x": b / "x.jpg"}
    with pytest.raises(BoxforgeError, match="no image files"):
        resolve_sources([f"{tmp_path}/*.gif"])


def test_drawing_scales_with_the_image() -> None:
    assert line_width(64, 48) == 2 and font_size(64, 48) >= 11
    assert line_width(4000, 3000) >= 10 and font_size(4000, 3000) >= 70
    image = np.full((600, 800, 3), 127, np.uint8)
    drawn = np.asarray(draw_detections(image, np.array([[100, 200, 400, 500]]), np.array([0.9]), np.array([1]),
                                       ["a", "b"]))
    assert tuple(drawn[350, 100]) == class_colour(1)  # the left edge
    tag = drawn[200 - 5, 100:130]  # the label tag above the box: filled with the class colour and text
    assert (np.abs(tag.astype(int) - class_colour(1)).sum(axis=1) == 0).mean() > 0.3
    assert tuple(drawn[50, 700]) == (127, 127, 127)  # far from the box: untouched
