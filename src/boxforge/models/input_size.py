"""`--img-size auto`: the input size from the training boxes, so small objects keep enough pixels.

A detector's finest map has stride 8; an object a couple of cells across is about the least it
can place and size well. Larger inputs cost compute quadratically, which on a CPU budget means
fewer images seen. So: the smallest size (a multiple of 32, from 256 to 640) at which the
smaller side of all but the smallest 10% of training boxes still spans MIN_OBJECT_PX pixels
(the image is resized to a square, so a box's width scales with the width and its height with
the height). Large objects (raccoon: 10% of boxes are below a third of the image) get 256 px;
VOC-like sizes land near 256-320; a set of many small objects gets up to 640.
"""

from __future__ import annotations

import numpy as np

SIZES: tuple[int, ...] = tuple(range(256, 641, 32))
MIN_OBJECT_PX = 16.0  # two cells of the stride-8 map
PERCENTILE = 10.0
FALLBACK = 320  # no boxes to learn from


def choose_img_size(wh: np.ndarray, *, sizes: tuple[int, ...] = SIZES, min_px: float = MIN_OBJECT_PX,
                    percentile: float = PERCENTILE) -> tuple[int, str]:
    """(size, one-line reason) for boxes `wh`: (N, 2) widths and heights as fractions of their image."""
    if len(wh) == 0:
        return FALLBACK, f"no training boxes; {FALLBACK} px"
    small = float(np.percentile(np.asarray(wh, dtype=np.float64).min(axis=1), percentile))
    chosen = next((s for s in sizes if small * s >= min_px), sizes[-1])
    return chosen, (f"{percentile:g}% of the {len(wh)} training boxes have a side under {small:.3f} of the image: "
                    f"{chosen} px keeps that at {small * chosen:.0f} px (aim >= {min_px:g}, sizes {sizes[0]}-{sizes[-1]})")
