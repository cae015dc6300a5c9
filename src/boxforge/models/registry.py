"""The one table of models: name -> typed builder, and name -> task.

Adding a model means adding one line to each dict; nothing registers itself on import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from boxforge.models import classification, detection

MODELS: dict[str, Callable[..., nn.Module]] = {
    "ssd300_vgg16": detection.ssd300_vgg16,
    "ssdlite320_mobilenet_v3_large": detection.ssdlite320_mobilenet_v3_large,
    "ssd_mobilenet_fpn": detection.ssd_mobilenet_fpn,
    "ssd_tiny": detection.ssd_tiny,
    "ssdlite_efficientnet_lite0": detection.ssdlite_efficientnet_lite0,
    "yolo_csp": detection.yolo_csp,
    "yolo_efficientnet_lite0": detection.yolo_efficientnet_lite0,
    "mobilenet_v2": classification.mobilenet_v2,
    "shufflenet_v2_x1_0": classification.shufflenet_v2_x1_0,
    "resnet18": classification.resnet18,
    "resnet50": classification.resnet50,
}

MODEL_TASKS: dict[str, str] = {
    "ssd300_vgg16": "detect",
    "ssdlite320_mobilenet_v3_large": "detect",
    "ssd_mobilenet_fpn": "detect",
    "ssd_tiny": "detect",
    "ssdlite_efficientnet_lite0": "detect",
    "yolo_csp": "detect",
    "yolo_efficientnet_lite0": "detect",
    "mobilenet_v2": "classify",
    "shufflenet_v2_x1_0": "classify",
    "resnet18": "classify",
    "resnet50": "classify",
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` with the builder's keyword arguments (num_classes=..., weights=..., ...)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def models_for(task: str) -> list[str]:
    """Model names for task "detect" or "classify", sorted."""
    if task not in {"detect", "classify"}:
        raise ValueError(f"unknown task {task!r}; choose one of: classify, detect")
    return sorted(n for n, t in MODEL_TASKS.items() if t == task)
