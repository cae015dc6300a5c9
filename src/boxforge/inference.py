"""Run a detector over a dataset index and collect `Predictions` in the dataset's pixel coordinates.

Shared by validation during training, `eval --weights` and `predict`; no training code here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from boxforge.data.index import DatasetIndex
from boxforge.data.loading import DetectionDataset, detection_collate, make_loader
from boxforge.data.transforms import detection_transforms
from boxforge.evaluation.predictions import Predictions


@torch.no_grad()
def predict_index(model: nn.Module, index: DatasetIndex, *, img_size: int, device: torch.device,
                  batch_size: int = 8, workers: int = 0, amp_dtype: torch.dtype | None = None) -> Predictions:
    """Detections for every readable image of `index`, boxes scaled back to each image's own pixels.

    model: a `Detector` (eval-mode forward returns boxes in the pixels of its input, here the
    `img_size` x `img_size` resized image); labels 0-based into `index.classes`.
    """
    dataset = DetectionDataset(index, detection_transforms(False, img_size))
    loader = make_loader(dataset, batch_size, workers=workers, collate_fn=detection_collate)
    was_training = model.training
    model.eval()
    preds = Predictions(list(index.classes))
    try:
        for images, targets in loader:
            batch = images.to(device) if isinstance(images, torch.Tensor) else [im.to(device) for im in images]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(batch)
            for det, target in zip(outputs, targets):
                height, width = target["orig_size"]
                scale = np.array([width / img_size, height / img_size] * 2)
                boxes = det["boxes"].float().cpu().numpy() * scale
                preds.add(target["image_id"], boxes, det["scores"].float().cpu().numpy(), det["labels"].cpu().numpy())
    finally:
        model.train(was_training)
    return preds


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
