"""`eval --model mobilenet_v2 --weights IMAGENET1K_V1`: torchvision's pretrained classifier, read from the
local torch hub cache only (as the ImageNet reference's `--pretrained --test-only`), and the class mapping.

The real weights cannot be downloaded here: a state dict of the right shapes is put where torchvision
would cache them (TORCH_HOME), its last layer rigged so that every image is called "goldfish", which
no randomly initialised model would do: the file was read, every tensor of it used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from boxforge import api
from boxforge.inference.classify import _label_map
from boxforge.cli import main
from boxforge.data.index import DatasetIndex
from boxforge.engine.fit import TrainResult
from boxforge.errors import BoxforgeError
from boxforge.models.weights import cache_path
from tests.conftest import write_image

GOLDFISH = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"].index("goldfish")  # 1


@pytest.fixture
def no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("boxforge tried to download weights")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch, no_network) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return cache_path(MobileNet_V2_Weights.IMAGENET1K_V1)  # TORCH_HOME/hub/checkpoints/mobilenet_v2-b0353104.pth


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    """2 goldfish and 2 tench images, folders named as the weights name those classes."""
    for name in ("goldfish", "tench"):
        for i in range(2):
            write_image(tmp_path / "val" / name / f"{i}.jpg", 80, 60, seed=i)
    return tmp_path / "val"


def _rigged_weights(path: Path) -> None:
    torch.manual_seed(0)
    state = mobilenet_v2(num_classes=1000).state_dict()
    state["classifier.1.weight"].zero_()
    state["classifier.1.bias"].zero_()
    state["classifier.1.bias"][GOLDFISH] = 10.0
    path.parent.mkdir(parents=True)
    torch.save(state, path)


def test_cached_pretrained_weights_are_loaded_and_evaluated(hub: Path, val_dir: Path, tmp_path: Path,
                                                            capsys) -> None:
    _rigged_weights(hub)
    out = tmp_path / "eval.json"
    args = ["eval", "--task", "classify", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--data",
            str(val_dir), "--device", "cpu", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["images"] == 4 and doc["acc1"] == 50.0  # both goldfish right, both tench wrong: the rigged file
    assert doc["per_class"]["goldfish"]["acc1"] == 100.0 and doc["per_class"]["tench"]["acc1"] == 0.0
    assert f"IMAGENET1K_V1 (mobilenet_v2, torchvision weights from {hub})" in text
    assert " * Acc@1 50.000 Acc@5 100.000" in text


def test_weights_not_in_the_cache_are_the_offline_error(hub: Path, val_dir: Path, capsys) -> None:
    assert main(["eval", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--data", str(val_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"weights IMAGENET1K_V1 for mobilenet_v2 are not in the local cache ({hub})" in err
    assert not hub.exists()  # nothing was fetched


def test_model_and_weights_that_do_not_go_together_are_one_error(short_run: TrainResult, val_dir: Path,
                                                                 capsys) -> None:
    cases = [(["--model", "mobilenet_v2", "--weights", str(short_run.best)], "names its own model, so drop --model"),
             (["--weights", "IMAGENET1K_V1"], "a torchvision weight name such as IMAGENET1K_V1 needs --model"),
             (["--model", "mobilenet_v2", "--weights", "IMAGENET9K"], "unknown weights 'IMAGENET9K' for mobilenet_v2"),
             (["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--task", "detect"], "a classifier")]
    for args, message in cases:
        assert main(["eval", "--data", str(val_dir), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_classes_match_by_position_when_no_name_matches_and_the_counts_agree() -> None:
    wnids = [f"n{i:08d}" for i in range(1000)]  # ImageFolder on ImageNet: sorted WordNet-id folders
    categories = list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    notes: list[str] = []
    index = DatasetIndex(classes=wnids, samples=[], format="imagefolder", root=Path("val"), task="classify")
    assert _label_map(index, categories, "IMAGENET1K_V1", notes).tolist() == list(range(1000))
    assert "matched by position, as both have 1000" in notes[0]
    fewer = DatasetIndex(classes=wnids[:10], samples=[], format="imagefolder", root=Path("val"), task="classify")
    with pytest.raises(BoxforgeError, match="share no name .* and the counts differ"):
        _label_map(fewer, categories, "IMAGENET1K_V1", [])


def test_a_renamed_copy_of_the_val_set_evaluates_by_position(short_run: TrainResult, small_set: Path,
                                                            tmp_path: Path) -> None:
    renamed = tmp_path / "renamed"
    for new, old in zip(("a", "b", "c"), ("circle", "square", "triangle")):  # same sorted order
        shutil.copytree(small_set / "val" / old, renamed / new)
    by_name = api.evaluate(small_set, weights=short_run.best, device="cpu", progress=False)
    by_position = api.evaluate(renamed, weights=short_run.best, device="cpu", progress=False)
    assert by_position.meter.acc1 == by_name.meter.acc1 and by_position.meter.count == 12
    assert any("matched by position" in note for note in by_position.notes)


def test_compare_classifier_checkpoints(short_run: TrainResult, small_set: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp.json"
    assert main(["eval", "--data", str(small_set), "--weights", str(short_run.last), str(short_run.best),
                 "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    single = api.evaluate(small_set, weights=short_run.best, device="cpu", progress=False)
    rows = {c["weights"]: c["metrics"] for c in doc["checkpoints"]}
    assert rows[str(short_run.best)]["acc1"] == single.meter.acc1 == pytest.approx(short_run.best_metric)
    best = max(rows, key=lambda w: rows[w]["acc1"])
    assert doc["best"]["weights"] == best and doc["best"]["label"] == "Acc@1"
    assert ["checkpoint", "Acc@1", "Acc@5", "loss", "best"] in [line.split() for line in text.splitlines()]
    assert f"* best by Acc@1: {best}" in text
