"""torch Datasets over a `DatasetIndex`, the detection collate, and a reproducible DataLoader.

Memory: a DataLoader worker reads the dataset object on every item. Python
objects (a list of Samples, each with its numpy arrays) have reference counts,
so reading them writes to their memory pages and a forked worker slowly copies
the whole index ("copy-on-read"). The datasets therefore pack the index once, at
construction, into a handful of flat numpy arrays (paths, ids, all boxes with
per-image offsets) and keep no Sample objects.

Bad images met at run time (missing, unreadable, truncated, a pipe, a bomb) are
skipped in the default non-strict mode: the item is replaced by the next
readable index (deterministic), the image is recorded in `dataset.skipped` and a
warning is logged once. With DataLoader workers each worker holds its own copy of
the dataset, so `skipped` in the main process only sees what the main process
itself read; the logged warnings are the complete record. `strict=True` raises
DatasetError naming the file instead.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.context
import os
import random
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from boxforge.data.images import MAX_PIXELS, ImageReadError, describe_read_error as _describe, read_image
from boxforge.data.index import DatasetIndex
from boxforge.errors import DatasetError, UnsafeInputError

log = logging.getLogger(__name__)

_IMAGE_ERRORS = (ImageReadError, UnsafeInputError, OSError)


def _pack_paths(index: DatasetIndex) -> tuple[np.ndarray, np.ndarray]:
    """(N,) unicode image ids and (N,) bytes paths (os.fsencode; b"" when the sample has none)."""
    ids = np.array([s.image_id for s in index.samples], dtype=np.str_)
    paths = np.array([os.fsencode(s.image_path) if s.image_path else b"" for s in index.samples], dtype=np.bytes_)
    return ids, paths


def _pack_reader(index: DatasetIndex) -> Any:
    from boxforge.data.pack import reader_for  # pack imports read_image from here

    return reader_for(index)


class _ImageDataset(Dataset):
    """Shared part: packed paths, decoding, and the skip-or-raise policy for bad images."""

    def __init__(self, index: DatasetIndex, task: str, transform: Callable[..., Any] | None, strict: bool) -> None:
        if index.task != task:
            raise DatasetError(f"{type(self).__name__} needs a {task!r} index; this index has task {index.task!r}")
        self.classes: tuple[str, ...] = tuple(index.classes)
        self.transform = transform
        self.strict = strict
        self.max_pixels = MAX_PIXELS
        self._ids, self._paths = _pack_paths(index)
        # Indexes read from a `boxforge pack`: (PackReader, slot per sample); pixels come from its memory map.
        self._pack = _pack_reader(index)
        # Decoded images kept in memory (data/cache.py, `attach_cache`); None: decode every read.
        self.cache: Any = None
        # Per process (each DataLoader worker has its own): (image_id, reason) of skipped images.
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, i: int) -> str:
        return str(self._ids[i])

    def image_path(self, i: int) -> Path:
        return Path(os.fsdecode(self._paths[i]))

    def _load_first_readable(self, index: int) -> tuple[int, torch.Tensor]:
        """(j, image (3, H, W) uint8) for the first readable sample j at or after `index` (wrapping)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            path = self.image_path(j) if self._paths[j] else None
            try:
                if path is None:
                    raise ImageReadError(f"sample {self.image_id(j)!r} has no image path")
                if self._pack is not None:
                    return j, self._pack[0].read(int(self._pack[1][j]))
                if self.cache is not None:
                    return j, self.cache.get(j, path, self.max_pixels)
                return j, read_image(path, self.max_pixels)
            except _IMAGE_ERRORS as exc:
                message = _describe(path, exc)
                if self.strict:
                    raise DatasetError(message) from exc
                self._skip(j, message)
        raise DatasetError(f"none of the {n} images could be read; first problem: {self.skipped[0][1]}")

    def _skip(self, j: int, message: str) -> None:
        self._bad.add(j)
        self.skipped.append((self.image_id(j), message))
        log.warning("skipping image %s: %s (using the next readable image instead)", self.image_id(j), message)


