"""JPEG bytes read in the data worker and decoded on the training device (nvJPEG on CUDA).

With the augmentation on the device (data/device_augment.py) a worker's remaining cost is the
decode. `EncodedDetectionDataset` hands on a plain JPEG's file bytes instead ((L,) uint8, the
size taken from its header), and `device_augment.apply_ssd` decodes all of a batch's with one
`torchcodec.decoders.decode_jpeg(list, device=...)` call.

Only baseline RGB or greyscale JPEGs without an EXIF rotation go this way (a rotated one needs
its orientation applied, which the GPU decoder is not asked to do here); everything else, and
images from a pack or the RAM cache, is decoded in the worker as usual. Caveat: a JPEG whose
header reads but whose data is corrupt fails in the training process at decode time, instead
of being skipped with a warning as the worker path does, so this path is not wired into
`train` yet (not measured on a GPU either).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boxforge.data.images import MAX_PIXELS, _read_regular_file, read_header
from boxforge.data.loading import DetectionDataset
from boxforge.errors import BoxforgeError


def read_jpeg_bytes(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[Tensor, int, int] | None:
    """(bytes (L,) uint8, height, width) of a JPEG the device decoder can take as is, else None.

    Raises what read_header raises (ImageReadError, UnsafeInputError, FileNotFoundError).
    """
    header = read_header(path, max_pixels)
    if header.format != "JPEG" or header.orientation != 1 or header.mode not in ("RGB", "L"):
        return None
    return _read_regular_file(path), header.height, header.width


def decode_jpegs(data: list[Tensor], device: torch.device) -> list[Tensor]:
    """Each (L,) uint8 JPEG decoded to (3, H, W) uint8 RGB on `device`, in one call."""
    cpu = [d.cpu() for d in data]  # the encoded bytes are read on the host, whatever the output device
    # TorchCodec's decode_jpeg, the decoder read_image uses (torchvision 0.29 deprecates its own): a list is one
    # batched nvJPEG call on CUDA. Untested on a GPU here. Where TorchCodec's library does not load (read_image
    # then falls back to PIL), torchvision's decode_jpeg, the same API, does the job.
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError):  # as in images._torchcodec_decoder, which has warned about it already
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode_jpeg

        out = tv_decode_jpeg(cpu, mode=ImageReadMode.RGB, device=device)
    else:
        out = decode_jpeg(cpu, mode="RGB", device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


class EncodedDetectionDataset(DetectionDataset):
    """A DetectionDataset whose untransformed image is, where it can be, the JPEG's bytes (see the module)."""

    def load(self, index: int) -> tuple[Any, dict[str, Any]]:
        if self._pack is not None or self.cache is not None:
            return super().load(index)
        n = len(self)
        j = index % n if -n <= index < n else index
        if isinstance(j, int) and j not in self._bad and self._paths[j]:
            try:
                found = read_jpeg_bytes(self.image_path(j), self.max_pixels)
            except (OSError, ValueError, BoxforgeError):
                found = None  # the usual path below reports it, skipping or raising as configured
            if found is not None:
                data, height, width = found
                return data, self.target(j, height, width)
        return super().load(index)
