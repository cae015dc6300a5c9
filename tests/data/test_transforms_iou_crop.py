"""SafeIoUCrop's numpy search returns exactly the crop torchvision's RandomIoUCrop returns, from the same RNG state."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from boxforge.data.transforms import SafeIoUCrop


def _inputs(gen: torch.Generator) -> list:
    h, w = int(torch.randint(40, 600, (1,), generator=gen)), int(torch.randint(40, 600, (1,), generator=gen))
    n = int(torch.randint(1, 12, (1,), generator=gen))
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 2, h - 2])
    wh = 1 + torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.8
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
    boxes = boxes.round() if n % 2 else boxes  # integer and fractional coordinates
    return [tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8)),
            tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))]


def test_same_crop_as_torchvision_for_the_same_seed():
    ours, theirs = SafeIoUCrop(), v2.RandomIoUCrop()
    gen = torch.Generator().manual_seed(0)
    for seed in range(500):
        inputs = _inputs(gen)
        torch.manual_seed(seed)
        a = ours.make_params(inputs)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        b = theirs.make_params(inputs)
        after_theirs = torch.rand(1)
        assert a.keys() == b.keys(), seed
        for key in a:
            if key == "is_within_crop_area":
                assert torch.equal(a[key], b[key]), seed
            else:
                assert a[key] == b[key], (seed, key)
        assert torch.equal(after_ours, after_theirs), seed  # the same number of draws


def test_no_boxes_means_no_crop():
    image = tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8))
    empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(20, 30))
    assert SafeIoUCrop(sampler_options=[0.5]).make_params([image, empty]) == {}
