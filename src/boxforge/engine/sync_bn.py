"""BatchNorm over the whole distributed batch (`--sync-bn`), on CUDA and on CPU.

Per-rank BatchNorm (the default, as in torchvision's references) normalises each rank's
batch by its own statistics, so N ranks of batch B are not one process of batch N x B.
`torch.nn.SyncBatchNorm` fixes that on GPUs only; its forward refuses CPU tensors. For CPU
(gloo) jobs, `GlobalBatchNorm` does the same thing with one autograd-aware all-reduce of
the per-channel sums: the backward of that all-reduce sums the statistics' gradients over
ranks, which is exactly the gradient of the global batch's loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch on all ranks together.

    Outside a multi-process group, or in eval mode, it is plain BatchNorm. The state dict
    is BatchNorm's, so checkpoints load into ordinary models.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float()
        local = torch.cat([x.sum(dims), (x * x).sum(dims),
                           x.new_tensor([input.numel() / channels])])
        total = dist_nn.all_reduce(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_bn(model: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm in `model` in place by a cross-rank one; returns how many.

    CUDA uses `torch.nn.SyncBatchNorm`; CPU uses `GlobalBatchNorm`. Parameters and running
    statistics are kept (the same tensors), as are eps, momentum and a frozen module's mode.
    """
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(
                    child, (GlobalBatchNorm, nn.SyncBatchNorm)):
                continue
            cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(parent, name, new)
            count += 1
    return count
