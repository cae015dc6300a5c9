"""EMA of the weights with a warm-up, for `AveragedModel(multi_avg_fn=...)`.

A fixed decay of 0.999 averages over the last ~1000 steps; a 15-minute CPU run makes about
that many, so its EMA would still be mostly the random initialisation at the end. As
TensorFlow's `ExponentialMovingAverage(num_updates=...)` does, the decay after n updates is
`min(decay, (1 + n) / (10 + n))`: an average over the last few steps early on, over the last
~1000 only once there have been thousands. The step count is AveragedModel's `n_averaged`
buffer, which is in every checkpoint, so resumed runs continue the same sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def warmup_decay(decay: float, updates: int) -> float:
    """The decay in effect after `updates` EMA updates."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_update_fn(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """`multi_avg_fn` for torch's AveragedModel: lerp each EMA tensor towards the model by 1 - warmup_decay."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay {decay}: allowed 0 <= decay <= 1")

    @torch.no_grad()
    def update(ema: list[Tensor], current: list[Tensor], averaged: Tensor) -> None:
        d = warmup_decay(decay, int(averaged))
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked)
            for e, c in zip(ema, current):
                e.copy_(e * d + c * (1.0 - d))

    return update
