"""The SSD training recipe split in two: draw its random parameters in the data worker, apply them on the device.

On CUDA a training step of a small detector is faster than the CPU workers can run
`detection_transforms(train=True)` per sample, so the GPU waits for data. Here the worker
only draws the recipe's random numbers (a few scalars per sample, and the IoU-crop search,
which needs boxes but no pixels) and hands on the decoded uint8 image untouched; the
pixel work (zoom-out canvas, crop, the resize to the training size, flip, colour
distortion, to float) runs where the batch is, batched over the stacked images after the
resize.

Same draws: `SSDDraw` consumes torch's global RNG exactly as the v2.Compose of
`detection_transforms(True, ...)` does (same calls, same order, the transforms' own
`make_params`), so under the per-sample seed of engine/sampler.SeededDataset a sample gets
the same zoom, crop, flip and colour factors either way. Same result: boxes use the same
float32 arithmetic as torchvision's kernels; pixels agree within uint8 rounding (at most 1
of 255: the flip is applied after the resize, and the per-image colour factors are
tensors instead of Python floats). tests/data/test_device_augment.py checks both against
the v2.Compose itself.

The recipe's settings are read from that Compose (`SSDRecipe.from_compose`), so they
stay one fact in one place (data/transforms.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from boxforge.errors import BoxforgeError

XYXY = tv_tensors.BoundingBoxFormat.XYXY
# The key DetectionDataset targets carry the drawn parameters under (DetectTask.to_device looks for it).
PARAMS_KEY = "augment"


@dataclass(frozen=True)
class SSDParams:
    """One sample's draw of the SSD recipe; plain numbers so it pickles cheaply out of a worker.

    in_size: (H, W) of the image the draw was made for.
    zoom: (left, top, right, bottom) padding of the zoom-out canvas, None when not zoomed out.
    crop: (top, left, height, width) in canvas pixels, None when not cropped.
    within: (N,) bool, boxes whose centre lies inside the crop (the others are dropped); None without crop.
    flip: horizontal flip.
    brightness, contrast, saturation, hue: colour factors, None where that jitter is off.
    contrast_before: contrast before saturation and hue (else after them).
    permutation: channel order, None for RGB as is.
    """

    in_size: tuple[int, int]
    zoom: tuple[int, int, int, int] | None
    crop: tuple[int, int, int, int] | None
    within: Tensor | None
    flip: bool
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    contrast_before: bool
    permutation: tuple[int, ...] | None


_SSD_STEPS: tuple[type, ...] = (v2.RandomZoomOut, v2.RandomIoUCrop, v2.RandomHorizontalFlip, v2.Resize,
                                v2.SanitizeBoundingBoxes, v2.RandomPhotometricDistort, v2.ToDtype)


@dataclass(frozen=True)
class SSDRecipe:
    """The settings of a `detection_transforms(True, ...)` Compose that drawing and applying need."""

    zoom: v2.RandomZoomOut
    iou_crop: v2.RandomIoUCrop
    flip: v2.RandomHorizontalFlip
    size: tuple[int, int]
    sanitize: v2.SanitizeBoundingBoxes
    photometric: v2.RandomPhotometricDistort
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_compose(cls, compose: v2.Compose) -> SSDRecipe:
        steps = list(compose.transforms)
        normalize = steps.pop() if steps and isinstance(steps[-1], v2.Normalize) else None
        if len(steps) != len(_SSD_STEPS) or not all(isinstance(s, t) for s, t in zip(steps, _SSD_STEPS)):
            found = ", ".join(type(s).__name__ for s in compose.transforms)
            raise BoxforgeError(f"device augmentation reproduces only the SSD recipe of detection_transforms("
                                f"train=True) ({', '.join(t.__name__ for t in _SSD_STEPS)}[, Normalize]); got {found}")
        zoom, iou_crop, flip, resize, sanitize, photometric, _ = steps
        if not isinstance(zoom.fill, (list, tuple)) or len(zoom.fill) != 3:
            raise BoxforgeError(f"device augmentation needs an RGB zoom-out fill of 3 values, got {zoom.fill!r}")
        size = tuple(int(s) for s in resize.size)
        if len(size) != 2:
            raise BoxforgeError(f"device augmentation needs Resize((height, width)), got size {resize.size!r}")
        return cls(zoom, iou_crop, flip, (size[0], size[1]), sanitize, photometric,
                   tuple(normalize.mean) if normalize else None, tuple(normalize.std) if normalize else None)


class SSDDraw:
    """A dataset transform `(image, target) -> (image, target)` that only draws: the image is returned as it came
    (uint8, any size) and the target gains `target["augment"]`, an SSDParams; boxes, labels and difficult are kept.

    Picklable (for DataLoader workers). The image size is taken from the boxes' canvas_size, so the image itself
    is never read here.
    """

    def __init__(self, recipe: SSDRecipe) -> None:
        self.recipe = recipe

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        boxes = target["boxes"]
        height, width = (int(s) for s in boxes.canvas_size)
        return image, {**target, PARAMS_KEY: self.draw(height, width, boxes.as_subclass(Tensor))}

    def draw(self, height: int, width: int, boxes: Tensor) -> SSDParams:
        """The draws of the v2.Compose, in its order, for an image of (height, width) with boxes (N, 4) xyxy."""
        r = self.recipe
        boxes = boxes.to(torch.float32).reshape(-1, 4)
        zoom, canvas = None, (height, width)
        if not torch.rand(1) >= r.zoom.p:  # _RandomApplyTransform.forward's coin
            padding = r.zoom.make_params([_sized(boxes, canvas)])["padding"]
            zoom = (int(padding[0]), int(padding[1]), int(padding[2]), int(padding[3]))
            boxes, canvas = F.pad_bounding_boxes(boxes, format=XYXY, canvas_size=canvas, padding=list(zoom))
        crop_params = r.iou_crop.make_params([_sized(boxes, canvas)])
        crop, within = None, None
        if crop_params:
            crop = (int(crop_params["top"]), int(crop_params["left"]),
                    int(crop_params["height"]), int(crop_params["width"]))
            within = crop_params["is_within_crop_area"].to(torch.bool).clone()
        flip = not torch.rand(1) >= r.flip.p
        colour = r.photometric.make_params([torch.empty(3, 1, 1, dtype=torch.uint8)])
        perm = colour["channel_permutation"]
        return SSDParams((height, width), zoom, crop, within, bool(flip), colour["brightness_factor"],
                         colour["contrast_factor"], colour["saturation_factor"], colour["hue_factor"],
                         bool(colour["contrast_before"]), tuple(int(c) for c in perm) if perm is not None else None)


def _sized(boxes: Tensor, canvas: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """Boxes that tell a transform's make_params the image size, without any pixels."""
    return tv_tensors.BoundingBoxes(boxes, format=XYXY, canvas_size=canvas)


