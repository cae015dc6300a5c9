"""`eval --weights A.pt B.pt` / quoted globs: each checkpoint on the same images, one table, the best marked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import boxforge.data.formats.detect as detect
from boxforge.checkpoint import save_checkpoint
from boxforge.cli import main
from boxforge.inference.compare import expand_weights
from boxforge.errors import BoxforgeError


def _single(synth: Path, weights: Path, tmp_path: Path, capsys) -> tuple[dict, str]:
    out = tmp_path / f"single-{weights.stem}.json"
    assert main(["eval", "--data", str(synth), "--split", "train", "--weights", str(weights), "--device", "cpu",
                 "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_compare_rows_equal_single_evals_and_the_best_is_marked(synth: Path, trained: Path, untrained_ckpt: Path,
                                                               tmp_path: Path, capsys, monkeypatch) -> None:
    snaps = tmp_path / "run"
    snaps.mkdir()
    shutil.copy(untrained_ckpt, snaps / "step-900.pt")
    shutil.copy(trained, snaps / "step-1000.pt")
    loads = []
    real_load = detect.load_dataset
    monkeypatch.setattr(detect, "load_dataset", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "compare.json"
    assert main(["eval", "--data", str(synth), "--split", "train", "--weights", str(snaps / "step-*.pt"),
                 "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert len(loads) == 1  # the dataset is read once for both checkpoints
    doc = json.loads(out.read_text())
    names = [c["weights"] for c in doc["checkpoints"]]
    assert names == [str(snaps / "step-900.pt"), str(snaps / "step-1000.pt")]  # numbers sorted by value
    monkeypatch.undo()
    for entry, source in zip(doc["checkpoints"], (untrained_ckpt, trained)):
        single, _ = _single(synth, source, tmp_path, capsys)
        assert entry["results"] == single  # exactly what `eval --weights ONE --json` writes
        assert entry["metrics"]["voc12_map"] == single["voc12"]["map"]
        assert entry["metrics"]["coco_AP50"] == single["coco"]["AP50"]
    maps = [c["metrics"]["voc12_map"] for c in doc["checkpoints"]]
    assert maps[1] > maps[0]  # the trained one finds objects, the untrained one barely
    assert doc["best"] == {"weights": names[1], "metric": "voc12_map", "label": "VOC12 mAP", "value": maps[1]}
    best_line = next(line for line in text.splitlines() if line.startswith(names[1]))
    assert best_line.rstrip().endswith("*") and f"{maps[1]:.4f}" in best_line
    assert "VOC07 mAP  VOC12 mAP  COCO AP  COCO AP50  best" in text
    assert f"* best by VOC12 mAP: {names[1]}" in text


def test_a_glob_of_one_file_prints_exactly_what_the_file_does(synth: Path, trained: Path, tmp_path: Path,
                                                             capsys) -> None:
    _, literal = _single(synth, trained, tmp_path, capsys)
    assert main(["eval", "--data", str(synth), "--split", "train", "--weights", str(trained.parent / "las?.pt"),
                 "--device", "cpu", "--json", str(tmp_path / f"single-{trained.stem}.json")]) == 0
    assert capsys.readouterr().out == literal and "voc07 AP" in literal  # today's per-class table


def test_weights_that_cannot_be_compared_are_one_error(synth: Path, trained: Path, untrained_ckpt: Path,
                                                      tmp_path: Path, capsys) -> None:
    with pytest.raises(BoxforgeError, match="the pattern matches no file"):
        expand_weights([str(tmp_path / "step-*.pt")])
    with pytest.raises(BoxforgeError, match="IMAGENET1K_V1 needs --model"):
        expand_weights(["IMAGENET1K_V1"])
    classifier = save_checkpoint({"task": "classify", "model": {}}, tmp_path / "cls.pt")
    cases = [(["--weights", str(trained), str(classifier)], "mixes detectors and classifiers"),
             (["--weights", str(trained), str(untrained_ckpt), "--plots", str(tmp_path)], "give a single --weights"),
             (["--weights", "IMAGENET1K_V1"], "--weights IMAGENET1K_V1: no such file; a torchvision weight name")]
    for args, message in cases:
        assert main(["eval", "--data", str(synth), "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