class DetectionDataset(_ImageDataset):
    """Images and boxes of a task="detect" index, for torchvision detectors.

    Boxes that can never be valid (non-finite, x2 <= x1 or y2 <= y1) are dropped
    once, at construction, with one logged line; the rest are clipped to the decoded
    image at read time (a box wholly outside the image is then dropped too). Boxes
    are taken to be in the coordinates of the image as displayed (EXIF applied).

    Item: (image, target) after `transform(image, target)`; without a transform
        image is tv_tensors.Image (3, H, W) uint8 and target is
        {"boxes": BoundingBoxes (N, 4) float32 XYXY, canvas_size=(H, W),
         "labels": (N,) int64, "difficult": (N,) bool,
         "image_id": str, "orig_size": (H, W) of the decoded image}.
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: Callable[..., Any] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        super().__init__(index, "detect", transform, strict)
        self._pack_boxes(index)

    def _pack_boxes(self, index: DatasetIndex) -> None:
        """Concatenate valid boxes: _boxes (M, 4) float32, _labels (M,), _difficult (M,), _offsets (N + 1,)."""
        boxes, labels, difficult, counts = [], [], [], []
        dropped = 0
        for s in index.samples:
            b = s.boxes
            keep = np.isfinite(b).all(axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            dropped += int((~keep).sum())
            boxes.append(b[keep])
            labels.append(s.labels[keep])
            difficult.append(s.difficult[keep])
            counts.append(int(keep.sum()))
        self._boxes = np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
        self._labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros((0,), np.int64)
        self._difficult = np.concatenate(difficult).astype(bool) if difficult else np.zeros((0,), bool)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.dropped_boxes = dropped
        if dropped:
            log.warning("dropped %d invalid boxes (non-finite or zero/negative size); `check` lists them", dropped)

    def target(self, j: int, height: int, width: int) -> dict[str, Any]:
        """The target of sample j, boxes clipped to a (height, width) image; see the class docstring.

        With a cache that downscaled image j, the boxes are first scaled by the same factors
        (as `boxforge pack --max-side` does), so the pair is the uncached one of the smaller image.
        """
        lo, hi = int(self._offsets[j]), int(self._offsets[j + 1])
        boxes = self._boxes[lo:hi].copy()
        if self.cache is not None:
            boxes *= self.cache.box_scale(j)
        np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes[keep]), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(self._labels[lo:hi][keep].copy()),
            "difficult": torch.from_numpy(self._difficult[lo:hi][keep].copy()),
            "image_id": self.image_id(j),
            "orig_size": (height, width),
        }

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The untransformed item at `index` (or the next readable one); see the class docstring."""
        j, pixels = self._load_first_readable(index)
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        return tv_tensors.Image(pixels), self.target(j, height, width)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return self.transformed(*self.load(index))

    def transformed(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`transform` applied to an (image, target) pair, checking boxes and labels stayed in step."""
        if self.transform is not None:
            image_id = target["image_id"]
            image, target = self.transform(image, target)
            _check_in_step(target, image_id)
        return image, target


def _check_in_step(target: dict[str, Any], image_id: str) -> None:
    n = len(target["boxes"])
    for key in ("labels", "difficult"):
        if key in target and len(target[key]) != n:
            raise ValueError(
                f"{image_id}: transform left {n} boxes but {len(target[key])} {key}; give "
                "SanitizeBoundingBoxes labels_getter=boxforge.data.transforms.target_tensors"
            )


class ClassificationDataset(_ImageDataset):
    """Images and class indexes of a task="classify" index.

    Item: (transform(image), label); without a transform image is tv_tensors.Image
    (3, H, W) uint8. label: int index into `classes`.
    """

    def __init__(
        self,
        index: DatasetIndex,
        transform: Callable[..., Any] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        super().__init__(index, "classify", transform, strict)
        unlabelled = [s.image_id for s in index.samples if s.label is None]
        if unlabelled:
            raise DatasetError(f"{len(unlabelled)} classification samples have no label, e.g. {unlabelled[0]!r}")
        self._targets = np.array([s.label for s in index.samples], dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        j, pixels = self._load_first_readable(index)
        image: Any = tv_tensors.Image(pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self._targets[j])


def detection_collate(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, Any]]]:
    """Batch detection items without padding boxes.

    Returns (images, targets): images stacked into one (B, 3, H, W) tensor when all
    share a size (the usual case after a preset's Resize), else a list of (3, H_i, W_i);
    targets a list of B dicts (box counts differ per image). torchvision detectors
    take `list(images)` either way.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    if images and all(im.shape == images[0].shape for im in images):
        return torch.stack([im.as_subclass(torch.Tensor) for im in images]), targets
    return images, targets


# Workers start in a fresh process (never a fork of the training process): a fork
# copies a process whose other threads (CUDA, OpenMP, the watchdog, logging) may
# hold locks that then never get released in the child. "forkserver" forks workers
# from a clean single-threaded server that has torch preloaded, so each worker
# starts about as fast as with fork; "spawn" pays a full interpreter start and
# torch import per worker. Measured on 2 CPU cores, 2 workers, time to the first
# batch: fork 0.1 s, forkserver 2.4-2.8 s (once per loader, workers are persistent),
# spawn 6-11 s; steady-state throughput was the same for all three.
MP_CONTEXT = "forkserver"
_FORKSERVER_PRELOAD = ["__main__", "torch", "torchvision", "numpy", "boxforge.data.loading"]


def _init_worker(worker_id: int, parent: int | None = None) -> None:
    """Runs once in each worker: one intra-op thread, `random`/numpy seeded from torch, and
    an end with `parent` (the process that made the loader; see `_exit_with`).

    torch's worker seed is the loader's base seed (drawn from its seeded generator)
    plus `worker_id`, so augmentations differ per worker and repeat across runs.
    """
    torch.set_num_threads(1)
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if parent is not None:
        _exit_with(parent)


def _exit_with(parent: int) -> None:
    """End this worker as soon as process `parent` has ended, however it ended.

    A forkserver worker is the forkserver's child, so torch's own check (has my
    parent pid changed?) never sees the training process die of SIGKILL or the OOM
    killer; the forkserver in turn waits for its workers: all of them, and the
    resource tracker, would stay forever. A daemon thread waits on a pidfd (exact
    even if the pid is reused), or polls where the platform has none.
    """
    try:
        handle = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (not Linux, or before 5.3)
        handle = None

    def wait() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once `parent` has exited
        else:
            while _running(parent):
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=wait, name="boxforge-parent-watch", daemon=True).start()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid belongs to another user's process: ours has gone
        return False
    return True


def _mp_context(name: str) -> multiprocessing.context.BaseContext:
    allowed = multiprocessing.get_all_start_methods()
    if name not in allowed:
        raise ValueError(f"unknown multiprocessing context {name!r}; choose one of: {', '.join(allowed)}")
    ctx = multiprocessing.get_context(name)
    if name == "forkserver":
        ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)  # only takes effect before the server starts
    return ctx


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    *,
    timeout: float = 120.0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    mp_context: str = MP_CONTEXT,
) -> DataLoader:
    """A DataLoader that gives the same batches in the same order for the same `seed`.

    workers > 0: persistent workers (started once, not every epoch), started with
    `mp_context` (see MP_CONTEXT), one thread each, and a `timeout` in seconds after
    which a worker that produced nothing (a hung file system, a deadlock) raises
    instead of hanging the run. collate_fn: detection_collate for a
    DetectionDataset, torch's default otherwise. sampler: e.g. a DistributedSampler
    (then shuffle must be False).

    With workers, the dataset, transform and collate_fn must pickle (module-level
    functions, no lambdas), and a script must guard its entry point with
    `if __name__ == "__main__":`, as workers re-import the main module.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if sampler is not None and shuffle:
        raise ValueError("give a sampler or shuffle=True, not both (the sampler decides the order)")
    if collate_fn is None and isinstance(dataset, DetectionDataset):
        collate_fn = detection_collate
    generator = torch.Generator()
    generator.manual_seed(seed)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(
            persistent_workers=True,
            timeout=timeout,
            multiprocessing_context=_mp_context(mp_context),
            worker_init_fn=functools.partial(_init_worker, parent=os.getpid()),
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        **extra,
    )
