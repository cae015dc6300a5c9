"""Default boxes fitted to a dataset: k-means on the training boxes' shapes, as darknet's `calc_anchors`.

SSD's default boxes are a fixed ladder of scales (0.07 .. 0.9 of the image) times aspect ratios
{1, 2, 1/2, 3, 1/3}. That suits VOC; a set of long thin boxes, or of objects that all fill a
third of the image, leaves most default boxes matching nothing. Fitting instead clusters the
training boxes' (width, height), relative to their image, with 1 - IoU as the distance (boxes
compared centred, so only shape and size count), and hands the clusters to the feature maps by
area: the smallest shapes to the finest map, the largest to the coarsest, the same number per
map so the head's layout is unchanged. Everything is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError

Shapes = list[list[tuple[float, float]]]  # per feature map: (w, h) relative to the image


def relative_box_shapes(index: DatasetIndex) -> np.ndarray:
    """(N, 2) float64 width and height of every valid box, as fractions of its image's width and height."""
    rows = []
    for sample in index.samples:
        if not sample.width or not sample.height or len(sample.boxes) == 0:
            continue
        boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)
        wh = np.stack([(boxes[:, 2] - boxes[:, 0]) / sample.width, (boxes[:, 3] - boxes[:, 1]) / sample.height], 1)
        rows.append(wh[(wh > 0).all(1)])
    return np.concatenate(rows) if rows else np.zeros((0, 2))


def centred_iou(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, K) IoU of boxes and cluster shapes with a common centre."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(wh[:, None, 1], centres[None, :, 1])
    union = wh[:, None].prod(-1) + centres[None].prod(-1) - inter
    return inter / union


def kmeans_iou(wh: np.ndarray, k: int, *, seed: int = 0, iterations: int = 300) -> np.ndarray:
    """`k` box shapes minimising the mean 1 - IoU to their members (k-means++ start, median update).

    With fewer distinct shapes than `k`, the distinct shapes are returned, padded with the
    geometric mid-points of neighbours, so the result always has `k` rows sorted by area.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) == 0:
        raise BoxforgeError("cannot fit anchors: the training set has no boxes")
    rng = np.random.default_rng(seed)
    distinct = np.unique(wh, axis=0)
    if len(distinct) <= k:
        centres = distinct
    else:
        centres = wh[[rng.integers(len(wh))]]
        while len(centres) < k:  # k-means++: far (in 1 - IoU) shapes are likelier starts
            dist = (1 - centred_iou(wh, centres)).min(1) ** 2
            centres = np.vstack([centres, wh[rng.choice(len(wh), p=dist / dist.sum())]])
        assign = None
        for _ in range(iterations):
            new = centred_iou(wh, centres).argmax(1)
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = wh[assign == j]
                if len(members):
                    centres[j] = np.median(members, axis=0)
    centres = centres[np.argsort(centres.prod(1))]
    while len(centres) < k:  # few distinct shapes: fill the widest gap in area with a geometric mid-point
        if len(centres) == 1:
            extra = centres[0] * np.sqrt(2.0)
        else:
            gap = int(np.argmax(centres[1:].prod(1) / centres[:-1].prod(1)))
            extra = np.sqrt(centres[gap] * centres[gap + 1])
        centres = np.vstack([centres, extra])
        centres = centres[np.argsort(centres.prod(1), kind="stable")]
    return centres


def fit_anchor_shapes(wh: np.ndarray, maps: int, per_map: int, *, seed: int = 0) -> Shapes:
    """`maps` lists of `per_map` (w, h) shapes, finest map first, from k-means over all boxes."""
    centres = kmeans_iou(wh, maps * per_map, seed=seed)
    return [[(round(float(w), 5), round(float(h), 5)) for w, h in centres[m * per_map:(m + 1) * per_map]]
            for m in range(maps)]


def mean_best_iou(wh: np.ndarray, shapes: Shapes) -> float:
    """The mean over boxes of the best centred IoU with any default shape: how well the anchors cover the data."""
    centres = np.array([s for level in shapes for s in level], dtype=np.float64)
    return float(centred_iou(np.asarray(wh, dtype=np.float64), centres).max(1).mean())


def default_shapes(generator: DefaultBoxGenerator) -> Shapes:
    """The (w, h) shapes a torchvision DefaultBoxGenerator uses, in the same per-map layout."""
    return [[(float(w), float(h)) for w, h in pairs.tolist()] for pairs in generator._wh_pairs]


class FittedBoxGenerator(DefaultBoxGenerator):
    """A DefaultBoxGenerator whose per-map (w, h) shapes are given rather than derived from scales.

    Tiling (one set of shapes centred on every cell of each feature map) and the output
    format are torchvision's, so SSD, its head and export work unchanged.
    """

    def __init__(self, shapes: Sequence[Sequence[Sequence[float]]], clip: bool = True) -> None:
        if not shapes or any(len(level) == 0 for level in shapes):
            raise ValueError("anchor shapes: one non-empty list of (w, h) per feature map")
        super().__init__([[]] * len(shapes), clip=clip)
        self.shapes = [[(float(w), float(h)) for w, h in level] for level in shapes]
        self._wh_pairs = [torch.tensor(level, dtype=torch.float32) for level in self.shapes]

    def num_anchors_per_location(self) -> list[int]:
        return [len(level) for level in self.shapes]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shapes={self.shapes}, clip={self.clip})"


def shapes_tensor(shapes: Shapes) -> Tensor:
    """All shapes as one (K, 2) tensor, finest map first (for printing and tests)."""
    return torch.tensor([s for level in shapes for s in level], dtype=torch.float32)
