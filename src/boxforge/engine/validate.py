"""Validation during training: VOC07/VOC12/COCO mAP and the mean IoU of confident matches."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
from torch import nn

from boxforge.data.index import DatasetIndex
from boxforge.evaluation import evaluate_detections
from boxforge.inference import mean_matched_iou, predict_index

# Benchmark conventions: keep low-score detections for mAP.
VAL_POSTPROCESS = {"score_thresh": 0.001, "detections_per_img": 100}


def validate(model: nn.Module, index: DatasetIndex, *, device: torch.device, batch_size: int = 8,
             amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Flat metrics for metrics.jsonl: voc07_map, voc12_map, coco_AP, coco_AP50, coco_AP75, mean_iou."""
    saved = model.postprocess_settings()
    model.set_postprocess(**VAL_POSTPROCESS)
    try:
        preds = predict_index(model, index, img_size=model.img_size, device=device, batch_size=batch_size,
                              amp_dtype=amp_dtype)
    finally:
        model.set_postprocess(**saved)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_detections(index, preds, metrics=("voc07", "voc12", "coco"))
    out = {"voc07_map": results["voc07"]["map"], "voc12_map": results["voc12"]["map"]}
    for key in ("AP", "AP50", "AP75"):
        out[f"coco_{key}"] = results["coco"][key]
    out["mean_iou"] = mean_matched_iou(index, preds)
    return {k: (float(v) if v is not None else math.nan) for k, v in out.items()}
