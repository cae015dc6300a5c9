"""PNG checks shared by the plot tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_size: tuple[int, int] = (400, 250)) -> None:
    """A real PNG of a sane size that is not blank."""
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_size[0] <= w <= 6000 and min_size[1] <= h <= 8000, f"{path}: odd size {w}x{h}"
        pixels = np.asarray(im.convert("RGB").reduce(4))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path} looks blank"
