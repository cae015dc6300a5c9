"""Targets and losses of the anchor-free detector (dense.py).

Assignment, task-aligned (TOOD, Feng et al. 2021): a cell may learn an object only if its centre
lies inside the object's box; among those cells, the `topk` with the highest alignment
`score^alpha * IoU^beta` (score: the cell's current probability for the object's class, IoU:
its current predicted box against the object) become positives. The assignment follows what
the network already does well, so there are no anchor shapes or IoU thresholds to tune to a
dataset. A cell claimed by several objects keeps the one its box overlaps most. An object too
small to contain any cell centre gets its nearest cell, so small objects are never left without
a positive (a case the published rule leaves out).

Losses, each normalised by the sum of the soft class targets over the (distributed) batch:
* class: binary cross-entropy against soft targets, the alignment rescaled so each object's
  best cell gets that cell's IoU (the "IoU-aware" target of VarifocalNet / TOOD);
* box: 1 - CIoU of the decoded boxes, weighted by the target;
* distribution focal loss (Li et al. 2020): cross-entropy of each side's distance distribution
  against the two bins around the true distance.
Gains 7.5 / 0.5 / 1.5 (box / class / distribution) are the ones published for this loss family.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss

GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
# The loss names SSD uses for the first two (the log shortens them to box / cls / dfl).
BOX, CLS, DFL = "bbox_regression", "classification", "bbox_distribution"


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """(B, G, 4) x (B, A, 4) xyxy -> (B, G, A) IoU."""
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter + eps)


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image boxes/labels -> (B, G, 4) boxes, (B, G) 0-based labels, (B, G) bool valid; G = most boxes."""
    most = max([len(t["labels"]) for t in targets] + [1])
    boxes = torch.zeros(len(targets), most, 4, device=device)
    labels = torch.zeros(len(targets), most, dtype=torch.int64, device=device)
    valid = torch.zeros(len(targets), most, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n], labels[i, :n], valid[i, :n] = t["boxes"], t["labels"], True
    return boxes, labels, valid


@torch.no_grad()
def assign(scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
           gt_valid: Tensor, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
           eps: float = 1e-9) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment (module docstring).

    scores (B, A, C) probabilities, pred_boxes (B, A, 4) pixels, points (A, 2) pixels,
    gt_boxes (B, G, 4), gt_labels (B, G), gt_valid (B, G).
    Returns foreground (B, A) bool, the assigned object per cell (B, A) int64 index into G,
    soft class targets (B, A, C).
    """
    bsz, cells, num_classes = scores.shape
    x, y = points[:, 0], points[:, 1]
    inside = ((x[None, None] > gt_boxes[..., 0:1]) & (x[None, None] < gt_boxes[..., 2:3])
              & (y[None, None] > gt_boxes[..., 1:2]) & (y[None, None] < gt_boxes[..., 3:4]))  # (B, G, A)
    centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    nearest = (centres[:, :, None, :] - points[None, None]).square().sum(-1).argmin(-1)  # (B, G)
    empty = ~inside.any(-1)
    inside = inside | (F.one_hot(nearest, cells).bool() & empty[..., None])
    inside &= gt_valid[..., None]

    ious = pairwise_iou(gt_boxes, pred_boxes).clamp(min=0)  # (B, G, A)
    cls_scores = scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(-1, -1, cells))  # (B, G, A)
    align = cls_scores.pow(alpha) * ious.pow(beta) * inside
    # top-k cells by alignment among the candidates; ties at zero still need a candidate cell,
    # so rank candidates above non-candidates with a tiny bonus.
    ranked = align + inside * eps
    top = ranked.topk(min(topk, cells), dim=-1).indices
    chosen = torch.zeros_like(inside).scatter_(-1, top, True) & inside  # (B, G, A)

    # a cell claimed by several objects keeps the one (among those) its predicted box overlaps most
    multi = chosen.sum(1) > 1  # (B, A)
    if multi.any():
        best = ious.masked_fill(~chosen, -1.0).argmax(1)  # (B, A)
        best = F.one_hot(best, chosen.shape[1]).transpose(1, 2).bool()  # (B, G, A)
        chosen = torch.where(multi[:, None, :], best, chosen)
    foreground = chosen.any(1)  # (B, A)
    assigned = chosen.float().argmax(1)  # (B, A)

    align = align * chosen
    best_align = align.amax(-1, keepdim=True)
    best_iou = (ious * chosen).amax(-1, keepdim=True)
    quality = (align * best_iou / (best_align + eps)).amax(1)  # (B, A)
    labels = gt_labels.gather(1, assigned)
    targets = F.one_hot(labels, num_classes).float() * (quality * foreground)[..., None]
    return foreground, assigned, targets


def _global_sum(value: Tensor) -> Tensor:
    """The sum over all ranks divided by the world size (DDP averages gradients over ranks)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class DenseLoss(nn.Module):
    """Assign targets, then the class, box and distribution losses (module docstring)."""

    def __init__(self, num_classes: int, reg_max: int, topk: int = 10) -> None:
        super().__init__()
        self.num_classes, self.reg_max, self.topk = num_classes, reg_max, topk

    def forward(self, box_logits: Tensor, pred_boxes: Tensor, cls_logits: Tensor, points: Tensor, strides: Tensor,
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """box_logits (B, A, 4 * reg_max), pred_boxes (B, A, 4) their decoded xyxy pixels, cls_logits (B, A, C),
        points (A, 2), strides (A,), targets: per image "boxes" (N, 4) pixels and "labels" (N,) 0-based."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, cls_logits.device)
        foreground, assigned, cls_targets = assign(cls_logits.detach().sigmoid(), pred_boxes.detach(), points,
                                                   gt_boxes, gt_labels, gt_valid, topk=self.topk)
        norm = _global_sum(cls_targets.sum()).clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_targets, reduction="sum") / norm

        if not foreground.any():
            zero = box_logits.sum() * 0.0
            return {BOX: zero, CLS: loss_cls * GAINS["cls"], DFL: zero}
        weight = cls_targets.sum(-1)[foreground]  # (P,)
        target_boxes = gt_boxes.gather(1, assigned[..., None].expand(-1, -1, 4))[foreground]  # (P, 4)
        loss_box = (complete_box_iou_loss(pred_boxes[foreground], target_boxes, reduction="none") * weight).sum() / norm

        pts, step = points[None].expand(len(targets), -1, -1)[foreground], strides[None].expand(len(targets), -1)[foreground]
        ltrb = torch.cat([pts - target_boxes[:, :2], target_boxes[:, 2:] - pts], -1) / step[:, None]
        ltrb = ltrb.clamp(0, self.reg_max - 1 - 0.01)
        left = ltrb.floor().long()
        w_right = ltrb - left
        logits = box_logits[foreground].reshape(-1, self.reg_max)  # (P * 4, R)
        ce_left = F.cross_entropy(logits, left.flatten(), reduction="none")
        ce_right = F.cross_entropy(logits, (left + 1).flatten(), reduction="none")
        dfl = (ce_left * (1 - w_right.flatten()) + ce_right * w_right.flatten()).view(-1, 4).mean(-1)
        loss_dfl = (dfl * weight).sum() / norm
        return {BOX: loss_box * GAINS["box"], CLS: loss_cls * GAINS["cls"], DFL: loss_dfl * GAINS["dfl"]}
