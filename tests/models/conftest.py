"""Model tests: two CPU threads, fixed seeds, tiny images; and a helper batch of two images."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _cpu_and_seed() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def tiny_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes, (3, 120, 160) and (3, 100, 90), with 1 and 2 boxes; labels 0-based."""
    images = [torch.rand(3, 120, 160), torch.rand(3, 100, 90)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 110.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 60.0], [30.0, 40.0, 88.0, 98.0]]), "labels": torch.tensor([1, 2])},
    ]
    return images, targets
