"""Feature extractors for the boxforge-made detectors (`ssd_tiny`, `ssd_mobilenet_fpn`).

Each returns an `OrderedDict[str, Tensor]` of feature maps, finest first, as torchvision's
`SSD` expects; `out_channels` lists their channel counts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

# ssd_tiny stages: (output channels, number of 3x3 convs); the first conv of every stage has
# stride 2. Stages 0-1 only reduce (to stride 8); stages 2.. each yield one feature map.
TINY_STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (64, 3), (128, 2), (128, 2), (128, 2))
TINY_FIRST_OUTPUT = 2


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Plain conv/BN/ReLU stages; feature maps at strides 8, 16, 32, 64 (40, 20, 10, 5 cells at 320 px).

    Why this shape: the stem reaches stride 8 cheaply with few channels, and every later stage
    has two convs, so the receptive field (about 70, 135, 260, 520 px with the 3x3 head) stays
    larger than the anchors assigned to that map (7-11%, 18-26%, 38-48%, 60-73% of the image).
    About 1.1 M parameters and 0.4 GMAC (0.8 GFLOP) at 320 x 320.
    """

    def __init__(self, stages: Sequence[tuple[int, int]] = TINY_STAGES, first_output: int = TINY_FIRST_OUTPUT) -> None:
        super().__init__()
        blocks, cin = [], 3
        for cout, convs in stages:
            layers = [conv_bn_relu(cin, cout, stride=2)] + [conv_bn_relu(cout, cout) for _ in range(convs - 1)]
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(blocks)
        self.first_output = first_output
        self.out_channels = [cout for cout, _ in stages[first_output:]]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, H, W) normalised images -> {"0": (B, 64, H/8, W/8), ..., "3": (B, 128, H/64, W/64)}."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= self.first_output:
                out[str(len(out))] = x
        return out


class MobileNetFPN(nn.Module):
    """MobileNet `features` + FeaturePyramidNetwork over C3, C4, C5 + two extra levels (P6, P7).

    `body` is the torchvision `features` Sequential, kept whole so its state-dict keys are the
    classification model's (`body.<i>.*` <-> `features.<i>.*`); `taps` are the indexes of the
    blocks whose outputs are C3 (stride 8), C4 (16) and C5 (32). Output: five maps
    {"0".."4"}, each (B, fpn_channels, H/s, W/s) for s = 8, 16, 32, 64, 128.
    """

    def __init__(self, body: nn.Sequential, taps: Sequence[int], in_channels: Sequence[int], fpn_channels: int) -> None:
        super().__init__()
        if len(taps) != len(in_channels):
            raise ValueError(f"taps {list(taps)} and in_channels {list(in_channels)} differ in length")
        self.body = body
        self.taps = tuple(taps)
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels,
                                         extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
                                         norm_layer=nn.BatchNorm2d)
        self.out_channels = [fpn_channels] * (len(taps) + 2)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        picked: OrderedDict[str, Tensor] = OrderedDict()
        for i, block in enumerate(self.body):
            x = block(x)
            if i in self.taps:
                picked[f"c{len(picked) + 3}"] = x
            if i == self.taps[-1]:
                break
        pyramid = self.fpn(picked)
        return OrderedDict((str(i), v) for i, v in enumerate(pyramid.values()))
