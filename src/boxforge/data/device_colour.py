"""RandomPhotometricDistort on a stacked uint8 batch, each image with its own drawn factors.

torchvision's colour kernels take one Python float for the whole tensor, so a batch whose
images drew different factors would need one call per image and op (about 30 small kernel
launches an image on a GPU). These functions repeat the kernels' arithmetic (torchvision 0.29,
transforms/v2/functional/_color.py) with a (k, 1, 1, 1) tensor of factors instead, on the k
images an op applies to: each op runs once per batch. Results agree with the per-image
kernels within uint8 rounding, checked by tests/data/test_device_augment.py (on CPU: exactly, in the
seeds tried; on a GPU, float32 kernels may round a last bit differently).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv


def _factors(values: Sequence[float], like: Tensor) -> Tensor:
    """(k, 1, 1, 1) float32, as torch casts a Python float factor for a float32 op."""
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(-1, 1, 1, 1)


def _grey(x: Tensor) -> Tensor:
    """(k, 1, H, W) float32 luma, floored as torchvision does for uint8 input."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _blend(x: Tensor, other: Tensor, ratios: Sequence[float]) -> Tensor:
    """torchvision's `x.mul(r).add_(other, alpha=1 - r)`, clamped and truncated to uint8.

    torch's CPU add with alpha is a fused multiply-add (one rounding); the float64 sum of the float32 terms
    rounds once too (their product is exact in float64), where a float32 `other * (1 - r)` then `+` would
    round twice and, after truncation to uint8, move a pixel by 1 that a later contrast factor grows to 2.
    """
    scaled = x.mul(_factors(ratios, x)).double()
    rest = other.double() * _factors([1.0 - r for r in ratios], x).double()
    return scaled.add_(rest).float().clamp_(0, 255).to(torch.uint8)


def brightness(x: Tensor, factors: Sequence[float]) -> Tensor:
    return x.mul(_factors(factors, x)).clamp_(0, 255).to(torch.uint8)


def contrast(x: Tensor, factors: Sequence[float]) -> Tensor:
    return _blend(x, torch.mean(_grey(x), dim=(-3, -2, -1), keepdim=True), factors)


def saturation(x: Tensor, factors: Sequence[float]) -> Tensor:
    return _blend(x, _grey(x), factors)


def hue(x: Tensor, factors: Sequence[float]) -> Tensor:
    hsv = _rgb_to_hsv(F.to_dtype(x, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(_factors(factors, x).view(-1, 1, 1)).remainder_(1.0)
    return F.to_dtype(_hsv_to_rgb(torch.stack((h, s, v), dim=-3)), torch.uint8, scale=True)


def _each(batch: Tensor, params: Sequence[Any], pick: Callable[[Any], float | None],
          op: Callable[[Tensor, list[float]], Tensor]) -> Tensor:
    """`op` on the images whose `pick(params)` is not None, with those values as factors."""
    rows = [i for i, p in enumerate(params) if pick(p) is not None]
    if rows:
        batch[rows] = op(batch[rows], [float(pick(params[i])) for i in rows])  # type: ignore[arg-type]
    return batch


def photometric(batch: Tensor, params: Sequence[Any]) -> Tensor:
    """(B, 3, H, W) uint8 -> the same with each image's SSDParams colour draw applied, in the v2 order:
    brightness, contrast (if before), saturation, hue, contrast (if after), channel permutation."""
    batch = batch.clone()
    batch = _each(batch, params, lambda p: p.brightness, brightness)
    batch = _each(batch, params, lambda p: p.contrast if p.contrast_before else None, contrast)
    batch = _each(batch, params, lambda p: p.saturation, saturation)
    batch = _each(batch, params, lambda p: p.hue, hue)
    batch = _each(batch, params, lambda p: None if p.contrast_before else p.contrast, contrast)
    rows = [i for i, p in enumerate(params) if p.permutation is not None]
    if rows:
        order = torch.tensor([params[i].permutation for i in rows], device=batch.device)
        index = order.view(len(rows), 3, 1, 1).expand(len(rows), 3, *batch.shape[-2:])
        batch[rows] = torch.gather(batch[rows], 1, index)
    return batch
