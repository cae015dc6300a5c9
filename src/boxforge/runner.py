"""Run a backend (see predictor.py) over many image files, in batches, with boxes in each image's own pixels.

Shared by `eval --weights` and `predict`. Images are decoded (EXIF orientation applied) and resized
to the model's square input exactly as in training's validation (`detection_transforms(False, S)`),
so a checkpoint gives here the same numbers it gave in its run's validation. An image that cannot be
read is reported in its `ImageResult.error` and skipped, never fatal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from boxforge.data.images import ImageReadError
from boxforge.data.loading import make_loader, read_image
from boxforge.data.transforms import detection_transforms
from boxforge.errors import BoxforgeError, UnsafeInputError
from boxforge.evaluation.predictions import Predictions

_READ_ERRORS = (OSError, ImageReadError, UnsafeInputError, RuntimeError, ValueError)


@dataclass
class ImageResult:
    """One image's detections. boxes: (N, 4) float64 xyxy in the original image's pixels; scores (N,);
    labels (N,) int64 0-based. pixels: (3, H, W) uint8 when asked for (to draw on), else None.
    error: why the image was skipped ("" when it was not)."""

    image_id: str
    path: Path
    height: int = 0
    width: int = 0
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    pixels: torch.Tensor | None = None
    error: str = ""


class _Images(Dataset):
    """Item i: (i, (3, S, S) float32 in 0..1 or None, (3, H, W) uint8 or None, error message)."""

    def __init__(self, paths: Sequence[Path], img_size: int, keep_pixels: bool) -> None:
        self.paths = list(paths)
        self.transform = detection_transforms(False, img_size)
        self.keep_pixels = keep_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None, str, tuple[int, int]]:
        path = self.paths[i]
        try:
            pixels = read_image(path)
        except FileNotFoundError:
            return i, None, None, f"{path}: file not found", (0, 0)
        except _READ_ERRORS as exc:  # decoders raise many types; any failure skips this image only
            text = str(exc) or type(exc).__name__
            return i, None, None, text if text.startswith(str(path)) else f"{path}: {text}", (0, 0)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        image = self.transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        return i, image, pixels if self.keep_pixels else None, "", size


def _collate(batch: list) -> list:
    return batch


def iter_detections(backend, items: Sequence[tuple[str, Path]], *, batch_size: int = 8, workers: int = 0,
                    keep_pixels: bool = False, progress: Callable[[int, int, float], None] | None = None
                    ) -> Iterator[ImageResult]:
    """Yield one ImageResult per (image_id, path) of `items`, in order.

    backend: a TorchBackend or OnnxBackend. progress(done, total, seconds) is called after each batch.
    """
    if batch_size < 1 or workers < 0:
        raise BoxforgeError(f"batch size {batch_size} and workers {workers}: allowed batch size >= 1, workers >= 0")
    size = backend.img_size
    loader = make_loader(_Images([p for _, p in items], size, keep_pixels), batch_size, workers=workers,
                         collate_fn=_collate)
    start, done = time.perf_counter(), 0
    for batch in loader:
        good = [entry for entry in batch if entry[1] is not None]
        outputs = backend.run(torch.stack([entry[1] for entry in good])) if good else []
        found = {entry[0]: out for entry, out in zip(good, outputs)}
        for i, _, pixels, error, (height, width) in batch:
            image_id, path = items[i]
            if error:
                yield ImageResult(image_id, path, error=error)
                continue
            boxes, scores, labels = found[i]
            scale = np.array([width / size, height / size] * 2)
            yield ImageResult(image_id, path, height, width, boxes.astype(np.float64) * scale,
                              scores.astype(np.float64), labels.astype(np.int64), pixels)
        done += len(batch)
        if progress is not None:
            progress(done, len(items), time.perf_counter() - start)


def collect(results: Iterator[ImageResult], classes: Sequence[str]) -> tuple[Predictions, list[ImageResult]]:
    """All detections as Predictions (every readable image present, even with no detection) + the skipped."""
    preds, skipped = Predictions(list(classes)), []
    for result in results:
        if result.error:
            skipped.append(result)
        else:
            preds.add(result.image_id, result.boxes, result.scores, result.labels)
    return preds, skipped


class Progress:
    """A `progress` callback printing `done/total images, img/s` to stderr at most every `every` seconds."""

    def __init__(self, label: str, every: float = 5.0, minimum: int = 50, stream=None) -> None:
        self.label, self.every, self.minimum = label, every, minimum
        self.stream = stream or sys.stderr
        self.last = 0.0

    def __call__(self, done: int, total: int, seconds: float) -> None:
        if total < self.minimum or (seconds - self.last < self.every and done < total):
            return
        self.last = seconds
        rate = done / seconds if seconds > 0 else float("nan")
        print(f"{self.label}: {done}/{total} images, {rate:.1f} img/s", file=self.stream, flush=True)
