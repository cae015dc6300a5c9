"""The shared head lays out its outputs exactly as torchvision's SSD head does (the anchors' order)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.ssd import SSDClassificationHead, SSDRegressionHead

from boxforge.models.backbones import TinyBackbone
from boxforge.models.heads import SharedConvHead


def test_shared_head_matches_torchvision_layout() -> None:
    """With no tower convs, the shared head is torchvision's per-level head with one conv copied to all levels."""
    channels, anchors, classes, levels = 8, 6, 4, 3
    shared = SharedConvHead(channels, anchors, classes, convs=0)
    for conv in (shared.cls_logits, shared.bbox_pred):
        nn.init.normal_(conv.weight)
        nn.init.normal_(conv.bias)
    cls_ref = SSDClassificationHead([channels] * levels, [anchors] * levels, classes)
    box_ref = SSDRegressionHead([channels] * levels, [anchors] * levels)
    for ref, conv in ((cls_ref, shared.cls_logits), (box_ref, shared.bbox_pred)):
        for level_conv in ref.module_list:
            level_conv.load_state_dict(conv.state_dict())
    features = [torch.randn(2, channels, s, s + 1) for s in (6, 3, 1)]
    out = shared(features)
    total = sum(f.shape[2] * f.shape[3] for f in features) * anchors
    assert out["cls_logits"].shape == (2, total, classes)
    assert out["bbox_regression"].shape == (2, total, 4)
    assert torch.allclose(out["cls_logits"], cls_ref(features), atol=1e-5)
    assert torch.allclose(out["bbox_regression"], box_ref(features), atol=1e-5)


def test_tiny_backbone_strides_and_size() -> None:
    body = TinyBackbone().eval()
    with torch.no_grad():
        maps = body(torch.rand(1, 3, 320, 320))
    assert [m.shape[-1] for m in maps.values()] == [40, 20, 10, 5]
    assert [m.shape[1] for m in maps.values()] == body.out_channels
    assert sum(p.numel() for p in body.parameters()) < 2_000_000
