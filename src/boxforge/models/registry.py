"""The one table of models: name -> ModelSpec (builder, task, recipe, anchor layout).

Adding a model means adding one line here; nothing registers itself on import. The table names its
builders as "module:function" and imports them on first build, so the CLI and the settings read it
(model names, tasks, recipes) without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boxforge.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

TASKS: tuple[str, ...] = ("detect", "classify")


@dataclass(frozen=True)
class ModelSpec:
    """builder: "module:function" of a typed keyword-only builder (num_classes=..., weights=..., img_size=...).
    task: "detect" or "classify". recipe: the TrainConfig settings the model was designed with, used where
    neither the command line nor a YAML file says otherwise ("auto" amp: bfloat16 autocast where the CPU
    has it natively, or on CUDA). anchor_layout: (feature maps, default boxes per cell) of the models
    whose default boxes `--anchors auto` may fit; None for the rest."""

    builder: str
    task: str
    recipe: dict[str, Any] = field(default_factory=dict)
    anchor_layout: tuple[int, int] | None = None

    def build(self, **kwargs: Any) -> nn.Module:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(**kwargs)


SSD, YOLO, CLS = "boxforge.models.ssd", "boxforge.models.yolo", "boxforge.models.classification"
# yolo_csp is trained the way its family is: AdamW and an EMA of the weights; bf16 nearly doubles its steps
# per second on AVX512-BF16 CPUs; its input size follows the training boxes (models/input_size.py). So does the
# pretrained start's: on each of the accuracy suite's four sets (bench/accuracy_suite.py, seed 0, 15 min) the
# data's size beat a fixed 320 px on COCO AP (raccoon 256 px, 0.613 against 0.497-0.582 over three seeds;
# microcontroller 256 px, 0.833 against 0.719 / 0.780; dense_synth 352 px, 0.809 against 0.797; dense_tiles
# 416 px, 0.453 against 0.411).
YOLO_RECIPE: dict[str, Any] = {"optimizer": "adamw", "ema": True, "amp": "auto", "img_size": "auto"}

MODELS: dict[str, ModelSpec] = {
    "ssd300_vgg16": ModelSpec(f"{SSD}:ssd300_vgg16", "detect"),
    "ssdlite320_mobilenet_v3_large": ModelSpec(f"{SSD}:ssdlite320_mobilenet_v3_large", "detect"),
    "ssd_mobilenet_fpn": ModelSpec(f"{SSD}:ssd_mobilenet_fpn", "detect", anchor_layout=(5, 6)),
    "ssd_tiny": ModelSpec(f"{SSD}:ssd_tiny", "detect", anchor_layout=(4, 6)),
    "ssdlite_efficientnet_lite0": ModelSpec(f"{SSD}:ssdlite_efficientnet_lite0", "detect"),
    "yolo_csp": ModelSpec(f"{YOLO}:yolo_csp", "detect", dict(YOLO_RECIPE)),
    "yolo_efficientnet_lite0": ModelSpec(f"{YOLO}:yolo_efficientnet_lite0", "detect", dict(YOLO_RECIPE)),
    "mobilenet_v2": ModelSpec(f"{CLS}:mobilenet_v2", "classify"),
    "shufflenet_v2_x1_0": ModelSpec(f"{CLS}:shufflenet_v2_x1_0", "classify"),
    "resnet18": ModelSpec(f"{CLS}:resnet18", "classify"),
    "resnet50": ModelSpec(f"{CLS}:resnet50", "classify"),
}
DEFAULT_MODEL = "yolo_csp"


def spec(name: str) -> ModelSpec:
    """The ModelSpec of `name`; a one-line error listing the choices otherwise."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` with the builder's keyword arguments (num_classes=..., weights=..., ...)."""
    return spec(name).build(**kwargs)


def models_for(task: str) -> list[str]:
    """Model names for task "detect" or "classify", sorted."""
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; choose one of: {', '.join(sorted(TASKS))}")
    return sorted(n for n, s in MODELS.items() if s.task == task)
