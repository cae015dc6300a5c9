"""Classification builders: torchvision models with a class count of the dataset's choosing.

They return the plain torchvision module, `(B, 3, H, W) float -> (B, num_classes) logits` (input
normalised with the ImageNet mean/std), with `class_names`, `img_size`, `task = "classify"` and
`build_args` (what `get_model` needs to rebuild it from a checkpoint) attached. Named weights
(IMAGENET1K_V1, DEFAULT, ...) come from the local torch hub cache only, like the detectors'; with another class count the final layer
is left freshly initialised by `load_matching` (see the model's `transfer_report`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from boxforge.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxforge.errors import BoxforgeError, ModelError
from boxforge.models.transfer import load_matching
from boxforge.models.weights import resolve_state_dict

# name: (torchvision constructor, its weights enum)
TORCHVISION_CLASSIFIERS: dict[str, tuple[Callable[..., nn.Module], Any]] = {
    "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights),
    "shufflenet_v2_x1_0": (tvm.shufflenet_v2_x1_0, tvm.ShuffleNet_V2_X1_0_Weights),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
}


def build_classifier(name: str, *, num_classes: int, weights: str | Path | None = None,
                     weights_backbone: str | Path | None = None, img_size: int | None = None,
                     class_names: Sequence[str] | None = None) -> nn.Module:
    """Build torchvision classifier `name` with `num_classes` outputs and load `weights` if given."""
    if name not in TORCHVISION_CLASSIFIERS:
        raise ModelError(f"unknown classifier {name!r}; choose one of: {', '.join(TORCHVISION_CLASSIFIERS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"{name}: num_classes={num_classes!r}; allowed: an integer >= 1")
    if weights_backbone is not None:
        raise BoxforgeError(f"{name}: classifiers take --weights only, not --weights-backbone")
    names = [f"class{i}" for i in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ModelError(f"{name}: {len(names)} class_names for num_classes={num_classes}")
    make, enum = TORCHVISION_CLASSIFIERS[name]
    model = make(weights=None, num_classes=num_classes)
    model.class_names, model.img_size, model.transfer_report = names, img_size or 224, None
    model.task = "classify"
    # Weights are not part of the rebuild recipe: a checkpoint carries its own state dict.
    model.build_args = {"num_classes": num_classes, "img_size": model.img_size, "class_names": list(names)}
    state = resolve_state_dict(weights, enum=enum, model_name=name, role="weights")
    if state is not None:
        model.transfer_report = load_matching(model, state)
        if not model.transfer_report.transferred:
            raise BoxforgeError(f"{name}: weights {weights} share no tensor (same name and shape) with this model")
    return model


def _builder(name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, weights: str | Path | None = None, weights_backbone: str | Path | None = None,
              img_size: int | None = None, class_names: Sequence[str] | None = None) -> nn.Module:
        return build_classifier(name, num_classes=num_classes, weights=weights, weights_backbone=weights_backbone,
                                img_size=img_size, class_names=class_names)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision `{name}` with `num_classes` outputs; see `build_classifier`."
    return build


mobilenet_v2 = _builder("mobilenet_v2")
shufflenet_v2_x1_0 = _builder("shufflenet_v2_x1_0")
resnet18 = _builder("resnet18")
resnet50 = _builder("resnet50")


class ProbabilityModel(nn.Module):
    """(B, 3, S, S) float RGB in 0..1 -> (B, C) softmax probabilities: normalise, classify, softmax.

    What `predict`/`eval` run and exactly the graph `export` writes, so the three agree.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std).float().softmax(dim=1)
