"""Classification metrics: loss, top-1 / top-5 accuracy, per-class accuracy and the confusion matrix.

One accumulator (`TopKMeter`) serves training's validation and `boxforge eval --task classify`, so
both report the same numbers. It takes class probabilities, not logits, because that is what an
exported ONNX classifier (softmax inside) returns; the loss is then the mean negative log-likelihood
of the true class, which equals the cross-entropy of the logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

_EPS = 1e-12


def topk_correct(probs: Tensor, labels: Tensor, k: int) -> Tensor:
    """(B,) bool: is the true label among the k highest of probs (B, C)? k is capped at C."""
    k = min(k, probs.shape[1])
    return (probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


class TopKMeter:
    """Running sums over batches; `batch()` gives the last batch's numbers, `summary()` the totals."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        n = len(class_names)
        self.confusion = np.zeros((n, n), dtype=np.int64)  # rows: true class, columns: top-1 prediction
        self.count = 0
        self.loss_sum = 0.0
        self.correct1 = 0
        self.correct5 = 0
        self.last: dict[str, float] = {}

    def update(self, probs: Tensor, labels: Tensor) -> dict[str, float]:
        """probs: (B, C) float, rows summing to 1; labels: (B,) int64 in 0..C-1."""
        probs, labels = probs.detach().float().cpu(), labels.detach().long().cpu()
        nll = -torch.log(probs.gather(1, labels[:, None]).clamp_min(_EPS)).squeeze(1)
        c1, c5 = topk_correct(probs, labels, 1), topk_correct(probs, labels, 5)
        np.add.at(self.confusion, (labels.numpy(), probs.argmax(1).numpy()), 1)
        b = len(labels)
        self.count += b
        self.loss_sum += float(nll.sum())
        self.correct1 += int(c1.sum())
        self.correct5 += int(c5.sum())
        self.last = {"loss": float(nll.mean()), "acc1": 100.0 * float(c1.float().mean()),
                     "acc5": 100.0 * float(c5.float().mean())}
        return self.last

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else math.nan

    @property
    def acc1(self) -> float:
        return 100.0 * self.correct1 / self.count if self.count else math.nan

    @property
    def acc5(self) -> float:
        return 100.0 * self.correct5 / self.count if self.count else math.nan

    def summary(self) -> dict[str, float]:
        """Flat metrics in percent (as torchvision's references print them): loss, acc1, acc5."""
        return {"loss": self.loss, "acc1": self.acc1, "acc5": self.acc5}

    def per_class(self) -> dict[str, dict[str, Any]]:
        """{class: {"images": n, "acc1": percent or None (no image of that class)}}."""
        totals = self.confusion.sum(axis=1)
        hits = np.diag(self.confusion)
        return {name: {"images": int(t), "acc1": (100.0 * float(h) / float(t)) if t else None}
                for name, t, h in zip(self.class_names, totals, hits)}

    def to_json(self) -> dict[str, Any]:
        return {**{k: (None if math.isnan(v) else v) for k, v in self.summary().items()}, "images": self.count,
                "per_class": self.per_class(),
                "confusion_matrix": {"rows": "true class", "columns": "top-1 prediction",
                                     "classes": self.class_names, "matrix": self.confusion.tolist()}}
