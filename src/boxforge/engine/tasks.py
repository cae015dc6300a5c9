"""What differs between training a detector and a classifier, behind one small seam.

`fit()` runs one loop for every task; a task object supplies the parts that differ:
the training dataset (transforms) and its collate, moving a batch to the device (and
mixing it, for MixUp/CutMix), the loss dict from the model's output, a description of
a bad batch, validation metrics and the metric that chooses best.pt.

    detect:   targets = list of {"boxes", "labels", "image_id"} dicts; loss from the detector itself;
              best.pt by VOC12 mAP.
    classify: targets = (B,) int64 class indexes, or (B, C) soft labels after MixUp/CutMix;
              cross-entropy (with label smoothing) of the (B, C) logits; best.pt by Acc@1.

Randomness: MixUp/CutMix draw from torch's global RNG in the training process (not in data
workers), and that RNG state is in every checkpoint, so exact resume holds for them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from boxforge.config import TrainConfig
from boxforge.data.index import DatasetIndex
from boxforge.data.device_augment import PARAMS_KEY, SSDDraw, SSDRecipe, apply_ssd
from boxforge.data.loading import ClassificationDataset, DetectionDataset, detection_collate
from boxforge.data.transforms import classification_transforms, detection_transforms
from boxforge.errors import BoxforgeError
from boxforge.evaluation import BEST_METRIC, DETECT_BEST

TASKS: tuple[str, ...] = ("detect", "classify")


class Task(Protocol):
    name: str
    best_key: str  # key of validate()'s metrics that picks best.pt (higher is better)
    best_label: str  # how the log names it
    collate: Callable[[list[Any]], Any] | None

    def train_dataset(self, index: DatasetIndex, img_size: int) -> Dataset: ...

    def to_device(self, images: Any, targets: Any, device: torch.device) -> tuple[Any, Any]: ...

    def losses(self, model: nn.Module, images: Any, targets: Any, *, size: int | None = None) -> dict[str, Tensor]:
        """`size`: this batch's --multi-scale input size (None: the model's own)."""

    def describe_batch(self, targets: Any) -> str: ...

    def validate(self, model: nn.Module, index: DatasetIndex, *, device: torch.device,
                 batch_size: int) -> dict[str, float]:
        """Metrics on `index` through inference's batch runner, in float32, as `eval` computes them."""


def resolve_task(cfg: TrainConfig) -> str:
    """--task if given (it must agree with the model), else the model's task from the registry."""
    from boxforge.models import MODELS, models_for

    model_task = MODELS[cfg.model].task if cfg.model in MODELS else None
    if cfg.task is None:
        return model_task or "detect"
    if cfg.task not in TASKS:
        raise BoxforgeError(f"--task {cfg.task!r}; choose one of: {', '.join(TASKS)}")
    if model_task is not None and model_task != cfg.task:
        raise BoxforgeError(f"--task {cfg.task} with --model {cfg.model}, a {model_task} model; "
                            f"{cfg.task} models: {', '.join(models_for(cfg.task))}")
    return cfg.task


def make_task(cfg: TrainConfig, classes: list[str], device: torch.device | None = None) -> Task:
    """The task object for this run; `classes` are the dataset's (and the model's) class names; `device` the
    training device (None: not known, e.g. a plan; --gpu-augment auto is then off)."""
    name = resolve_task(cfg)
    return ClassifyTask(cfg, len(classes)) if name == "classify" else DetectTask(cfg, device)


def augment_on_device(cfg: TrainConfig, device: torch.device | None) -> bool:
    """--gpu-augment: on, off, or auto: on only when training on CUDA without --mosaic.

    Off on CPU by default, so CPU runs keep the worker path exactly (on CPU the device path gives the same
    numbers but moves the pixel work from the workers into the training process, which only pays on a GPU).
    With --mosaic the canvas is built and resized in the worker anyway, so auto leaves that recipe alone.
    """
    if cfg.gpu_augment == "auto":
        return device is not None and device.type == "cuda" and cfg.mosaic == 0
    return cfg.gpu_augment == "on"


def check_index_task(task: Task, index: DatasetIndex, what: str) -> None:
    if index.task != task.name:
        hint = ("a folder per class (ImageFolder) or an imagenet_txt list" if task.name == "classify"
                else "boxes (VOC, COCO, YOLO or txt)")
        raise BoxforgeError(f"{index.root}: the {what} data is a {index.task} dataset ({index.format}) but the "
                            f"run trains a {task.name} model; it needs {hint}")


