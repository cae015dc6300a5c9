"""An anchor-free, dense-convolution detector in the YOLO family, written for CPU budgets.

Why a second architecture next to SSD: depthwise-separable backbones (MobileNet, SSDLite) do
few FLOPs but use a CPU's vector units poorly; plain 3x3 convolutions do several times the
useful work per second on the same two cores. The parts follow the published designs:

* backbone: strided 3x3 convolutions and cross-stage-partial stages (CSPNet, Wang et al. 2019)
  whose bottleneck outputs are all concatenated (as in ELAN), ending in spatial pyramid
  pooling by three chained 5x5 max-pools;
* neck: a path-aggregation network (PANet, Liu et al. 2018): top-down then bottom-up fusion,
  giving maps at strides 8, 16 and 32;
* head: decoupled box and class branches per level; boxes as distances from the cell centre to
  the four sides, each a discrete distribution over `reg_max` bins (Generalized Focal Loss,
  Li et al. 2020) read out as its expectation.

Training targets (task-aligned assignment, TOOD, Feng et al. 2021) and losses live in
`dense_loss.py`. Everything is our own code.

The interface is the torchvision SSD's, so `Detector`, evaluation, prediction and export treat
both alike: `forward(images, targets)` returns a loss dict in train mode and a list of
{"boxes", "scores", "labels"} in eval mode, labels 1-based (slot 0 is "background" in the SSD
convention `Detector` translates; this model has no background class and just shifts by one);
images are resized to `img_size` and normalised inside by torchvision's GeneralizedRCNNTransform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms

from boxforge.models.dense_loss import DenseLoss

STRIDES: tuple[int, int, int] = (8, 16, 32)
# scale: (width multiplier, depth multiplier); channels 64..1024 and stage depths 3, 6, 6, 3 before scaling.
SCALES: dict[str, tuple[float, float]] = {"n": (0.25, 0.34), "s": (0.5, 0.34), "m": (0.75, 0.67)}
BASE_CHANNELS = (64, 128, 256, 512, 1024)
BASE_DEPTHS = (3, 6, 6, 3)


def scaled_widths(scale: str) -> list[int]:
    """Channels of the stem and the four stages at `scale` (multiples of 8); the neck uses the last three."""
    return [max(8, int(round(c * SCALES[scale][0] / 8)) * 8) for c in BASE_CHANNELS]


class ConvBnAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + SiLU: the unit every block is made of."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03), nn.SiLU(inplace=True))


class Bottleneck(nn.Module):
    """Two 3x3 convolutions, with a residual connection when `shortcut`."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = ConvBnAct(channels, channels, 3), ConvBnAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPStage(nn.Module):
    """Cross-stage partial stage: split into two halves, run `depth` bottlenecks on one, concatenate
    the untouched half, the input of the chain and every bottleneck's output, then mix with a 1x1."""

    def __init__(self, c_in: int, c_out: int, depth: int, shortcut: bool) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.split = ConvBnAct(c_in, 2 * self.hidden)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(depth))
        self.fuse = ConvBnAct((2 + depth) * self.hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.split(x).split(self.hidden, dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.fuse(torch.cat(parts, dim=1))


class PyramidPool(nn.Module):
    """Spatial pyramid pooling as three chained 5x5 max-pools (receptive fields 5, 9, 13), concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.reduce = ConvBnAct(c_in, c_in // 2)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.fuse = ConvBnAct(c_in // 2 * 4, c_out)

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.reduce(x)]
        for _ in range(3):
            outs.append(self.pool(outs[-1]))
        return self.fuse(torch.cat(outs, dim=1))


class CSPBackbone(nn.Module):
    """Stem + four downsampling stages; returns the stride-8, 16 and 32 maps."""

    def __init__(self, channels: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        c = list(channels)
        self.stem = ConvBnAct(3, c[0], 3, 2)
        self.stage1 = nn.Sequential(ConvBnAct(c[0], c[1], 3, 2), CSPStage(c[1], c[1], depths[0], True))
        self.stage2 = nn.Sequential(ConvBnAct(c[1], c[2], 3, 2), CSPStage(c[2], c[2], depths[1], True))
        self.stage3 = nn.Sequential(ConvBnAct(c[2], c[3], 3, 2), CSPStage(c[3], c[3], depths[2], True))
        self.stage4 = nn.Sequential(ConvBnAct(c[3], c[4], 3, 2), CSPStage(c[4], c[4], depths[3], True),
                                    PyramidPool(c[4], c[4]))

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        return [p3, p4, self.stage4(p4)]


class Lite0Pyramid(nn.Module):
    """An EfficientNet-Lite0 (models/efficientnet_lite.py) as a pyramid: its stride-8, 16 and 32 maps
    (40, 112 and 320 channels), each mapped by a 1x1 ConvBnAct to the widths the neck expects.

    The reason to have it: ImageNet weights for it install offline (boxforge[pretrained]), and a
    pretrained backbone is what a couple of hundred images need most. `features` keeps the network's
    keys, so --freeze backbone (`backbone.features`) freezes exactly the pretrained tensors.
    """

    TAPS = (5, 11, 16)  # features[i] after which the map is taken: the last block at stride 8, 16, 32
    CHANNELS = (40, 112, 320)

    def __init__(self, net: nn.Module, widths: Sequence[int]) -> None:
        super().__init__()
        self.features = net.features[: self.TAPS[-1] + 1]  # the 1280-channel head conv is not needed
        self.lateral = nn.ModuleList(ConvBnAct(c, w) for c, w in zip(self.CHANNELS, widths))

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                maps.append(x)
        return [lateral(m) for lateral, m in zip(self.lateral, maps)]


class PathAggregation(nn.Module):
    """PANet neck: top-down (upsample + concat) then bottom-up (strided conv + concat) fusion."""

    def __init__(self, c3: int, c4: int, c5: int, depth: int) -> None:
        super().__init__()
        self.top4 = CSPStage(c5 + c4, c4, depth, False)
        self.top3 = CSPStage(c4 + c3, c3, depth, False)
        self.down3 = ConvBnAct(c3, c3, 3, 2)
        self.bottom4 = CSPStage(c3 + c4, c4, depth, False)
        self.down4 = ConvBnAct(c4, c4, 3, 2)
        self.bottom5 = CSPStage(c4 + c5, c5, depth, False)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p3, p4, p5 = feats
        t4 = self.top4(torch.cat([F.interpolate(p5, size=p4.shape[-2:], mode="nearest"), p4], dim=1))
        n3 = self.top3(torch.cat([F.interpolate(t4, size=p3.shape[-2:], mode="nearest"), p3], dim=1))
        n4 = self.bottom4(torch.cat([self.down3(n3), t4], dim=1))
        n5 = self.bottom5(torch.cat([self.down4(n4), p5], dim=1))
        return [n3, n4, n5]


class DecoupledHead(nn.Module):
    """Per level: a box branch (4 x reg_max distance logits) and a class branch (one logit per class)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, reg_max: int, img_size: int) -> None:
        super().__init__()
        box_c = max(16, in_channels[0] // 4, 4 * reg_max)
        cls_c = max(in_channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(ConvBnAct(c, box_c, 3), ConvBnAct(box_c, box_c, 3),
                                               nn.Conv2d(box_c, 4 * reg_max, 1)) for c in in_channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvBnAct(c, cls_c, 3), ConvBnAct(cls_c, cls_c, 3),
                                               nn.Conv2d(cls_c, num_classes, 1)) for c in in_channels)
        for branch, stride in zip(self.cls, STRIDES):
            # Prior: a few objects per image spread over the cells, so the first steps are not
            # swamped by the loss of thousands of confident false positives (focal-loss-style init).
            cells = max(1.0, (img_size / stride) ** 2)
            prior = min(0.5, 5.0 / num_classes / cells)
            nn.init.constant_(branch[-1].bias, math.log(prior / (1 - prior)))
        for branch in self.box:
            nn.init.constant_(branch[-1].bias, 1.0)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> box logits (B, A, 4 * reg_max), class logits (B, A, C); A = cells of all levels, level by level."""
        boxes = [b(f).flatten(2) for b, f in zip(self.box, feats)]
        classes = [c(f).flatten(2) for c, f in zip(self.cls, feats)]
        return torch.cat(boxes, 2).transpose(1, 2), torch.cat(classes, 2).transpose(1, 2)


def cell_centres(feats: list[Tensor], strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(A, 2) cell centres (x, y) in input pixels and (A,) strides, in the head's level order."""
    points, steps = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[-2:]
        ys = (torch.arange(h, device=feat.device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=feat.device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], 1))
        steps.append(torch.full((h * w,), float(stride), device=feat.device))
    return torch.cat(points), torch.cat(steps)


