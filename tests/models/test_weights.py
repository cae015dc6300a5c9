"""Weights resolution: named weights only from the local cache (never the network), files, checkpoints, pickles."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

from boxforge.errors import BoxforgeError
from boxforge.models import get_model
from boxforge.models.weights import cache_path, load_state_dict_file, resolve_state_dict

SSDLITE = "ssdlite320_mobilenet_v3_large"


@pytest.fixture
def hub_dir(tmp_path: Path):
    """An empty torch hub cache, restored afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way to the network raises, and is recorded: the test then asserts nothing tried."""
    attempts: list[str] = []

    def refuse(what: str):
        def _refuse(*args, **kwargs):
            attempts.append(what)
            raise AssertionError(f"network access attempted: {what}")
        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("torch.hub.download_url_to_file"))
    return attempts


def test_named_weights_not_cached_is_one_clear_line(hub_dir: Path, no_network: list[str]) -> None:
    with pytest.raises(BoxforgeError) as err:
        get_model(SSDLITE, num_classes=3, weights="COCO_V1")
    expected_path = hub_dir / "checkpoints" / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    assert str(err.value) == (
        f"weights COCO_V1 for {SSDLITE} are not in the local cache ({expected_path}); "
        "download them where you have internet or pass a local file: --weights path/to/file.pth")
    assert no_network == []


def test_named_backbone_weights_not_cached(hub_dir: Path, no_network: list[str]) -> None:
    with pytest.raises(BoxforgeError) as err:
        get_model("ssd_mobilenet_fpn", num_classes=3, weights_backbone="IMAGENET1K_V1")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("backbone weights IMAGENET1K_V1 for ssd_mobilenet_fpn are not in the local cache (")
    assert message.endswith("pass a local file: --weights-backbone path/to/file.pth")
    assert no_network == []


def test_unknown_weights_name_lists_valid_ones(hub_dir: Path) -> None:
    with pytest.raises(BoxforgeError, match="unknown weights 'COCO_V2' for ssdlite.*choose one of: COCO_V1, DEFAULT"):
        get_model(SSDLITE, num_classes=3, weights="COCO_V2")
    with pytest.raises(BoxforgeError, match="ssd_tiny has no named weights"):
        get_model("ssd_tiny", num_classes=3, weights="COCO_V1")


def test_cached_named_weights_load_without_network(hub_dir: Path, no_network: list[str]) -> None:
    """A COCO-shaped file in the cache (91 classes incl. background) becomes the start of a 3-class model."""
    coco = get_model(SSDLITE, num_classes=90, img_size=96)
    path = cache_path(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1)
    path.parent.mkdir(parents=True)
    torch.save(coco.model.state_dict(), path)  # torchvision's layout: no "model." prefix

    model = get_model(SSDLITE, num_classes=3, img_size=96, weights="DEFAULT")
    report = model.transfer_report
    assert report.reinitialised and all(n.startswith("model.head.classification_head.") for n in report.reinitialised)
    assert report.reinitialised == report.shape_mismatch
    assert len(report.transferred) == report.total - len(report.reinitialised)
    assert torch.equal(model.model.backbone.features[0][0][0].weight, coco.model.backbone.features[0][0][0].weight)
    assert torch.equal(model.model.head.regression_head.module_list[0][1].weight,
                       coco.model.head.regression_head.module_list[0][1].weight)
    assert no_network == []


def test_local_state_dict_file(tmp_path: Path) -> None:
    source = get_model("ssd_tiny", num_classes=3, img_size=96)
    path = tmp_path / "tiny.pth"
    torch.save(source.model.state_dict(), path)
    model = get_model("ssd_tiny", num_classes=3, img_size=96, weights=path)
    assert model.transfer_report.transferred and not model.transfer_report.reinitialised
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_boxforge_checkpoint_dict(tmp_path: Path) -> None:
    source = get_model("ssd_tiny", num_classes=2, img_size=96, class_names=["a", "b"])
    path = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "class_names": ["a", "b"], "epoch": 3}, path)
    assert set(load_state_dict_file(path)) == set(source.state_dict())
    model = get_model("ssd_tiny", num_classes=2, img_size=96, weights=str(path))
    total = model.transfer_report.total
    assert str(model.transfer_report) == f"transferred {total}/{total} tensors"
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


class _Payload:
    """Pickles to a call of `_side_effect`, which would run when an unsafe loader unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (str(self.marker),))


def _side_effect(marker: str) -> None:
    Path(marker).write_text("code ran")


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    assert not marker.exists()  # saving only records the call
    with pytest.raises(BoxforgeError) as err:
        get_model("ssd_tiny", num_classes=2, weights=path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load: the file needs pickled Python code (")
    assert "_side_effect" in message
    assert "\n" not in message
    assert not marker.exists()


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BoxforgeError, match="missing.pth: weights file does not exist"):
        resolve_state_dict(tmp_path / "missing.pth", enum=None, model_name="ssd_tiny")
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(BoxforgeError, match="share no tensor"):
        get_model("ssd_tiny", num_classes=2, weights=foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BoxforgeError, match="junk.pt: cannot read weights"):
        load_state_dict_file(junk)
    listing = tmp_path / "list.pt"
    torch.save({"epoch": 3}, listing)
    with pytest.raises(BoxforgeError, match="holds neither a state_dict nor a boxforge checkpoint.*epoch"):
        load_state_dict_file(listing)


def test_random_bytes_are_one_line_naming_the_file(tmp_path: Path) -> None:
    """Noise drives torch's restricted unpickler into IndexError, KeyError, UnicodeDecodeError, ... (18, 5 and 6
    of these 300 seeds); each must still be a BoxforgeError naming the file (the CLI test writes os.urandom)."""
    noise = tmp_path / "noise.pt"
    for seed in range(300):
        noise.write_bytes(np.random.default_rng(seed).bytes(256))
        with pytest.raises(BoxforgeError, match="noise.pt: cannot read weights") as caught:
            load_state_dict_file(noise)
        assert "\n" not in str(caught.value), seed
