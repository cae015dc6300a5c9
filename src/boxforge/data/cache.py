"""`--cache ram|auto|off`: keep each decoded training image in memory after its first read.

"auto", the default, caches when the estimate below fits in 10% of physical RAM (a few
thousand images at 320 px on a laptop) and otherwise reads from disk as "off" does.

A small detection set (a few hundred photos) trained for many epochs decodes every
JPEG again every epoch; on a CPU that decoding is a large share of a data step. The
cache keeps each image as a (3, H, W) uint8 tensor, downscaled once so its longer
side is at most `max_side` (2 x img_size: every training transform ends in a resize
to img_size, and zoom-out / IoU crop rarely need more), and scales the image's boxes
by the same factors, exactly as `boxforge pack --max-side` does. So a cached item is
the uncached item of the downscaled image, bit for bit (tests/data/test_cache.py
compares it with a pack).

Per process: each DataLoader worker fills its own cache (a dataset pickled to a
worker carries no cached pixels), so with W workers the memory is up to W times one
full cache; `attach_cache` refuses up front when that estimate exceeds a share of
physical RAM. Data read from a pack is already decoded and memory-mapped: there the
cache is a no-op.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxforge.data.images import read_image
from boxforge.errors import BoxforgeError

log = logging.getLogger(__name__)

CACHES: tuple[str, ...] = ("ram", "auto", "off")
RAM_SHARE = 0.25  # the largest share of physical RAM the caches of all processes may take
AUTO_SHARE = 0.10  # "auto" (the default) caches only sets whose estimate stays under this share


def physical_ram() -> int:
    """Bytes of physical memory (os.sysconf); 0 when the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _downscaled(pixels: torch.Tensor, max_side: int) -> torch.Tensor:
    from boxforge.data.pack import _resized  # the same resize as `pack --max-side`, so the same pixels

    return _resized(pixels, max_side)


class RamCache:
    """Decoded images of one dataset in this process: slot j holds image j, downscaled to `max_side`.

    get(j, path, max_pixels): (3, H, W) uint8, decoded (and downscaled) on the first call only;
        read_image's errors pass through and nothing is cached for a bad image.
    box_scale(j): (4,) float32 [sx, sy, sx, sy] that maps the index's boxes of image j onto the
        cached pixels; ones until image j was read (and for images already small enough).
    """

    def __init__(self, size: int, max_side: int) -> None:
        self.max_side = max_side
        self._pixels: list[torch.Tensor | None] = [None] * size
        self._scale = np.ones((size, 4), np.float32)
        self.decoded = 0  # files decoded by this process (each at most once)

    def __len__(self) -> int:
        return sum(p is not None for p in self._pixels)

    def nbytes(self) -> int:
        return sum(p.numel() for p in self._pixels if p is not None)

    def get(self, j: int, path: Path, max_pixels: int) -> torch.Tensor:
        pixels = self._pixels[j]
        if pixels is None:
            full = read_image(path, max_pixels)
            self.decoded += 1
            pixels = _downscaled(full, self.max_side)
            height, width = full.shape[-2:]
            new_h, new_w = pixels.shape[-2:]
            self._scale[j] = np.array([new_w / width, new_h / height] * 2, np.float32)
            self._pixels[j] = pixels
        return pixels.clone()  # a private copy, as from a pack: a transform may write into its input

    def box_scale(self, j: int) -> np.ndarray:
        return self._scale[j]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a DataLoader worker) empty: each process fills its own."""
        state = dict(self.__dict__)
        state["_pixels"] = [None] * len(self._pixels)
        state["_scale"] = np.ones_like(self._scale)
        state["decoded"] = 0
        return state


def cache_estimate(images: int, img_size: int, processes: int = 1) -> int:
    """Upper bound in bytes: every image at (2 x img_size)^2 x 3 channels, in each of `processes`."""
    return images * (2 * img_size) ** 2 * 3 * max(1, processes)


def attach_cache(dataset: Any, cache: str | None, img_size: int, *, workers: int = 0,
                 limit: int | None = None) -> None:
    """Give `dataset` (a DetectionDataset or ClassificationDataset) a RamCache for `cache="ram"`.

    cache: None or "off" (nothing to do), "ram", or "auto" (the default: "ram" when the estimate is
    under AUTO_SHARE of physical RAM, else nothing). workers: DataLoader workers, each of which
    fills its own cache. limit: bytes allowed for all caches together (default: RAM_SHARE of
    physical RAM). Raises BoxforgeError when the estimate exceeds it; a pack-backed dataset
    gets no cache (logged), its pixels are already decoded and memory-mapped.
    """
    if cache is None or cache == "off":
        return
    if cache not in CACHES:
        raise BoxforgeError(f"--cache {cache!r}; choose one of: {', '.join(CACHES)}")
    if getattr(dataset, "_pack", None) is not None:
        log.info("--cache %s: the data comes from a pack (decoded and memory-mapped already); not caching", cache)
        return
    processes = max(1, workers)
    need = cache_estimate(len(dataset), img_size, processes)
    if cache == "auto":
        budget = int(AUTO_SHARE * physical_ram()) if limit is None else limit
        if not budget or need > budget:
            log.info("--cache auto: %d images would need up to %.2f GiB; not caching", len(dataset), need / 2**30)
            return
    allowed = int(RAM_SHARE * physical_ram()) if limit is None else limit
    source = f"{RAM_SHARE:.0%} of physical RAM" if limit is None else "the given limit"
    if allowed and need > allowed:
        raise BoxforgeError(
            f"--cache ram would need up to {need / 2**30:.2f} GiB ({len(dataset)} images x "
            f"{2 * img_size}^2 x 3 bytes x {processes} process{'es' if processes > 1 else ''}) but the limit is "
            f"{allowed / 2**30:.2f} GiB ({source}); train without --cache, with fewer "
            f"--workers, or from a `boxforge pack`")
    dataset.cache = RamCache(len(dataset), 2 * img_size)
    log.info("--cache ram: keeping up to %d decoded images (longer side <= %d px) in memory, up to %.2f GiB",
             len(dataset), 2 * img_size, need / 2**30)