class DetectTask:
    """SSD-style detectors: the model computes its own losses from (images, targets)."""

    name = "detect"
    best_key, best_label = BEST_METRIC["detect"]
    collate = staticmethod(detection_collate)

    def __init__(self, cfg: TrainConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.best_key, self.best_label = DETECT_BEST[cfg.best_metric]
        if cfg.gpu_augment == "on" and cfg.mosaic > 0:
            raise BoxforgeError(f"--gpu-augment on with --mosaic {cfg.mosaic:g}: the mosaic canvas is built in the "
                                "data workers from augmented images; use one or the other (auto leaves mosaic "
                                "runs on the worker path)")
        self.augment_on_device = augment_on_device(cfg, device)
        self.recipe: SSDRecipe | None = None  # set by train_dataset when the augmentation runs in to_device

    def train_dataset(self, index: DatasetIndex, img_size: int) -> Dataset:
        """The SSD recipe per sample in the workers; with --gpu-augment on, the workers only draw its parameters
        (SSDDraw) and `to_device` applies them (data/device_augment.py)."""
        from boxforge.data.cache import attach_cache
        from boxforge.data.mosaic import MosaicDataset

        transform: Any = detection_transforms(True, img_size)
        if self.augment_on_device:
            self.recipe = SSDRecipe.from_compose(transform)
            transform = SSDDraw(self.recipe)
        dataset = DetectionDataset(index, transform, strict=self.cfg.strict_data)
        attach_cache(dataset, self.cfg.cache, img_size, workers=self.cfg.workers)
        return MosaicDataset(dataset, img_size, self.cfg.mosaic) if self.cfg.mosaic > 0 else dataset

    def to_device(self, images: Any, targets: list[dict[str, Any]], device: torch.device) -> tuple[Any, Any]:
        if self.recipe is not None and targets and PARAMS_KEY in targets[0]:
            images = images.to(device, non_blocking=True) if isinstance(images, Tensor) else images
            images, targets = apply_ssd(list(images), targets, self.recipe, device)
            return images, [{"boxes": t["boxes"], "labels": t["labels"], "image_id": t["image_id"]} for t in targets]
        images = (images.to(device, non_blocking=True) if isinstance(images, Tensor)
                  else [im.to(device) for im in images])
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device), "image_id": t["image_id"]}
                   for t in targets]
        return images, targets

    def losses(self, model: nn.Module, images: Any, targets: Any, *, size: int | None = None) -> dict[str, Tensor]:
        """The detector resizes the batch to `size` itself (Detector.forward), so anchors and targets follow it."""
        return model(images, targets) if size is None else model(images, targets, size=size)

    def describe_batch(self, targets: list[dict[str, Any]]) -> str:
        return "last batch: " + ", ".join(t["image_id"] for t in targets)

    def validate(self, model: nn.Module, index: DatasetIndex, *, device: torch.device,
                 batch_size: int) -> dict[str, float]:
        from boxforge.engine.validate import validate

        return validate(model, index, device=device, batch_size=batch_size)


def mixup_cutmix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> nn.Module | None:
    """torchvision references' batch mixing: MixUp and/or CutMix, one of them chosen per batch."""
    choices: list[nn.Module] = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class ClassifyTask:
    """torchvision classifiers: logits (B, C), cross-entropy with label smoothing, MixUp/CutMix."""

    name = "classify"
    best_key, best_label = BEST_METRIC["classify"]
    collate = None  # torch's default: (B, 3, S, S) float images, (B,) int64 labels

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        if cfg.gpu_augment == "on":
            raise BoxforgeError("--gpu-augment on is for detectors (the SSD recipe); a classifier's recipe runs in "
                                "the data workers; allowed here: auto or off")
        if cfg.freeze:
            raise BoxforgeError(f"--freeze {cfg.freeze} is for detectors; to fine-tune only a classifier's last "
                                "layer, train it with a small --lr instead")
        if cfg.best_metric != "voc12":
            raise BoxforgeError(f"--best-metric {cfg.best_metric} is for detectors; a classifier's best.pt is chosen "
                                "by Acc@1")
        if cfg.multi_scale:
            raise BoxforgeError("--multi-scale is for detectors; a classifier already sees objects at many scales "
                                "through RandomResizedCrop (--crop-scale sets the smallest area it keeps)")
        self.cfg = cfg
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.mix = mixup_cutmix(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes)

    def train_dataset(self, index: DatasetIndex, img_size: int) -> Dataset:
        transform = classification_transforms(True, img_size, auto_augment=self.cfg.auto_augment,
                                              random_erase=self.cfg.random_erase,
                                              crop_scale=(self.cfg.crop_scale, 1.0))
        from boxforge.data.cache import attach_cache

        dataset = ClassificationDataset(index, transform, strict=self.cfg.strict_data)
        attach_cache(dataset, self.cfg.cache, img_size, workers=self.cfg.workers)
        return dataset

    def to_device(self, images: Tensor, targets: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        images = images.as_subclass(Tensor).to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.mix is not None:
            images, targets = self.mix(images, targets)
        return images, targets

    def losses(self, model: nn.Module, images: Tensor, targets: Tensor, *, size: int | None = None) -> dict[str, Tensor]:
        if size is not None:
            raise BoxforgeError("--multi-scale: classifiers train at one input size; it is for detectors")
        logits = model(images)
        return {"classification": self.criterion(logits.float(), targets)}

    def describe_batch(self, targets: Tensor) -> str:
        return f"last batch: {len(targets)} images"

    def validate(self, model: nn.Module, index: DatasetIndex, *, device: torch.device,
                 batch_size: int) -> dict[str, float]:
        """loss, acc1, acc5 (percent) on `index`, centre-cropped as `eval` does (resize S/0.875, crop S)."""
        from boxforge.engine.validate import validate_classifier

        return validate_classifier(model, index, device=device, batch_size=batch_size, workers=self.cfg.workers)
