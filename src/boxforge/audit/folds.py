"""How `boxforge audit` splits a dataset and its time: K folds, each judged by a model trained on the others.

K follows the budget and the data: each fold model trains on (K - 1) / K of the images, so more folds
mean models closer to one trained on everything, but less time each. Below about 20 minutes three
folds (a third of the budget each), then four, then five; never more folds than images / MIN_PER_FOLD,
never fewer than two. A tenth of the budget (at least a minute) is kept for predicting the held-out
folds and starting the processes. The assignment is a seeded permutation of the images, so a re-run
(or a `--resume`) gives every image the same fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boxforge.errors import BoxforgeError

MIN_PER_FOLD = 10
RESERVE = 0.1  # of the budget: prediction and start-up


def choose_folds(images: int, minutes: float) -> int:
    if images < 2 * MIN_PER_FOLD:
        raise BoxforgeError(f"audit needs at least {2 * MIN_PER_FOLD} images to train on some and judge the rest; "
                            f"this set has {images}")
    k = 3 if minutes < 20 else 4 if minutes < 40 else 5
    return max(2, min(k, images // MIN_PER_FOLD))


@dataclass(frozen=True)
class FoldPlan:
    """folds: (N,) fold of each image (index order); train_minutes: each fold model's --time."""

    folds: np.ndarray
    k: int
    train_minutes: float

    def describe(self, minutes: float) -> str:
        sizes = np.bincount(self.folds, minlength=self.k)
        return (f"audit: {self.k} folds of {', '.join(map(str, sizes))} images; each fold model trains "
                f"{self.train_minutes:.1f} min on the other folds ({self.k} x {self.train_minutes:.1f} of the "
                f"{minutes:g} min budget, the rest for predicting the held-out images)")


def plan_folds(images: int, minutes: float, *, k: int | None = None, seed: int = 0) -> FoldPlan:
    """The folds and each fold's training time for `images` images and a `minutes` budget."""
    if minutes <= 0:
        raise BoxforgeError(f"--time {minutes}: give the audit's budget in minutes (> 0)")
    k = choose_folds(images, minutes) if k is None else k
    if k < 2 or k > images:
        raise BoxforgeError(f"--folds {k}: allowed 2 to {images} (the number of images)")
    folds = np.empty(images, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(images)] = np.arange(images) % k
    usable = minutes - max(1.0, RESERVE * minutes)
    if usable <= 0:
        raise BoxforgeError(f"--time {minutes}: too short to train {k} fold models; give at least 2 minutes")
    return FoldPlan(folds, k, usable / k)
