"""Safe image opening, shared by check, loading and predict.

Headers are read without decoding pixels (PIL opens lazily), so a 20,000-image
check stays fast and a decompression bomb is refused before any decoding.

Pixels are decoded by TorchCodec: torchvision 0.29 deprecates its own decoders for it.
bench/decode_speed.py (one process, two runs, 2 cores at load 2.6-2.8) measured it at
1.00x torchvision.io's rate on raccoon's 200 photos and 0.99-1.15x on microcontroller's
149 (fastest passes 0.99-1.09x on every JPEG/PNG set; PIL 0.55-0.87x), with every pixel
equal, greyscale, CMYK and EXIF orientations 1-8 included. It also decodes 16-bit PNGs
to uint8 (torchvision.io returned uint16) and animated WebP (torchvision.io refused it).
"""

from __future__ import annotations

import functools
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from boxforge.data.safety import regular_file_problem
from boxforge.errors import ImageReadError, UnsafeInputError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Largest image we agree to decode: 16k x 16k. The header of a bomb claims far more.
MAX_PIXELS = 16384 * 16384
# EXIF Orientation values that swap width and height when applied.
_TRANSPOSING = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112

# We enforce our own bound (MAX_PIXELS) before decoding; PIL's own check would warn or raise late.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, before any pixel is decoded.

    width, height: stored pixel size (before EXIF orientation).
    orientation: EXIF orientation tag, 1 when absent.
    """

    width: int
    height: int
    format: str
    mode: str
    orientation: int = 1

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after EXIF orientation is applied."""
        if self.orientation in _TRANSPOSING:
            return self.height, self.width
        return self.width, self.height


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_header(path: Path, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Read size, format and EXIF orientation from the header only.

    Raises UnsafeInputError for pipes, devices and decompression bombs, ImageReadError
    for files that are not images.
    """
    why = regular_file_problem(path)
    if why:
        raise UnsafeInputError(f"{path}: {why}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
                _check_pixels(path, width, height, max_pixels)  # before EXIF: PNG's getexif() decodes the image
                orientation = _orientation(im)
                header = ImageHeader(width, height, im.format or "", im.mode, orientation)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    return header


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{path}: header says {width}x{height} pixels")
    if width * height > max_pixels:
        raise UnsafeInputError(
            f"{path}: header claims {width}x{height} pixels, over the limit of {max_pixels} (decompression bomb?)"
        )


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def verify_decode(path: Path, max_pixels: int = MAX_PIXELS) -> None:
    """Decode every pixel (the `--deep` check): catches truncated and corrupt files."""
    read_header(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL only warns about some truncations
            with Image.open(path) as im:
                im.load()
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        raise ImageReadError(f"{path}: image data is corrupt or truncated ({exc})") from exc


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB with EXIF orientation applied (greyscale, palette, CMYK converted).

    Used where a numpy image is wanted (drawing, synthesizer checks) and by read_image
    for what TorchCodec does not decode; the training loader decodes with read_image.
    """
    from PIL import ImageOps

    read_header(path, max_pixels)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot decode ({exc})") from exc


# Formats TorchCodec decodes with the libraries its wheel bundles (no FFmpeg needed); BMP and TIFF go through PIL.
_TORCHCODEC_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP"})
# Its error text starts with the C++ function and source location: "decode_rows, /path/DecodeJpeg.cpp:287, ".
_CPP_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def _decoded_by_pil(header: ImageHeader) -> bool:
    """Formats TorchCodec lacks, and palette PNGs: torchcodec 0.16.0 decodes a palette PNG with a tRNS chunk
    (transparency) as four channels into a three-channel buffer, corrupting the heap and killing the process
    (meta-pytorch/torchcodec#1731, fixed after 0.16.0). PIL reads every palette PNG; they are rare in photo sets."""
    return header.format not in _TORCHCODEC_FORMATS or (header.format == "PNG" and header.mode in ("P", "PA"))


@functools.lru_cache(maxsize=1)
def _torchcodec_decoder() -> Callable[..., "torch.Tensor"] | None:
    """TorchCodec's decode_image, or None (once warned) where its native library does not load.

    PyPI's Linux wheel is built for CUDA torch: beside a CPU-only torch it fails to load libnvrtc (seen
    with torch 2.13.0+cpu). Then
    PIL decodes everything, slower (0.6-0.8x on the real photos of bench/decode_speed.py) with the same
    JPEG pixels; a 16-bit PNG is clipped to 8 bits instead of scaled.
    """
    try:
        from torchcodec.decoders import decode_image
    except (ImportError, OSError) as exc:
        warnings.warn(f"TorchCodec cannot be loaded ({str(exc)[:160]}); images are decoded with PIL, more slowly. "
                      "Install the torchcodec build that matches your torch (for a CPU-only torch: "
                      "pip install torchcodec --index-url https://download.pytorch.org/whl/cpu)",
                      RuntimeWarning, stacklevel=3)
        return None
    return decode_image


def _read_regular_file(path: Path) -> "torch.Tensor":
    """The file's bytes as a (L,) uint8 tensor, refusing anything but a regular file.

    Opened with O_NONBLOCK and checked with fstat on the open descriptor, so a
    named pipe swapped in after an earlier stat check still cannot block us.
    """
    import torch

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeInputError(f"{path}: is not a regular file (pipe, device or directory)")
        buf = bytearray(info.st_size)
        view, done = memoryview(buf), 0
        while done < len(buf):
            n = fh.readinto(view[done:])
            if not n:
                raise ImageReadError(f"{path}: file shrank while being read ({done} of {len(buf)} bytes)")
            done += n
    return torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> "torch.Tensor":
    """Decode to (3, H, W) uint8 RGB with EXIF orientation applied.

    The header is checked first (regular file, a real image, not a decompression
    bomb). Greyscale, palette, CMYK and alpha images become RGB (alpha dropped, as
    PIL's convert("RGB") does); 16-bit PNGs are scaled to 8 bits; an animated GIF or
    WebP gives its first frame. TorchCodec decodes JPEG, PNG, GIF and WebP (it applies
    EXIF orientation itself); PIL the rest. The tensor is channels-last in memory (a
    (3, H, W) view of (H, W, 3)), which makes the uint8 resize after it several times faster.
    Raises ImageReadError, UnsafeInputError or FileNotFoundError.
    """
    import torch  # here, not at the top: `check` reads headers only and starts without torch

    header = read_header(path, max_pixels)
    decode_image = _torchcodec_decoder()
    if decode_image is None or _decoded_by_pil(header):
        rgb = np.array(load_rgb(path, max_pixels))  # (H, W, 3), a writable copy
        return torch.from_numpy(rgb).permute(2, 0, 1)  # channels-last, as TorchCodec gives
    data = _read_regular_file(path)
    try:
        image = decode_image(data, mode="RGB")
    except (RuntimeError, ValueError) as exc:
        reason = _CPP_LOCATION.sub("", str(exc).strip()) or type(exc).__name__
        raise ImageReadError(f"{path}: cannot decode ({reason})") from exc
    return image[0] if image.ndim == 4 else image


def describe_read_error(path: Path | None, exc: BaseException) -> str:
    """One line naming the file and what is wrong with it."""
    if path is None:
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"{path}: file not found"
    text = str(exc)
    return text if text.startswith(str(path)) else f"{path}: {exc}"
