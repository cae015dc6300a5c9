"""An export-friendly forward of a boxforge detector: one static graph from pixels to final detections.

torchvision's `SSD.forward` is not that graph: its GeneralizedRCNNTransform normalises and resizes
image by image in Python, and its post-processing loops over classes with data-dependent shapes.
`ExportableDetector` reuses the model's own parts (backbone, head, anchors, box coder) and does the rest
with batched tensor operations:

    images (B, 3, S, S) float32 RGB 0..1; score_thresh, iou_thresh (0-d float32), max_det (0-d int64)
      -> (x - mean) / std                        the model's image_mean/image_std, as its transform does
      -> backbone -> head                        cls_logits (B, A, C+1), bbox_regression (B, A, 4)
      -> decode against the fixed anchors (A, 4), clip to the image; softmax, drop background
      -> per class: keep the topk_candidates best anchors (as torchvision does before NMS)
      -> per-class NMS with score threshold      ONNX NonMaxSuppression (batched, multi-class natively)
      -> the max_det best over all classes       TopK over a dense (B, C*A) score table
    boxes (B, K, 4) in input pixels, scores (B, K), labels (B, K) int64 0-based, num_detections (B,);
    K = min(max_det, C * A)

The three thresholds are inputs of the graph, not constants, so one exported file serves `eval` (0.001,
100 detections) and `predict` (0.5) alike; export/onnx.py gives them the export's values as defaults.

The anchor-free yolo_csp (models/dense.py) replaces the backbone-to-softmax steps by its own
`raw_outputs` (decoded boxes and sigmoid class probabilities); the post-processing is the same.

Rows past num_detections are padding: zero boxes and scores, label -1. In eager mode the NMS step
(`multiclass_nms`, a torch custom op) runs torchvision.ops.nms per image and class, so the module itself
can be checked against the Detector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms


@torch.library.custom_op("boxforge::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou_thresh: Tensor,
                   score_thresh: Tensor) -> Tensor:
    """ONNX NonMaxSuppression semantics: boxes (B, N, 4) xyxy, scores (B, C, N), and three 0-d tensors
    (int64, float32, float32) -> selected (M, 3) int64 rows [batch, class, box], per class at most
    `max_per_class`, only scores > score_thresh, each class by descending score.

    A torch custom op: eager runs torchvision's nms per image and class; `torch.export` keeps it as one
    opaque node, which the exporter translates to NonMaxSuppression (export/onnx.py `nms_to_onnx`)."""
    limit, iou = int(max_per_class.reshape(-1)[0]), float(iou_thresh.reshape(-1)[0])
    low = float(score_thresh.reshape(-1)[0])
    rows = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = torch.nonzero(scores[b, c] > low).flatten()
            keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou)][:limit]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)


@multiclass_nms.register_fake
def _multiclass_nms_shape(boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou_thresh: Tensor,
                          score_thresh: Tensor) -> Tensor:
    """For tracing: (M, 3) int64 with M data-dependent."""
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


def model_anchors(ssd: nn.Module, img_size: int) -> Tensor:
    """The SSD's default boxes for an img_size x img_size input: (A, 4) float32 xyxy pixels (same for every image)."""
    was_training = ssd.training
    ssd.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 3, img_size, img_size, device=next(ssd.parameters()).device)
            features = ssd.backbone(probe)
            features = list(features.values()) if isinstance(features, dict) else [features]
            anchors = ssd.anchor_generator(ImageList(probe, [(img_size, img_size)]), features)[0]
    finally:
        ssd.train(was_training)
    return anchors.float()