def _place(image: Tensor, p: SSDParams, fill: Tensor) -> Tensor:
    """Zoom-out canvas, then crop, as one copy: (3, h, w) uint8 of the crop window, `fill` where no image lies.

    Pixel for pixel what F.pad then F.crop give, without allocating the canvas (up to 16x the image).
    """
    height, width = p.in_size
    if tuple(image.shape[-2:]) != (height, width):
        raise BoxforgeError(f"device augmentation: an image of {tuple(image.shape[-2:])} pixels came with "
                            f"parameters drawn for {(height, width)}")
    left, top, right, bottom = p.zoom or (0, 0, 0, 0)
    c_top, c_left, c_h, c_w = p.crop or (0, 0, height + top + bottom, width + left + right)
    if p.zoom is None and p.crop is None:
        return image
    # Channels-last memory, as the decoders give: the uint8 resize after it is several times faster.
    out = torch.empty((c_h, c_w, 3), dtype=torch.uint8, device=image.device).permute(2, 0, 1)
    out.copy_(fill.view(3, 1, 1).expand(3, c_h, c_w))
    y0, y1 = max(top, c_top), min(top + height, c_top + c_h)
    x0, x1 = max(left, c_left), min(left + width, c_left + c_w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - c_top:y1 - c_top, x0 - c_left:x1 - c_left] = image[:, y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _flipped(image: Tensor, flip: bool) -> Tensor:
    """The flip before the resize, as in the recipe: after it, the resize's rounding of a mirrored image can
    differ by 1, which the colour factors (up to 1.5x) then grow to 2."""
    return F.horizontal_flip(image) if flip else image


def apply_boxes(boxes: Tensor, p: SSDParams, size: tuple[int, int], *, min_size: float = 1.0,
                min_area: float = 1.0) -> tuple[Tensor, Tensor]:
    """(boxes (M, 4) float32 xyxy in output pixels, keep (N,) bool) for boxes (N, 4) xyxy of the input image.

    The v2 kernels in the v2 order (pad, crop and mark the boxes outside, flip, resize, sanitize), on the
    boxes' own device; `keep` selects labels and difficult in step.
    """
    boxes = boxes.to(torch.float32).reshape(-1, 4)
    canvas = p.in_size
    if p.zoom is not None:
        boxes, canvas = F.pad_bounding_boxes(boxes, format=XYXY, canvas_size=canvas, padding=list(p.zoom))
    if p.crop is not None:
        top, left, height, width = p.crop
        boxes, canvas = F.crop_bounding_boxes(boxes, XYXY, top=top, left=left, height=height, width=width)
        boxes[~p.within.to(boxes.device)] = 0
    if p.flip:
        boxes = F.horizontal_flip_bounding_boxes(boxes, format=XYXY, canvas_size=canvas)
    boxes, canvas = F.resize_bounding_boxes(boxes, canvas_size=canvas, size=list(size), format=XYXY)
    return F.sanitize_bounding_boxes(boxes, format=XYXY, canvas_size=canvas, min_size=min_size, min_area=min_area)


def apply_ssd(images: Sequence[Tensor], targets: Sequence[dict[str, Any]], recipe: SSDRecipe,
              device: str | torch.device = "cpu") -> tuple[Tensor, list[dict[str, Any]]]:
    """Apply each target's drawn SSDParams (`target["augment"]`) to its image and boxes on `device`.

    images: B uint8 tensors (3, H_i, W_i) on any device, or encoded JPEGs ((L,) uint8, data/device_decode.py),
        decoded on `device` in one call. targets: DetectionDataset targets with "augment".
    Returns (B, 3, H, W) float32 in [0, 1] (normalised when the recipe has mean/std) at the recipe's size, and
    targets {"boxes" (M_i, 4) float32 xyxy, "labels", "difficult" (when given), "image_id"} on `device`.
    """
    dev = _device(device)
    if len(images) != len(targets):
        raise BoxforgeError(f"device augmentation: {len(images)} images but {len(targets)} targets")
    images = _decoded([im.as_subclass(Tensor) if im.ndim == 1 else im.as_subclass(Tensor).to(dev, non_blocking=True)
                       for im in images], dev)  # encoded bytes stay on the host: the decoder reads them there
    params = [_params_of(t) for t in targets]
    fill = torch.tensor([int(v) for v in recipe.zoom.fill], dtype=torch.uint8, device=dev)
    size = list(recipe.size)
    batch = torch.stack([F.resize(_flipped(_place(im, p, fill), p.flip), size, antialias=True)
                         for im, p in zip(images, params)])
    from boxforge.data.device_colour import photometric

    batch = photometric(batch, params)
    out = F.to_dtype(batch, torch.float32, scale=True)
    if recipe.mean is not None and recipe.std is not None:
        out = F.normalize(out, mean=list(recipe.mean), std=list(recipe.std))
    return out, [_target(t, p, recipe, dev) for t, p in zip(targets, params)]


def _target(target: dict[str, Any], p: SSDParams, recipe: SSDRecipe, dev: torch.device) -> dict[str, Any]:
    boxes = target["boxes"].as_subclass(Tensor).to(dev, non_blocking=True)
    boxes, keep = apply_boxes(boxes, p, recipe.size, min_size=recipe.sanitize.min_size,
                              min_area=recipe.sanitize.min_area)
    out: dict[str, Any] = {"boxes": boxes}
    for key in ("labels", "difficult"):
        if key in target:
            out[key] = target[key].to(dev, non_blocking=True)[keep]
    out["image_id"] = target.get("image_id")
    return out


def _params_of(target: dict[str, Any]) -> SSDParams:
    p = target.get(PARAMS_KEY)
    if not isinstance(p, SSDParams):
        raise BoxforgeError(f"device augmentation: target {target.get('image_id')!r} has no drawn parameters "
                            f"(target[{PARAMS_KEY!r}]); build the dataset with transform SSDDraw")
    return p


def _decoded(images: list[Tensor], dev: torch.device) -> list[Tensor]:
    """Images as (3, H, W) uint8: the encoded ones ((L,) uint8 bytes) decoded together on `dev`."""
    encoded = [i for i, im in enumerate(images) if im.ndim == 1]
    if not encoded:
        return images
    from boxforge.data.device_decode import decode_jpegs

    for i, pixels in zip(encoded, decode_jpegs([images[i] for i in encoded], dev)):
        images[i] = pixels
    return images


def _device(device: str | torch.device) -> torch.device:
    """cpu, cuda or cuda:N; a CUDA device where none is present is a one-line BoxforgeError."""
    from boxforge.devices import resolve_device

    if isinstance(device, torch.device) and device.type == "cuda" and not torch.cuda.is_available():
        device = str(device)
    return resolve_device(device)
