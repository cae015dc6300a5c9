"""A weight-shared SSD head, as in the MindSpore `ssd_mobilenet_v1_fpn` recipe ("WeightSharedMultiBox").

Why shared: on an FPN every level has the same channels and the same meaning, so one set of
convs serves all levels; the head is then as cheap to train on 5 levels as on one, and every
level learns from every object. It returns what torchvision's `SSD` expects from its head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _tower(channels: int, convs: int) -> nn.Sequential:
    """`convs` x (3x3 conv + GroupNorm + ReLU). GroupNorm, not BatchNorm: the same layers see every
    pyramid level, and batch statistics pooled over levels of very different scale would mislead."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                   nn.GroupNorm(math.gcd(32, channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SharedConvHead(nn.Module):
    """Classification and box towers shared across pyramid levels.

    Input: a list of L maps (B, channels, H_l, W_l). Output:
    {"cls_logits": (B, sum_l H_l*W_l*A, num_classes), "bbox_regression": (B, sum_l H_l*W_l*A, 4)},
    ordered level, then row, then column, then anchor: the order of `DefaultBoxGenerator`.
    `num_classes` includes the background slot.
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, convs: int = 2) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.cls_tower = _tower(channels, convs)
        self.box_tower = _tower(channels, convs)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @staticmethod
    def _flatten(x: Tensor, columns: int) -> Tensor:
        """(B, A*K, H, W) -> (B, H*W*A, K)."""
        b, _, h, w = x.shape
        return x.view(b, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, columns)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        cls = [self._flatten(self.cls_logits(self.cls_tower(f)), self.num_classes) for f in features]
        box = [self._flatten(self.bbox_pred(self.box_tower(f)), 4) for f in features]
        return {"cls_logits": torch.cat(cls, dim=1), "bbox_regression": torch.cat(box, dim=1)}
