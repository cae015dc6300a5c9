"""Transform presets (torchvision.transforms.v2) for the loaders in `loading.py`.

Every preset works on uint8 `tv_tensors.Image` tensors straight from the decoder
(no PIL round trip), resizes exactly once, and converts to float32 in [0, 1] only
at the end, so the augmentations run on the 4x smaller uint8 data.

Detection presets are called as `transform(image, target)` where `target` holds
`boxes` (tv_tensors.BoundingBoxes), `labels` and `difficult`; classification
presets as `transform(image)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Zoom-out canvas colour of the SSD reference recipe (uint8 RGB, roughly the ImageNet mean).
SSD_FILL: tuple[int, int, int] = (123, 117, 104)

AUTO_AUGMENTS: tuple[str, ...] = ("autoaugment", "randaugment", "trivialaugment", "augmix")


def target_tensors(inputs: Any) -> tuple[torch.Tensor, ...]:
    """`labels_getter` for SanitizeBoundingBoxes: the per-box tensors to drop along with their boxes.

    The default getter only finds `labels`; ours also drops `difficult`, which would
    otherwise fall out of step with the boxes. Accepts `(image, target)` or a target dict.
    Module level (not a lambda) so the transform pickles into spawned workers.
    """
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else inputs
    if not isinstance(target, dict):
        return ()
    return tuple(target[key] for key in ("labels", "difficult") if key in target)


class SafeIoUCrop(v2.RandomIoUCrop):
    """RandomIoUCrop that leaves images without boxes untouched, and searches for its crop faster.

    torchvision's version searches for a crop containing a box centre; with no boxes
    no crop ever qualifies, so it retries until it happens to draw the "keep as is"
    option, and with `sampler_options` lacking 1.0 it never returns.

    The search itself draws the same random numbers in the same order as torchvision's
    and returns the same crop (tests/data/test_transforms_iou_crop.py), but tests each
    trial on numpy float32 arrays instead of a handful of small tensor ops: that search
    was half of a data worker's time in a py-spy profile of training
    (bench/results/profile_train_ssd_tiny.txt).
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = None
        for item in flat_inputs:
            if isinstance(item, tv_tensors.BoundingBoxes):
                if item.shape[0] == 0:
                    return {}
                boxes = item
        if boxes is None:
            return super().make_params(flat_inputs)
        from torchvision.transforms.v2 import functional as F
        from torchvision.transforms.v2._utils import query_size

        orig_h, orig_w = query_size(flat_inputs)
        xyxy = F.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), boxes.format,
                                             tv_tensors.BoundingBoxFormat.XYXY)
        return _iou_crop_search(self, orig_h, orig_w, xyxy)


