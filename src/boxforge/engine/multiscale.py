"""`train --multi-scale`: each training batch at its own input size, as darknet's `random=1`.

Why: a detector trained at one input size sees every object at one scale per image; drawing
the size per batch (darknet: a multiple of 32 in about 0.7x..1.4x of the network size, every
10 batches; Ultralytics: 0.5x..1.5x, every batch) teaches the same weights a range of object
scales. Validation, checkpoints, export and evaluation keep the run's fixed size (`img_size`).

The choice here: sizes are the multiples of STRIDE (the coarsest map of the yolo models;
SSD's maps then tile whole) from MIN x img_size up to MAX x img_size (default 0.7:1.3,
`config.MULTI_SCALE_DEFAULT`), never below the model's smallest input; a new size every batch,
uniformly among them. Darknet waits 10 batches because resizing its network reallocates every
layer; here the size only changes the one resize the model's transform does anyway.

Exact resume: the size of batch `iteration` of `epoch` is a pure function of (seed, epoch,
iteration), like the sampler's per-sample seeds; no RNG state is drawn from, so a resumed run
sees the same sizes, and every rank of a torchrun job the same size for its share of a batch.
The resize itself happens inside the model (`Detector.forward(..., size=)`): the batch leaves
the loader, mosaic and cache at img_size, and the model's GeneralizedRCNNTransform, which
resizes every image to img_size at each step anyway, resizes it to the batch's size instead
(bilinear, boxes scaled by the same factor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from boxforge.engine.sampler import sample_seed
from boxforge.errors import BoxforgeError

STRIDE = 32
_SALT = 0x6D756C7469  # keeps the size draws apart from the per-sample augmentation seeds of the same numbers


@dataclass(frozen=True)
class TrainSizes:
    """The sizes a run's training batches may take, and which one each batch takes."""

    sizes: tuple[int, ...]  # ascending multiples of STRIDE
    seed: int

    def at(self, epoch: int, iteration: int) -> int:
        """The input size (pixels, square) of batch `iteration` (0-based within the epoch) of `epoch`."""
        return self.sizes[sample_seed(self.seed ^ _SALT, epoch, iteration) % len(self.sizes)]


def size_range(img_size: int, fractions: Sequence[float], min_size: int = 1) -> tuple[int, ...]:
    """The multiples of STRIDE in [fractions[0] x img_size, fractions[1] x img_size], none below `min_size`."""
    lo = max(math.ceil(round(fractions[0] * img_size / STRIDE, 6)), math.ceil(min_size / STRIDE))
    hi = math.floor(round(fractions[1] * img_size / STRIDE, 6))
    return tuple(k * STRIDE for k in range(lo, hi + 1))


def train_sizes(fractions: Sequence[float] | None, model: nn.Module, seed: int) -> TrainSizes | None:
    """The run's TrainSizes (None without --multi-scale); a BoxforgeError when the model cannot use them.

    `model`: a Detector (classifiers are refused earlier, by ClassifyTask).
    """
    if fractions is None:
        return None
    flag = f"--multi-scale {fractions[0]:g}:{fractions[1]:g}"
    img_size, min_size = int(model.img_size), int(getattr(model, "min_size", 1))
    sizes = size_range(img_size, fractions, min_size)
    if len(sizes) < 2:
        raise BoxforgeError(f"{flag} at {img_size} px gives {'only ' + str(sizes[0]) + ' px' if sizes else 'no size'} "
                            f"(multiples of {STRIDE} from {fractions[0] * img_size:g} to {fractions[1] * img_size:g}"
                            f"{f', at least {min_size}' if min_size > 1 else ''}); widen the range "
                            f"(e.g. 0.5:1.5) or raise --img-size")
    try:
        for size in sizes:
            model.check_train_size(size)
    except ValueError as exc:
        raise BoxforgeError(f"{flag}: {exc}") from None
    return TrainSizes(sizes, seed)


def describe(sizes: TrainSizes, img_size: int, fractions: Sequence[float]) -> str:
    """The run log's line about it."""
    return (f"--multi-scale {fractions[0]:g}:{fractions[1]:g}: each batch at one of {', '.join(map(str, sizes.sizes))} "
            f"px; validation, checkpoints and export stay at {img_size} px")
