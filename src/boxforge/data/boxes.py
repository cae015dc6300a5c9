"""Box validity rules, shared by `check`, `convert` and the training loader so they never disagree."""

from __future__ import annotations

import numpy as np


def nonfinite_mask(boxes: np.ndarray) -> np.ndarray:
    """(N,) True where any coordinate is NaN or infinite."""
    return ~np.isfinite(boxes).all(axis=1)


def degenerate_mask(boxes: np.ndarray) -> np.ndarray:
    """(N,) True where the box has zero or negative width or height (finite boxes only)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(boxes).all(axis=1) & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))


# Normalised formats (YOLO, 6 decimals) round-trip with ~1e-4 px of float noise; that is not "outside".
BOUNDS_TOLERANCE_PX = 0.01


def out_of_bounds_mask(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N,) True where a valid box pokes outside the image (0..width, 0..height). Unknown size: all False."""
    if width <= 0 or height <= 0 or len(boxes) == 0:
        return np.zeros((len(boxes),), dtype=bool)
    t = BOUNDS_TOLERANCE_PX
    with np.errstate(invalid="ignore"):
        return (boxes[:, 0] < -t) | (boxes[:, 1] < -t) | (boxes[:, 2] > width + t) | (boxes[:, 3] > height + t)


def valid_mask(boxes: np.ndarray) -> np.ndarray:
    """(N,) True for boxes a model can learn from (finite, positive area); out-of-bounds ones are clipped later."""
    return ~nonfinite_mask(boxes) & ~degenerate_mask(boxes)
