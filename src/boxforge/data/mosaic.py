"""Mosaic augmentation (YOLOv4 style): one training sample tiled from four images.

Each of the four images is scaled so its longer side is S (= img_size) and placed in
one quadrant of a 2S x 2S canvas around a random centre (x, y in [S/2, 3S/2]): the
first image ends at the centre from the top left, the second from the top right, the
third from the bottom left, the fourth starts there. Parts that leave the canvas are
cut off; boxes are scaled, shifted and clipped with their image, and a box that keeps
less than `min_visible` of its area is dropped. The canvas, boxes and all, then goes
through the dataset's own training transform (zoom out, IoU crop, flip, resize to S,
colour jitter), so mosaic adds context and small objects without replacing any of it.

Randomness: the coin (probability p), the three partner images and the centre are
drawn from torch's global RNG, like every transform here. Under training that RNG is
seeded per sample from (seed, epoch, index) by engine/sampler.SeededDataset, so a
mosaic sample is a function of those three numbers and exact resume still holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from boxforge.data.loading import DetectionDataset
from boxforge.data.transforms import SSD_FILL

Item = tuple[torch.Tensor, dict[str, Any]]


def _scaled_to(image: torch.Tensor, size: int) -> tuple[torch.Tensor, float, float]:
    """(image scaled so its longer side is `size`, x factor, y factor)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    r = size / max(height, width)
    new_h, new_w = max(1, round(height * r)), max(1, round(width * r))
    if (new_h, new_w) != (height, width):
        image = F.resize(image.as_subclass(torch.Tensor), [new_h, new_w], antialias=True)
    return image.as_subclass(torch.Tensor), new_w / width, new_h / height


def mosaic(items: list[Item], size: int, centre: tuple[int, int], *,
           fill: tuple[int, int, int] = SSD_FILL, min_visible: float = 0.5) -> Item:
    """Tile four untransformed (image, target) items (DetectionDataset.load) around `centre`.

    items: 4 pairs of image (3, H, W) uint8 and target {"boxes" (N, 4) xyxy pixels, "labels",
        "difficult", "image_id"}. centre: (x, y) in canvas pixels, each in [0, 2 * size].
    Returns image tv_tensors.Image (3, 2S, 2S) uint8 and a target in the same layout:
        boxes (M, 4) float32 xyxy in canvas pixels, labels and difficult in step with them,
        image_id the four ids joined by "+", orig_size (2S, 2S).
    """
    if len(items) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(items)}")
    side = 2 * size
    xc, yc = centre
    # Channels-last memory, as torchvision.io decodes JPEGs: the uint8 resize that follows is several times faster.
    canvas = torch.tensor(fill, dtype=torch.uint8).repeat(side, side, 1).permute(2, 0, 1)
    boxes, kept = [], []
    for k, (image, target) in enumerate(items):
        pixels, sx, sy = _scaled_to(image, size)
        h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
        x0 = xc - w if k in (0, 2) else xc
        y0 = yc - h if k in (0, 1) else yc
        x1, y1, x2, y2 = max(x0, 0), max(y0, 0), min(x0 + w, side), min(y0 + h, side)
        if x2 > x1 and y2 > y1:
            canvas[:, y1:y2, x1:x2] = pixels[:, y1 - y0:y2 - y0, x1 - x0:x2 - x0]
        b = target["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
        b = b * torch.tensor([sx, sy, sx, sy]) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b[:, 0::2] = b[:, 0::2].clamp(x1, max(x1, x2))
        b[:, 1::2] = b[:, 1::2].clamp(y1, max(y1, y2))
        visible = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & (visible >= min_visible * area)
        boxes.append(b[keep])
        kept.append(keep)
    first = items[0][1]
    out: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format=tv_tensors.BoundingBoxFormat.XYXY,
                                          canvas_size=(side, side)),
    }
    for key in ("labels", "difficult"):
        if key in first:
            out[key] = torch.cat([t[key][keep] for (_, t), keep in zip(items, kept)])
    out["image_id"] = "+".join(str(t.get("image_id", "")) for _, t in items)
    out["orig_size"] = (side, side)
    return tv_tensors.Image(canvas), out


class MosaicDataset(Dataset):
    """A DetectionDataset whose item is, with probability `p`, a mosaic of four of its images.

    The wrapped dataset keeps its training transform; a mosaic goes through it as one image
    (see the module docstring); otherwise the item is exactly `dataset[index]`, with no extra
    random draw when p is 0 or the wrapper is switched off.

    enabled: set False to stop making mosaics (e.g. for the last epochs of a run). The switch is
    a shared-memory tensor, so persistent DataLoader workers see it too, from the batches they
    start after the change (batches already prefetched keep their mosaics).
    """

    def __init__(self, dataset: DetectionDataset, size: int, p: float = 1.0, *, min_visible: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mosaic probability must be in [0, 1], got {p}")
        if size < 1:
            raise ValueError(f"mosaic size must be a positive number of pixels, got {size}")
        self.dataset, self.size, self.p, self.min_visible = dataset, size, p, min_visible
        self._on = torch.ones(1, dtype=torch.uint8).share_memory_()

    @property
    def enabled(self) -> bool:
        return bool(self._on[0])

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._on[0] = int(bool(value))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        if self.p <= 0 or not self.enabled or float(torch.rand(())) >= self.p:
            return self.dataset[index]
        partners = torch.randint(len(self.dataset), (3,)).tolist()
        centre = torch.randint(self.size // 2, 3 * self.size // 2 + 1, (2,)).tolist()
        items = [self.dataset.load(i) for i in (index, *partners)]
        return self.dataset.transformed(*mosaic(items, self.size, (centre[0], centre[1]),
                                                min_visible=self.min_visible))
