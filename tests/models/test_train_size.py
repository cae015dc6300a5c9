"""`Detector.forward(images, targets, size=S)` (train --multi-scale): a training batch at another input size gets
that size's default boxes or grid cells and boxes scaled to it; eval, and the next call, stay at img_size."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from boxforge.models import get_model
from boxforge.models.dense_loss import DenseLoss
from boxforge.models.ssd import GlobalNormSSD

FIXED, OTHER = 96, 128


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two (3, 96, 96) images as the loader gives them (one tensor), boxes in their pixels."""
    images = torch.rand(2, 3, FIXED, FIXED)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[4.0, 8.0, 40.0, 44.0], [30.0, 30.0, 95.0, 80.0]]), "labels": torch.tensor([1, 0])}]
    return images, targets


def _anchors_of_a_model_built_at(name: str, size: int) -> torch.Tensor:
    """The default boxes a model built for `size` uses for a (size, size) input, (K, 4) xyxy pixels."""
    ref = get_model(name, num_classes=2, img_size=size).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        features = ref.model.backbone(x)
    features = list(features.values()) if isinstance(features, dict) else [features]
    return ref.model.anchor_generator(ImageList(x, [(size, size)]), features)[0]


@pytest.mark.parametrize("name", ["ssd_tiny", "ssdlite320_mobilenet_v3_large"])
def test_ssd_batch_at_another_size_has_that_sizes_anchors_and_scaled_targets(name: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    real = GlobalNormSSD.compute_loss

    def spy(self, targets, head_outputs, anchors, matched_idxs):
        seen.update(targets=[t["boxes"].clone() for t in targets], anchors=anchors[0].clone(),
                    matched=sum(int((m >= 0).sum()) for m in matched_idxs))
        return real(self, targets, head_outputs, anchors, matched_idxs)

    monkeypatch.setattr(GlobalNormSSD, "compute_loss", spy)
    model = get_model(name, num_classes=2, img_size=FIXED).train()
    model.to(memory_format=torch.channels_last)
    images, targets = _batch()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    outputs: list[torch.Tensor] = []
    first_conv.register_forward_hook(lambda _m, _i, out: outputs.append(out))

    losses = model(images, targets, size=OTHER)
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.equal(seen["anchors"], _anchors_of_a_model_built_at(name, OTHER))
    for got, given in zip(seen["targets"], targets):
        torch.testing.assert_close(got, given["boxes"] * OTHER / FIXED)
    assert seen["matched"] > 0
    assert outputs[0].shape[-1] == OTHER // 2 and outputs[0].is_contiguous(memory_format=torch.channels_last)

    assert model.model.transform.fixed_size == (FIXED, FIXED)  # only that call was resized
    model(images, targets)
    assert seen["anchors"].shape == _anchors_of_a_model_built_at(name, FIXED).shape
    model.eval()
    with pytest.raises(ValueError, match="size is for training batches"):
        model(images, size=OTHER)


@pytest.mark.parametrize("name", ["yolo_csp", "yolo_efficientnet_lite0"])
def test_dense_batch_at_another_size_has_that_sizes_grid_and_scaled_targets(name: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    real = DenseLoss.forward

    def spy(self, box_logits, pred_boxes, cls_logits, points, strides, targets):
        seen.update(points=points.clone(), targets=[t["boxes"].clone() for t in targets])
        return real(self, box_logits, pred_boxes, cls_logits, points, strides, targets)

    monkeypatch.setattr(DenseLoss, "forward", spy)
    model = get_model(name, num_classes=2, img_size=FIXED).train()
    images, targets = _batch()
    losses = model(images, targets, size=OTHER)
    assert all(torch.isfinite(v) for v in losses.values())
    points = seen["points"]
    assert len(points) == sum((OTHER // s) ** 2 for s in (8, 16, 32))
    assert float(points.min()) == 4.0 and float(points.max()) == OTHER - 4.0  # stride-8 cell centres span the input
    for got, given in zip(seen["targets"], targets):
        torch.testing.assert_close(got, given["boxes"] * OTHER / FIXED)
    assert model.model.transform.fixed_size == (FIXED, FIXED)


def test_sizes_a_model_cannot_train_at_are_refused() -> None:
    tiny = get_model("ssd_tiny", num_classes=2, img_size=FIXED).train()
    with pytest.raises(ValueError, match="below its smallest input, 64 px"):
        tiny.check_train_size(32)
    vgg = get_model("ssd300_vgg16", num_classes=2)  # 300 px: torchvision's fixed anchor steps
    with pytest.raises(ValueError, match=r"fixed steps .* another img_size \(e\.g\. 320\)"):
        vgg.check_train_size(320)
    vgg.check_train_size(300)
    assert vgg.min_size == 268
