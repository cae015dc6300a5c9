"""`predict --img-size`: run a checkpoint at another input size; an ONNX export only at its own."""

from __future__ import annotations

import json
from pathlib import Path

from boxforge.checkpoint import load_checkpoint, save_checkpoint
from boxforge.cli import main
from boxforge.inference.load import load_model


def _predictions(weights: Path, images: Path, out: Path, capsys, *extra: str) -> tuple[dict, str]:
    assert main(["predict", "--weights", str(weights), str(images), "--out", str(out), "--no-draw",
                 "--score-thresh", "0.01", "--device", "cpu", *extra]) == 0
    return json.loads((out / "predictions.json").read_text()), capsys.readouterr().out


def test_img_size_runs_the_checkpoint_as_if_built_at_that_size(trained: Path, synth: Path, tmp_path: Path,
                                                               capsys) -> None:
    images = synth / "JPEGImages"
    state = load_checkpoint(trained)
    assert state["img_size"] == 128
    at_160 = save_checkpoint({**state, "img_size": 160, "build_args": {**state["build_args"], "img_size": 160}},
                             tmp_path / "at160.pt")  # the same weights, built for 160 px
    resized, text = _predictions(trained, images, tmp_path / "a", capsys, "--img-size", "160")
    assert "note: input size 160 px (--img-size)" in text
    reference, _ = _predictions(at_160, images, tmp_path / "b", capsys)
    default, text = _predictions(trained, images, tmp_path / "c", capsys)
    assert "--img-size" not in text
    assert resized["predictions"] and resized["predictions"] == reference["predictions"]
    assert resized["predictions"] != default["predictions"]  # the size really changed what the model saw
    backend = load_model(trained, img_size=160).backend
    assert backend.img_size == 160 and backend.model.model.transform.min_size == (160,)


def test_onnx_runs_only_at_its_export_size(exported: Path, synth: Path, tmp_path: Path, capsys) -> None:
    images = synth / "JPEGImages"
    code = main(["predict", "--weights", str(exported), str(images), "--out", str(tmp_path / "x"), "--img-size",
                 "160"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "exported for a fixed 128 x 128 input; --img-size 160 cannot run it" in err
    same, text = _predictions(exported, images, tmp_path / "y", capsys, "--img-size", "128")
    assert "note: input size 128 px" in text and same["predictions"]


def test_an_img_size_below_32_is_one_error(trained: Path, synth: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", "--weights", str(trained), str(synth), "--out", str(tmp_path), "--img-size", "8"]) == 2
    assert "--img-size 8: allowed an integer >= 32" in capsys.readouterr().err
