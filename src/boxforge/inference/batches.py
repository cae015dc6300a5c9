"""The one batch runner: images (files, or a dataset index) through a backend, in batches.

Validation during training, `eval` and `predict` all run a model through here, so a checkpoint
gives in `eval` exactly the numbers its run logged: the same decoding (EXIF applied), the same
resize to the model's square input (`detection_transforms(False, S)`, or the classifier's centre
crop), the same batches, the same rescale of boxes to each image's own pixels. An image that
cannot be read is reported in its result's `error` and skipped, never fatal, never replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from boxforge.data.images import describe_read_error, read_image
from boxforge.data.index import DatasetIndex
from boxforge.data.loading import make_loader
from boxforge.data.transforms import classification_transforms, detection_transforms
from boxforge.errors import BoxforgeError, ImageReadError, UnsafeInputError
from boxforge.evaluation.predictions import Predictions
from boxforge.inference.backends import Backend
from boxforge.progress import Progress, progress as show_progress

LINES_FROM = 50  # as plain lines, a run of fewer images shows no progress (tests and small sets stay quiet)
READ_ERRORS = (OSError, ImageReadError, UnsafeInputError, RuntimeError, ValueError)  # decoders raise many types


class ImageSource:
    """Which images to run, and how to read image i: files, or the samples of an index (a pack's memory
    map included). Kept as flat arrays, so DataLoader workers do not copy-on-read an object graph."""

    def __init__(self, ids: Sequence[str], paths: Sequence[Path | None], pack: Any = None) -> None:
        self.ids = np.array(list(ids), dtype=np.str_)
        self.paths = np.array([os.fsencode(p) if p is not None else b"" for p in paths], dtype=np.bytes_)
        self.pack = pack  # (PackReader, slot per item) or None

    @classmethod
    def files(cls, items: Sequence[tuple[str, Path]]) -> ImageSource:
        """[(image_id, path)], e.g. what `sources.resolve_sources` found."""
        return cls([i for i, _ in items], [p for _, p in items])

    @classmethod
    def index(cls, index: DatasetIndex) -> ImageSource:
        from boxforge.data.pack import reader_for

        return cls([s.image_id for s in index.samples], [s.image_path for s in index.samples], reader_for(index))

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path | None:
        return Path(os.fsdecode(self.paths[i])) if self.paths[i] else None

    def read(self, i: int) -> torch.Tensor:
        """(3, H, W) uint8 of item i; raises what the decoders raise."""
        if self.pack is not None:
            return self.pack[0].read(int(self.pack[1][i]))
        path = self.path(i)
        if path is None:
            raise ImageReadError(f"{self.ids[i]}: no image file in the annotation")
        return read_image(path)


def detection_input(img_size: int) -> Callable[..., Any]:
    """uint8 (3, H, W) -> float32 (3, S, S) in 0..1: training's validation transform for detectors."""
    return detection_transforms(False, img_size)


def classifier_input(img_size: int, resize_size: int | None = None) -> Callable[..., Any]:
    """uint8 (3, H, W) -> float32 (3, S, S) in 0..1: resize the short side (default S / 0.875), centre crop
    S; training's evaluation transform minus the normalisation, which the model does itself."""
    return classification_transforms(False, img_size, resize_size=resize_size,
                                     mean=None, std=None)  # type: ignore[arg-type]


class _Images(Dataset):
    """Item i: (i, model input (3, S, S) float32 or None, pixels (3, H, W) uint8 or None, error, (H, W))."""

    def __init__(self, source: ImageSource, transform: Callable[..., Any], keep_pixels: bool) -> None:
        self.source, self.transform, self.keep_pixels = source, transform, keep_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None, str, tuple[int, int]]:
        try:
            pixels = self.source.read(i)
        except READ_ERRORS as exc:
            path = self.source.path(i)
            return i, None, None, describe_read_error(path, exc) if path else str(exc), (0, 0)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        image = self.transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        return i, image, pixels if self.keep_pixels else None, "", size


def _as_list(batch: list) -> list:
    return batch


