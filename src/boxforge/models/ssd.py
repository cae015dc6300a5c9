"""torchvision's `SSD`, with its loss normalised over all ranks of a torchrun job.

torchvision divides the summed box and class losses by the number of matched default boxes
in the *local* batch. Under DistributedDataParallel, which averages gradients over ranks,
that makes N ranks of batch B train differently from one process with batch N x B whenever
the ranks see different numbers of objects. Dividing by the mean count over ranks instead
(one all-reduce of a scalar per step, counted as
`max(1, total)` exactly as torchvision does) makes the averaged gradient exactly the single-process
one. With one process, or outside torch.distributed, nothing changes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.models.detection.ssd import SSD


class GlobalNormSSD(SSD):
    """`SSD` whose training loss divides by the foreground count of the whole distributed batch."""

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return losses
        local = sum(int((m >= 0).sum()) for m in matched_idxs)
        count = torch.tensor([float(local)], dtype=torch.float64, device=head_outputs["cls_logits"].device)
        dist.all_reduce(count)
        # torchvision returned sum / max(1, local); one process with the whole batch would use
        # sum_all / max(1, total), and DDP averages over W ranks: so rank r's share is sum_r * W / max(1, total).
        scale = max(1, local) * dist.get_world_size() / max(1.0, float(count))
        return {name: value * scale for name, value in losses.items()}
