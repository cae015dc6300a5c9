"""load_matching for a new class list, freeze_backbone with frozen BatchNorm, and the Detector label shift."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from boxforge.models import Detector, TransferReport, freeze_backbone, get_model, load_matching
from tests.models.conftest import tiny_batch


def test_load_matching_to_another_class_count() -> None:
    source = get_model("ssd_tiny", num_classes=5, img_size=96)
    model = get_model("ssd_tiny", num_classes=3, img_size=96)
    own_cls = model.model.head.classification_head.module_list[0].weight.clone()
    report = load_matching(model, source.state_dict())

    cls_names = {n for n in model.state_dict() if n.startswith("model.head.classification_head.")}
    assert set(report.reinitialised) == cls_names == set(report.shape_mismatch)
    assert len(report.transferred) == report.total - len(cls_names)
    assert str(report).startswith(f"transferred {report.total - len(cls_names)}/{report.total} tensors; "
                                  "re-initialised: model.head.classification_head.module_list.0.weight")
    for name, value in source.model.backbone.state_dict().items():
        assert torch.equal(model.model.backbone.state_dict()[name], value), name
    assert torch.equal(model.model.head.regression_head.module_list[0].weight,
                       source.model.head.regression_head.module_list[0].weight)
    assert torch.equal(model.model.head.classification_head.module_list[0].weight, own_cls)


def test_load_matching_accepts_torchvision_and_backbone_layouts() -> None:
    source = get_model("ssd_tiny", num_classes=3, img_size=96)
    model = get_model("ssd_tiny", num_classes=3, img_size=96)
    assert not load_matching(model, source.model.state_dict()).reinitialised  # no "model." prefix
    bare = source.model.backbone.__class__()
    assert not load_matching(bare, source.state_dict()).reinitialised  # "model.backbone." stripped


def test_report_truncates_long_lists() -> None:
    report = TransferReport(transferred=["a"], reinitialised=[f"t{i}" for i in range(20)])
    assert str(report) == "transferred 1/21 tensors; re-initialised: t0, t1, t2, t3, t4, t5, t6, t7, ... (+12 more)"


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def test_freeze_backbone_keeps_bn_statistics() -> None:
    images, targets = tiny_batch()
    control = get_model("ssd_tiny", num_classes=3, img_size=96).train()
    before = _bn_stats(control.model.backbone)
    control(images, targets)
    assert any(not torch.equal(a, b) for a, b in zip(before, _bn_stats(control.model.backbone)))

    model = get_model("ssd_tiny", num_classes=3, img_size=96)
    assert freeze_backbone(model) == sum(p.numel() for p in model.model.backbone.parameters())
    model.eval()
    model.train()  # must not wake the backbone's BatchNorm up again
    assert model.training and model.model.head.training
    assert not any(m.training for m in model.model.backbone.modules())
    assert all(not p.requires_grad for p in model.model.backbone.parameters())
    assert all(p.requires_grad for p in model.model.head.parameters())
    before = _bn_stats(model.model.backbone)
    sum(model(images, targets).values()).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model.model.backbone)))
    assert all(p.grad is None for p in model.model.backbone.parameters())
    assert model.model.head.regression_head.module_list[0].weight.grad is not None


def test_freeze_backbone_scope_per_model() -> None:
    fpn = get_model("ssd_mobilenet_fpn", num_classes=2, img_size=96, fpn_channels=32, head_convs=1)
    freeze_backbone(fpn)
    assert all(not p.requires_grad for p in fpn.model.backbone.body.parameters())
    assert all(p.requires_grad for p in fpn.model.backbone.fpn.parameters())  # the neck still learns
    with pytest.raises(TypeError, match="needs a boxforge Detector"):
        freeze_backbone(nn.Linear(2, 2))


class _FakeSSD(nn.Module):
    """Stands in for torchvision SSD: records the targets it gets, predicts labels 1..3 (background 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, images, targets=None):
        if self.training:
            self.seen = targets
            return {"classification": torch.tensor(0.0)}
        return [{"boxes": torch.zeros(3, 4), "scores": torch.ones(3), "labels": torch.tensor([1, 2, 3])}
                for _ in images]


def test_detector_shifts_labels_both_ways() -> None:
    fake = _FakeSSD()
    detector = Detector(fake, name="fake", class_names=["a", "b", "c"], img_size=64, backbone=["backbone"])
    detector.train()(torch.rand(1, 3, 32, 32), [{"boxes": torch.tensor([[1.0, 1, 9, 9], [2, 2, 8, 8]]),
                                               "labels": torch.tensor([0, 2])}])
    assert fake.seen[0]["labels"].tolist() == [1, 3]
    assert detector.eval()([torch.rand(3, 32, 32)])[0]["labels"].tolist() == [0, 1, 2]


def test_detector_rejects_bad_labels_and_missing_targets() -> None:
    detector = Detector(_FakeSSD(), name="fake", class_names=["a", "b", "c"], img_size=64, backbone=["backbone"])
    detector.train()
    with pytest.raises(ValueError, match=r"target 0: label 3 outside 0..2 \(3 classes: a, b, c\)"):
        detector([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="needs targets"):
        detector([torch.rand(3, 8, 8)])
    with pytest.raises(ValueError, match="unknown postprocess setting"):
        detector.set_postprocess(score=0.5)