def iter_batches(source: ImageSource, transform: Callable[..., Any], *, batch_size: int = 8, workers: int = 0,
                 keep_pixels: bool = False) -> Iterator[list[tuple[int, Any, Any, str, tuple[int, int]]]]:
    """The items of `source` in batches of `_Images` items, decoded by `workers` processes."""
    if batch_size < 1 or workers < 0:
        raise BoxforgeError(f"batch size {batch_size} and workers {workers}: allowed batch size >= 1, workers >= 0")
    yield from make_loader(_Images(source, transform, keep_pixels), batch_size, workers=workers, collate_fn=_as_list)


@dataclass
class ImageResult:
    """One image's detections. boxes: (N, 4) float64 xyxy in the original image's pixels; scores (N,);
    labels (N,) int64 0-based. pixels: (3, H, W) uint8 when asked for (to draw on), else None.
    error: why the image was skipped ("" when it was not)."""

    image_id: str
    path: Path | None
    height: int = 0
    width: int = 0
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    pixels: torch.Tensor | None = None
    error: str = ""


def iter_detections(backend: Backend, source: ImageSource, *, batch_size: int = 8, workers: int = 0,
                    keep_pixels: bool = False, progress: Callable[[int], Any] | None = None
                    ) -> Iterator[ImageResult]:
    """One ImageResult per image of `source`, in order. progress(n) after each batch of n images
    (`Progress.update` of boxforge/progress.py)."""
    size = backend.img_size
    for batch in iter_batches(source, detection_input(size), batch_size=batch_size, workers=workers,
                              keep_pixels=keep_pixels):
        good = [entry for entry in batch if entry[1] is not None]
        outputs = backend.run(torch.stack([entry[1] for entry in good])) if good else []
        found = {entry[0]: out for entry, out in zip(good, outputs)}
        for i, _, pixels, error, (height, width) in batch:
            image_id, path = str(source.ids[i]), source.path(i)
            if error:
                yield ImageResult(image_id, path, error=error)
                continue
            boxes, scores, labels = found[i]
            scale = np.array([width / size, height / size] * 2)
            yield ImageResult(image_id, path, height, width, boxes.astype(np.float64) * scale,
                              scores.astype(np.float64), labels.astype(np.int64), pixels)
        if progress is not None:
            progress(len(batch))


def predict_index(backend: Backend, index: DatasetIndex, *, batch_size: int = 8, workers: int = 0,
                  progress: Callable[[int], Any] | None = None) -> tuple[Predictions, list[str]]:
    """(detections of every readable image of `index` in its own pixels, why each other image was skipped).

    Labels are the backend's; every readable image is in the Predictions, with or without detections.
    """
    preds, skipped = Predictions(list(backend.classes)), []
    for result in iter_detections(backend, ImageSource.index(index), batch_size=batch_size, workers=workers,
                                  progress=progress):
        if result.error:
            skipped.append(result.error)
        else:
            preds.add(result.image_id, result.boxes, result.scores, result.labels)
    return preds, skipped


def iter_probabilities(backend: Backend, source: ImageSource, *, batch_size: int = 32, workers: int = 0
                       ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Per batch: (item indexes read, their (k, C) probabilities or None, [(item index, error)] of the rest)."""
    transform = classifier_input(backend.img_size, backend.resize_size)
    for batch in iter_batches(source, transform, batch_size=batch_size, workers=workers):
        good = [entry for entry in batch if entry[1] is not None]
        probs = backend.run(torch.stack([entry[1] for entry in good])) if good else None
        yield [entry[0] for entry in good], probs, [(entry[0], entry[3]) for entry in batch if entry[3]]


def image_progress(total: int, label: str, *, enabled: bool = True) -> Progress:
    """The progress of `eval` / `predict` over `total` images, on stderr: a bar on a terminal, else
    `label: done/total images, rate img/s` every few seconds and at the end (from LINES_FROM images)."""
    return show_progress(total, label=label, unit="images", minimum=LINES_FROM, enabled=enabled)
