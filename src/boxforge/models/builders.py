"""What every detection builder shares: argument checks, SSD options, backbone and whole-model weights.

The builders (models/ssd.py, models/yolo.py) each return a `Detector`; their common keyword-only
arguments:

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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from boxforge.errors import BoxforgeError, ModelError
from boxforge.models.detector import Detector
from boxforge.models.transfer import load_matching
from boxforge.models.weights import resolve_state_dict

EVAL_DEFAULTS: dict[str, Any] = {"score_thresh": 0.01, "nms_thresh": 0.45, "detections_per_img": 100}
SSD_OPTIONS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates",
                                "iou_thresh", "positive_fraction", "image_mean", "image_std")
WeightsArg = str | Path | None


def check_common(name: str, num_classes: int, class_names: Sequence[str] | None, img_size: int,
                 minimum: int) -> list[str]:
    """Validate the arguments every builder shares; return the class names."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"{name}: num_classes={num_classes!r}; allowed: an integer >= 1 (without background)")
    names = [f"class{i}" for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ModelError(f"{name}: {len(names)} class_names for num_classes={num_classes}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < minimum:
        raise ModelError(f"{name}: img_size={img_size!r}; allowed: an integer >= {minimum}")
    return names


def ssd_options(name: str, kwargs: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """EVAL_DEFAULTS + model defaults + the caller's kwargs, refusing names SSD does not take."""
    unknown = sorted(set(kwargs) - set(SSD_OPTIONS))
    if unknown:
        raise ModelError(f"{name}: unknown option(s) {', '.join(unknown)}; choose from: {', '.join(SSD_OPTIONS)}")
    return {**EVAL_DEFAULTS, **(defaults or {}), **kwargs}


def load_backbone(net: nn.Module, spec: WeightsArg, enum: Any, name: str) -> bool:
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


def finish(model: nn.Module, *, name: str, names: list[str], img_size: int, backbone: Sequence[str],
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