def expected_distances(box_logits: Tensor, reg_max: int) -> Tensor:
    """(B, A, 4 * reg_max) logits -> (B, A, 4) expected left/top/right/bottom distances in stride units."""
    probs = box_logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, device=box_logits.device, dtype=probs.dtype)
    return probs @ bins


def distances_to_boxes(dist: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """(B, A, 4) ltrb distances in stride units -> (B, A, 4) xyxy pixels."""
    scaled = dist * strides[:, None]
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], dim=-1)


class DenseDetector(nn.Module):
    """Backbone + neck + head + loss, with the SSD's interface (see the module docstring).

    num_classes: foreground classes (no background). backbone: None for the CSP backbone, or a module
    giving the three maps at the scale's widths (Lite0Pyramid). score_thresh, nms_thresh,
    detections_per_img, topk_candidates: eval-time filtering, as torchvision's SSD
    (per class: score > score_thresh, the topk_candidates best, then class-wise NMS and the
    detections_per_img best overall).
    """

    def __init__(self, num_classes: int, img_size: int, *, scale: str = "n", reg_max: int = 16,
                 backbone: nn.Module | None = None,
                 image_mean: Sequence[float] = (0.0, 0.0, 0.0), image_std: Sequence[float] = (1.0, 1.0, 1.0),
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, detections_per_img: int = 100,
                 topk_candidates: int = 300) -> None:
        super().__init__()
        channels, depths = scaled_widths(scale), [max(1, round(d * SCALES[scale][1])) for d in BASE_DEPTHS]
        self.num_classes, self.reg_max, self.img_size = num_classes, reg_max, img_size
        self.transform = GeneralizedRCNNTransform(img_size, img_size, list(image_mean), list(image_std),
                                                  size_divisible=1, fixed_size=(img_size, img_size))
        # `backbone`: a pretrained network returning the stride-8/16/32 maps at channels[2:] (Lite0Pyramid)
        self.backbone = backbone if backbone is not None else CSPBackbone(channels, depths)
        self.neck = PathAggregation(channels[2], channels[3], channels[4], depths[0])
        self.head = DecoupledHead(channels[2:], num_classes, reg_max, img_size)
        self.loss = DenseLoss(num_classes, reg_max)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        feats = self.neck(self.backbone(x))
        box_logits, cls_logits = self.head(feats)
        points, strides = cell_centres(feats, STRIDES)
        return box_logits, cls_logits, points, strides

    def raw_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (B, 3, S, S) -> boxes (B, A, 4) xyxy pixels clipped to the image, scores (B, A, C).

        The whole network in one batched graph, before any filtering: what export traces.
        """
        box_logits, cls_logits, points, strides = self._heads(x)
        boxes = distances_to_boxes(expected_distances(box_logits.float(), self.reg_max), points, strides)
        h, w = x.shape[-2:]
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
        return boxes, cls_logits.float().sigmoid()

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.transform(images, targets)
        if self.training:
            if targets is None:
                raise ValueError("DenseDetector in train mode needs targets")
            box_logits, cls_logits, points, strides = self._heads(batch.tensors)
            box_logits = box_logits.float()
            pred_boxes = distances_to_boxes(expected_distances(box_logits, self.reg_max), points, strides)
            return self.loss(box_logits, pred_boxes, cls_logits.float(), points, strides,
                             [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets])
        boxes, scores = self.raw_outputs(batch.tensors)
        detections = [self._filter(b, s) for b, s in zip(boxes, scores)]
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def _filter(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """torchvision SSD's post-processing on one image: per-class top-k above the threshold, NMS, best K."""
        keep_boxes, keep_scores, keep_labels = [], [], []
        for label in range(scores.shape[1]):
            score = scores[:, label]
            idx = torch.nonzero(score > self.score_thresh).flatten()
            top = score[idx].topk(min(int(self.topk_candidates), idx.numel()))
            idx = idx[top.indices]
            keep_boxes.append(boxes[idx])
            keep_scores.append(top.values)
            keep_labels.append(torch.full_like(idx, label + 1))
        all_boxes, all_scores, all_labels = torch.cat(keep_boxes), torch.cat(keep_scores), torch.cat(keep_labels)
        keep = batched_nms(all_boxes, all_scores, all_labels, self.nms_thresh)[: int(self.detections_per_img)]
        return {"boxes": all_boxes[keep], "scores": all_scores[keep], "labels": all_labels[keep]}