def _iou_crop_search(crop: v2.RandomIoUCrop, orig_h: int, orig_w: int, xyxy: torch.Tensor) -> dict[str, Any]:
    """torchvision's RandomIoUCrop.make_params loop (same draws, same float32 arithmetic) on numpy."""
    import numpy as np

    b = xyxy.detach().cpu().numpy()
    dtype = b.dtype
    cx, cy = 0.5 * (b[:, 0] + b[:, 2]), 0.5 * (b[:, 1] + b[:, 3])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    while True:
        idx = int(torch.randint(low=0, high=len(crop.options), size=(1,)))
        min_jaccard_overlap = crop.options[idx]
        if min_jaccard_overlap >= 1.0:
            return {}
        for _ in range(crop.trials):
            r = crop.min_scale + (crop.max_scale - crop.min_scale) * torch.rand(2).numpy()  # float32, as in torch
            new_w, new_h = int(orig_w * r[0]), int(orig_h * r[1])
            if not (crop.min_aspect_ratio <= new_w / new_h <= crop.max_aspect_ratio):
                continue
            r = torch.rand(2).numpy()
            left, top = int((orig_w - new_w) * r[0]), int((orig_h - new_h) * r[1])
            right, bottom = left + new_w, top + new_h
            if left == right or top == bottom:
                continue
            within = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            if not within.any():
                continue
            c = np.array([left, top, right, bottom], dtype=dtype)
            sel = b[within]
            wh = np.clip(np.minimum(sel[:, 2:], c[2:]) - np.maximum(sel[:, :2], c[:2]), 0, None)
            inter = wh[:, 0] * wh[:, 1]
            ious = inter / (area[within] + (c[2] - c[0]) * (c[3] - c[1]) - inter)
            if ious.max() < min_jaccard_overlap:
                continue
            return dict(top=top, left=left, height=new_h, width=new_w,
                        is_within_crop_area=torch.from_numpy(within))


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def _to_float(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[nn.Module]:
    """uint8 -> float32 in [0, 1], then Normalize when both `mean` and `std` are given."""
    steps: list[nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is not None and std is not None:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return steps


def detection_transforms(
    train: bool,
    size: int | tuple[int, int] = 320,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hflip_prob: float = 0.5,
) -> v2.Compose:
    """The SSD recipe (torchvision references/detection/presets.py "ssd"), then one resize.

    train: zoom out (canvas filled with `mean`, or SSD_FILL), IoU crop (skipped for
        images without boxes), horizontal flip, resize to `size`, drop boxes that
        became degenerate or left the image, photometric distort, to float.
        The colour jitter comes after the resize (the reference applies it first): it
        is per-pixel, and on the resized image it costs a fraction of what it costs on
        a zoomed-out canvas of up to 16x the pixels; torchvision's tensor hue shift is
        the slowest step of the recipe (bench/data_pipeline.py measures both orders).
    eval: resize to `size`, to float.
    size: an int for a square (size, size) output, or (height, width).
    mean, std: in [0, 1] units. Leave them None for torchvision detectors, which
        normalise inside the model (their GeneralizedRCNNTransform).

    Output: image (3, H, W) float32 in [0, 1] (normalised if mean/std given);
    boxes (N, 4) float32 xyxy in output pixels; labels (N,) and difficult (N,) kept in step.
    """
    resize = v2.Resize(_hw(size), antialias=True)
    if not train:
        return v2.Compose([resize, *_to_float(mean, std)])
    fill = tuple(round(255 * m) for m in mean) if mean is not None else SSD_FILL
    return v2.Compose(
        [
            v2.RandomZoomOut(fill=list(fill), side_range=(1.0, 4.0), p=0.5),
            SafeIoUCrop(),
            v2.RandomHorizontalFlip(p=hflip_prob),
            resize,
            v2.SanitizeBoundingBoxes(labels_getter=target_tensors),
            v2.RandomPhotometricDistort(p=0.5),
            *_to_float(mean, std),
        ]
    )


def _auto_augment(name: str) -> nn.Module:
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if name == "randaugment":
        return v2.RandAugment()
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "augmix":
        return v2.AugMix()
    raise ValueError(f"unknown auto_augment {name!r}; choose one of: {', '.join(AUTO_AUGMENTS)}")


def classification_transforms(
    train: bool,
    size: int = 224,
    *,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip_prob: float = 0.5,
    auto_augment: str | None = None,
    random_erase: float = 0.0,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> v2.Compose:
    """The torchvision references/classification recipe on uint8 tensors.

    train: RandomResizedCrop(size, scale=crop_scale), horizontal flip, optional auto-augment policy
        (one of AUTO_AUGMENTS), to float, Normalize, optional RandomErasing(p=random_erase).
    eval: Resize(resize_size, default size / 0.875, i.e. 256 for 224) on the short
        side, CenterCrop(size), to float, Normalize.

    Output: (3, size, size) float32, normalised with `mean`/`std` ([0, 1] units).
    """
    if not train:
        short = resize_size or round(size / 0.875)
        return v2.Compose([v2.Resize(short, antialias=True), v2.CenterCrop(size), *_to_float(mean, std)])
    steps: list[nn.Module] = [v2.RandomResizedCrop(size, scale=crop_scale, antialias=True)]
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if auto_augment:
        steps.append(_auto_augment(auto_augment))
    steps.extend(_to_float(mean, std))
    if random_erase > 0:
        steps.append(v2.RandomErasing(p=random_erase))
    return v2.Compose(steps)
