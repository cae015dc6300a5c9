"""`--img-size auto`: the input size from the training boxes, so small objects keep enough pixels.

A detector's finest map has stride 8; an object a couple of cells across is about the least it
can place and size well. Larger inputs cost compute quadratically, which on a CPU budget means
fewer images seen. So: the smallest size (a multiple of 32, from 256 to 640) at which the
smaller side of all but the smallest 10% of training boxes still spans MIN_OBJECT_PX pixels
(the image is resized to a square, so a box's width scales with the width and its height with
the height). Large objects (raccoon: 10% of boxes are below a third of the image) get 256 px;
VOC-like sizes land near 256-320; a set of many small objects gets up to 640.

Never past the images' own size: the size is capped at the first multiple of 32 at or above the
median longer side of the training images (at least the smallest size). Past that the input is
an upsampled copy: no new detail, and each step costs up to 4x the compute, which on a time budget
is fewer images seen. The accuracy suite measured the cap where it acts (bench/accuracy_suite.py,
seed 0, 15 min): 300 x 240 px synthetic images, 608 -> 320 px, COCO AP 0.830 -> 0.831 at 3.2x the
images/s; 400 px tiles of real photos, 640 -> 416 px, 0.332 -> 0.365 at 2x; on its sets of larger
photos the box rule already chose below their size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from boxforge.data.index import DatasetIndex

SIZES: tuple[int, ...] = tuple(range(256, 641, 32))
MIN_OBJECT_PX = 16.0  # two cells of the stride-8 map
PERCENTILE = 10.0
FALLBACK = 320  # no boxes to learn from


def choose_img_size(wh: np.ndarray, *, image_side: float | None = None, sizes: tuple[int, ...] = SIZES,
                    min_px: float = MIN_OBJECT_PX, percentile: float = PERCENTILE) -> tuple[int, str]:
    """(size, one-line reason) for boxes `wh`: (N, 2) widths and heights as fractions of their image;
    `image_side`: the images' typical longer side in pixels (None: unknown, no cap)."""
    cap = _native_cap(image_side, sizes)
    if len(wh) == 0:
        size = FALLBACK if cap is None else min(FALLBACK, cap)
        return size, f"no training boxes; {size} px"
    small = float(np.percentile(np.asarray(wh, dtype=np.float64).min(axis=1), percentile))
    wanted = next((s for s in sizes if small * s >= min_px), sizes[-1])
    reason = (f"{percentile:g}% of the {len(wh)} training boxes have a side under {small:.3f} of the image: "
              f"{wanted} px keeps that at {small * wanted:.0f} px (aim >= {min_px:g}, sizes {sizes[0]}-{sizes[-1]})")
    if cap is None or wanted <= cap:
        return wanted, reason
    return cap, (f"{reason}; capped at {cap} px, the images' own size (median longer side {image_side:.0f} px): "
                 "a larger input only upsamples")


def _native_cap(image_side: float | None, sizes: tuple[int, ...]) -> int | None:
    """The first multiple of 32 at or above `image_side`, at least sizes[0]; None where no size would be capped."""
    if image_side is None or not image_side > 0:
        return None
    cap = max(sizes[0], -(-int(np.ceil(image_side)) // 32) * 32)
    return None if cap >= sizes[-1] else cap


def auto_img_size(index: DatasetIndex) -> tuple[int, str]:
    """`--img-size auto` for a training set: (size, reason) from its boxes and its images' sizes."""
    from boxforge.models.anchors import relative_box_shapes

    sides = [max(s.width, s.height) for s in index.samples if s.width and s.height]
    return choose_img_size(relative_box_shapes(index), image_side=float(np.median(sides)) if sides else None)
