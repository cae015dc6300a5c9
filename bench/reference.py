"""The baseline: what a user of torchvision's reference detection scripts gets.

Written from the torchvision documentation of `references/detection` (presets, engine,
train.py defaults), not copied from it:

- dataset: a list of per-image records (Python objects), PIL decode + `convert("RGB")`,
  target {"boxes": BoundingBoxes XYXY, "labels"} (what a user writes for VOC-style data);
- transforms v2 on the PIL image, the `ssdlite` preset (RandomIoUCrop, RandomHorizontalFlip,
  then to tensor, ToDtype float scale, ConvertBoundingBoxFormat XYXY, SanitizeBoundingBoxes,
  ToPureTensor) or the `ssd` preset (photometric distort and zoom out first);
  the resize to the model's size happens inside the model (GeneralizedRCNNTransform, bilinear
  on float, no antialias): `model_side_resize` does the same for the data-pipeline figure;
- the default DataLoader (fork workers started every epoch, not persistent) with the
  references' collate `tuple(zip(*batch))`;
- `train_one_epoch`: the plain fp32 eager loop (sum of losses, zero_grad, backward, step,
  linear warm-up in the first epoch), one intra-op thread pool left at torch's default.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from boxforge.data.index import DatasetIndex

SSD_MEAN_FILL = [123.0, 117.0, 104.0]


class ReferenceDataset(Dataset):
    """PIL-decoded images and targets of an index; records kept as Python objects, as users write it."""

    def __init__(self, index: DatasetIndex, transforms: Callable[..., Any] | None) -> None:
        self.records = [{"path": str(s.image_path), "boxes": s.boxes.tolist(), "labels": s.labels.tolist(),
                         "image_id": s.image_id} for s in index.samples]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        rec = self.records[i]
        image = Image.open(rec["path"]).convert("RGB")
        boxes = torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(image.height, image.width)),
                  "labels": torch.tensor(rec["labels"], dtype=torch.int64), "image_id": rec["image_id"]}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def train_preset(augmentation: str = "ssdlite", hflip_prob: float = 0.5) -> v2.Compose:
    """The references' DetectionPresetTrain with the PIL backend and transforms v2."""
    steps: list[Any] = []
    if augmentation == "ssd":
        steps += [v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill=SSD_MEAN_FILL)]
    elif augmentation != "ssdlite":
        raise ValueError(f"unknown augmentation {augmentation!r}; choose ssdlite or ssd")
    steps += [v2.RandomIoUCrop(), v2.RandomHorizontalFlip(p=hflip_prob)]
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
              v2.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY), v2.SanitizeBoundingBoxes(),
              v2.ToPureTensor()]
    return v2.Compose(steps)


class WithModelResize:
    """preset, then the model-side resize (bilinear on float, no antialias): a whole training sample."""

    def __init__(self, preset: Callable[..., Any], size: int) -> None:
        self.preset, self.size = preset, size

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        image, target = self.preset(image, target)
        h, w = image.shape[-2:]
        image = torch.nn.functional.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                                                align_corners=False)[0]
        scale = torch.tensor([self.size / w, self.size / h] * 2)
        target["boxes"] = target["boxes"] * scale
        return image, target


def collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch))


def loader(dataset: Dataset, batch_size: int, workers: int, seed: int = 0) -> DataLoader:
    """The references' DataLoader: random sampler, their collate, default (fork, non-persistent) workers."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                      generator=generator)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: DataLoader, epoch: int,
                    warmup_iters: int, on_step: Callable[[int], None] | None = None,
                    max_images: int | None = None, device: torch.device | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> int:
    """The references' loop, fp32 eager; returns images seen. on_step(batch) is called after each step.

    device: where images and targets go, one tensor at a time as the references move them (CPU: stay).
    scaler: the references' `--amp` (float16 autocast on the device, loss scaling).
    """
    device = device or torch.device("cpu")
    model.train()
    seen = 0
    warmup = None
    if epoch == 0 and warmup_iters > 0:
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=warmup_iters)
    for images, targets in data:
        images = [image.to(device) for image in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        if not math.isfinite(float(losses.detach())):
            raise RuntimeError(f"loss is {float(losses.detach())}, stopping training")
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            optimizer.step()
        if warmup is not None:
            warmup.step()
        seen += len(images)
        if on_step is not None:
            on_step(len(images))
        if max_images is not None and seen >= max_images:
            break
    return seen


def stopwatch() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
