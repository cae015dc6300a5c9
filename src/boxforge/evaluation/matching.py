"""How tight are the boxes a detector is sure of: the mean IoU of its confident, matched detections."""

from __future__ import annotations

import numpy as np
import torch

from boxforge.data.index import DatasetIndex
from boxforge.evaluation.predictions import Predictions


def mean_matched_iou(index: DatasetIndex, preds: Predictions, *, score_thresh: float = 0.5,
                     iou_thresh: float = 0.5) -> float:
    """Mean IoU of confident predictions (score >= score_thresh) that overlap a same-class box by >= iou_thresh.

    The darknet "avg IOU" idea: how tight are the boxes the model is sure about. NaN when none match.
    """
    from torchvision.ops import box_iou

    ious = []
    for sample in index.samples:
        p = preds.images.get(sample.image_id)
        if p is None or not len(p) or not sample.num_objects:
            continue
        keep = p.scores >= score_thresh
        if not keep.any():
            continue
        iou = box_iou(torch.as_tensor(p.boxes[keep]), torch.as_tensor(sample.boxes, dtype=torch.float64)).numpy()
        same = p.labels[keep][:, None] == sample.labels[None, :]
        best = np.where(same, iou, 0.0).max(axis=1)
        ious.extend(best[best >= iou_thresh].tolist())
    return float(np.mean(ious)) if ious else float("nan")
