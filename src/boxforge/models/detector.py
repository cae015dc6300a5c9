"""`Detector`: the one object the engine, evaluation and export talk to, whatever the architecture.

Label convention (one rule, everywhere outside this file): labels are 0-based dataset class
indexes, `0 .. num_classes - 1`, matching `class_names`. Inside, every boxforge detector is a
torchvision `SSD`, whose softmax reserves slot 0 for background; so `Detector.forward` adds 1
to target labels on the way in and subtracts 1 from predicted labels on the way out. Nothing
else in boxforge needs to know that the background slot exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD

from boxforge.errors import ModelError

LABEL_OFFSET = 1  # torchvision SSD: class 0 is background
POSTPROCESS_FIELDS: tuple[str, ...] = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")


class Detector(nn.Module):
    """A torchvision SSD plus what it needs to be used on its own: class names, input size, freezing.

    Train mode:  `forward(images, targets) -> {"bbox_regression": Tensor[], "classification": Tensor[]}`
                 (yolo_csp adds "bbox_distribution", its distribution focal loss)
    Eval mode:   `forward(images) -> [{"boxes": (N, 4) float32 xyxy pixels of the input image,
                                       "scores": (N,) float32, "labels": (N,) int64 0-based}, ...]`

    images: a list of (3, H, W) float tensors in 0..1 (sizes may differ) or one (B, 3, H, W)
    tensor; each is resized to `img_size` x `img_size` inside and boxes come back in the input's
    pixels. targets: one dict per image with "boxes" (N, 4) float xyxy pixels and "labels" (N,)
    int64 0-based; other keys (e.g. "difficult") are ignored.
    size (train mode only): resize to `size` x `size` instead for this call, boxes scaled alike
    (`train --multi-scale`); default boxes or grid cells then follow that size's feature maps.

    The state dict keys are the SSD's with a "model." prefix; `load_matching` accepts either form.
    """

    # fit() stores the weights channels-last: training steps on 2 cores, fp32, were faster for every detector
    # (bench/step_speed.py; bench/results/step_speed.json), ssdlite320 most (11.8 -> 18.7 img/s). The input
    # needs no conversion: a convolution with channels-last weights gives channels-last output.
    prefers_channels_last = True

    def __init__(self, model: SSD, *, name: str, class_names: Sequence[str], img_size: int,
                 backbone: Sequence[str], min_size: int = 64) -> None:
        """`backbone`: dotted names under `model` of the (pretrainable) feature extractor parts to freeze;
        `min_size`: the smallest input side the architecture accepts (the builder's lower bound for img_size)."""
        super().__init__()
        self.model = model
        self.name = name
        self.class_names = list(class_names)
        self.img_size = int(img_size)
        self.min_size = int(min_size)
        self._backbone_names = tuple(backbone)
        self.frozen_backbone = False
        self.transfer_report = None  # a TransferReport, set by the builder when weights were loaded
        self.build_args: dict[str, Any] = {}  # get_model(name, **build_args) rebuilds this architecture
        for dotted in self._backbone_names:
            model.get_submodule(dotted)  # fail at build time, not at freeze time

    @property
    def num_classes(self) -> int:
        """Dataset classes, without background."""
        return len(self.class_names)

    def backbone_modules(self) -> list[nn.Module]:
        """The modules `freeze_backbone` freezes: the feature extractor, not the neck or head."""
        return [self.model.get_submodule(dotted) for dotted in self._backbone_names]

    def train(self, mode: bool = True) -> Detector:
        """Like `nn.Module.train`, but a frozen backbone stays in eval mode (BatchNorm stats fixed)."""
        super().train(mode)
        if self.frozen_backbone:
            for module in self.backbone_modules():
                module.eval()
        return self

    def postprocess_settings(self) -> dict[str, float | int]:
        """The eval-time filtering in effect: score_thresh, nms_thresh, detections_per_img, topk_candidates."""
        return {key: getattr(self.model, key) for key in POSTPROCESS_FIELDS}

    def set_postprocess(self, **settings: float | int) -> None:
        """Change eval-time filtering, e.g. `set_postprocess(score_thresh=0.3)` for a demo, 0.001 for mAP."""
        unknown = sorted(set(settings) - set(POSTPROCESS_FIELDS))
        if unknown:
            raise ModelError(f"unknown postprocess setting(s) {', '.join(unknown)}; "
                             f"choose from: {', '.join(POSTPROCESS_FIELDS)}")
        for key, value in settings.items():
            setattr(self.model, key, value)

    def check_train_size(self, size: int) -> None:
        """ValueError unless a training batch may be resized to `size` x `size` (see `forward`'s size)."""
        if size < self.min_size:
            raise ModelError(f"{self.name}: a training size of {size} px is below its smallest input, "
                             f"{self.min_size} px")
        steps = getattr(getattr(self.model, "anchor_generator", None), "steps", None)
        if steps is not None and size != self.img_size:
            raise ModelError(f"{self.name} at {self.img_size} px places its default boxes with fixed steps {steps}, "
                             f"which fit that size only; build it at another img_size (e.g. 320), where they follow each "
                             "feature map's grid")

    @contextmanager
    def _input_size(self, size: int | None) -> Iterator[None]:
        """The inner GeneralizedRCNNTransform resizes to `size` (None: img_size) until the block ends."""
        if size is None or size == self.img_size:
            yield
            return
        self.check_train_size(size)
        transform = self.model.transform
        saved = (transform.min_size, transform.max_size, transform.fixed_size)
        transform.min_size, transform.max_size, transform.fixed_size = (size,), size, (size, size)
        try:
            yield
        finally:
            transform.min_size, transform.max_size, transform.fixed_size = saved

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None, *,
                size: int | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
            images = list(images.unbind(0))
        if self.training:
            if targets is None:
                raise ValueError("Detector in train mode needs targets; call .eval() to get predictions")
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            with self._input_size(size):
                return self.model(images, [self._to_model(t, i) for i, t in enumerate(targets)])
        if size is not None:
            raise ValueError("Detector: size is for training batches; in eval mode every image is resized to "
                             f"img_size ({self.img_size})")
        return [self._from_model(d) for d in self.model(images)]

    def _to_model(self, target: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        """Dataset target -> torchvision target: labels + 1, boxes as float; checks the label range."""
        labels = torch.as_tensor(target["labels"], dtype=torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise ValueError(f"target {index}: label {bad} outside 0..{self.num_classes - 1} "
                             f"({self.num_classes} classes: {', '.join(self.class_names)})")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        return {"boxes": boxes, "labels": labels + LABEL_OFFSET}

    @staticmethod
    def _from_model(detection: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision detection -> ours: labels - 1 (SSD never predicts background)."""
        return {"boxes": detection["boxes"], "scores": detection["scores"],
                "labels": detection["labels"] - LABEL_OFFSET}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={self.class_names}, img_size={self.img_size}"