class ExportableDetector(nn.Module):
    """A Detector's SSD as one batched graph; see the module docstring for inputs and outputs.

    score_thresh, iou_thresh, max_det: the post-processing used when `forward` is not given them (the
    exported inputs' defaults; torchvision's score_thresh, nms_thresh, detections_per_img);
    topk_candidates: per-class pre-NMS limit, fixed in the graph (default: the model's own).
    """

    def __init__(self, detector: nn.Module, *, score_thresh: float, iou_thresh: float, max_det: int,
                 topk_candidates: int | None = None) -> None:
        super().__init__()
        ssd = detector.model
        self.img_size = int(detector.img_size)
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        # Anchor-free models (models/dense.py) give decoded boxes and per-class probabilities themselves.
        self.dense = ssd if hasattr(ssd, "raw_outputs") else None
        if self.dense is None:
            self.backbone, self.head = ssd.backbone, ssd.head
            self.register_buffer("anchors", model_anchors(ssd, self.img_size))
            self.box_weights = tuple(float(w) for w in ssd.box_coder.weights)
            self.xform_clip = float(ssd.box_coder.bbox_xform_clip)
        self.num_classes = int(detector.num_classes)
        self.score_thresh, self.iou_thresh, self.max_det = float(score_thresh), float(iou_thresh), int(max_det)
        self.topk_candidates = int(topk_candidates if topk_candidates is not None else ssd.topk_candidates)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, A, 4) regression codes -> (B, A, 4) xyxy pixels, clipped to the image (torchvision's decode_single)."""
        a = self.anchors
        widths, heights = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        ctr_x, ctr_y = a[:, 0] + 0.5 * widths, a[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.box_weights
        dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
        dw = torch.clamp(codes[..., 2] / ww, max=self.xform_clip)
        dh = torch.clamp(codes[..., 3] / wh, max=self.xform_clip)
        pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
        half_w, half_h = 0.5 * (torch.exp(dw) * widths), 0.5 * (torch.exp(dh) * heights)
        boxes = torch.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], -1)
        return boxes.clamp(min=0.0, max=float(self.img_size))

    def raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Before post-processing: boxes (B, A, 4) xyxy pixels for every anchor, scores (B, A, C) without background."""
        if self.dense is not None:
            return self.dense.raw_outputs((images - self.mean) / self.std)
        features = self.backbone((images - self.mean) / self.std)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        return self.decode(out["bbox_regression"]), F.softmax(out["cls_logits"], dim=-1)[..., 1:]

    def thresholds(self) -> tuple[Tensor, Tensor, Tensor]:
        """The export's settings as the graph's three extra inputs: score_thresh, iou_thresh (0-d float32),
        max_det (0-d int64)."""
        return (torch.tensor(self.score_thresh, dtype=torch.float32), torch.tensor(self.iou_thresh, dtype=torch.float32),
                torch.tensor(self.max_det, dtype=torch.int64))

    def forward(self, images: Tensor, score_thresh: Tensor | None = None, iou_thresh: Tensor | None = None,
                max_det: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images (B, 3, S, S) -> the four outputs; a threshold left None is the export's (see `thresholds`)."""
        defaults = self.thresholds()
        given = (score_thresh, iou_thresh, max_det)
        return self.postprocess(*self.raw(images), *(d if g is None else g for g, d in zip(given, defaults)))

    def postprocess(self, boxes: Tensor, scores: Tensor, score_thresh: Tensor, iou_thresh: Tensor,
                    max_det: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """boxes (B, A, 4), scores (B, A, C), the thresholds as 0-d tensors -> the four outputs, K = min(max_det, C*A)
        rows (see the module docstring). max_det is read as a number (`.item()`), so the exported graph's
        output rows follow the input."""
        num_anchors, num_classes = int(scores.shape[1]), int(scores.shape[2])
        by_class = scores.transpose(1, 2)  # (B, C, A)
        top_scores, top_index = by_class.topk(min(self.topk_candidates, num_anchors), dim=2)
        candidates = torch.zeros_like(by_class).scatter(2, top_index, top_scores)
        limit = max_det.reshape(1).to(torch.int64)
        selected = multiclass_nms(boxes, candidates, limit, iou_thresh.reshape(1).float(),
                                  score_thresh.reshape(1).float())
        flat = (selected[:, 0] * num_classes + selected[:, 1]) * num_anchors + selected[:, 2]
        table = candidates.reshape(-1)
        dense = torch.full_like(table, -1.0).scatter(0, flat, table[flat]).reshape(-1, num_classes * num_anchors)
        # .item() without int(): torch.export's non-strict tracer (the exporter's first, fastest try) keeps
        # the unbacked symbol; int() would ask it for a concrete value and fall back to the slow strict tracer
        k = limit.clamp(1, num_classes * num_anchors).item()
        torch._check(k >= 1)
        torch._check(k <= num_classes * num_anchors)
        best, index = dense.topk(k, dim=1)  # (B, K), by score
        valid = best >= 0
        labels = torch.div(index, num_anchors, rounding_mode="floor")
        anchor = index - labels * num_anchors
        det_boxes = torch.gather(boxes, 1, anchor.unsqueeze(-1).repeat(1, 1, 4))
        det_boxes = torch.where(valid.unsqueeze(-1), det_boxes, torch.zeros_like(det_boxes))
        det_scores = torch.where(valid, best, torch.zeros_like(best))
        det_labels = torch.where(valid, labels, torch.full_like(labels, -1))
        return det_boxes, det_scores, det_labels, valid.sum(dim=1)


class WithRawOutputs(nn.Module):
    """`ExportableDetector` with the network's outputs as two more outputs, computed once: (boxes, scores,
    labels, num_detections, raw_boxes (B, A, 4), raw_scores (B, A, C)).

    The export traces this module once; the parity check runs that graph (both steps from one file), and the
    file written drops the last two outputs (export/onnx.py), so the network is traced and translated once.
    The attribute is not called `graph`: torch.export's GraphModule owns that name."""

    def __init__(self, graph: ExportableDetector) -> None:
        super().__init__()
        self.detector = graph

    def forward(self, images: Tensor, score_thresh: Tensor, iou_thresh: Tensor,
                max_det: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        boxes, scores = self.detector.raw(images)
        return (*self.detector.postprocess(boxes, scores, score_thresh, iou_thresh, max_det), boxes, scores)
