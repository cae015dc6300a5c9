"""Draw detections on an image: a coloured box per class, and a label `name 0.93` on a filled tag.

Line width and font size follow the image size (about 0.3% and 2.2% of the mean side, with
floors), so a label is readable on a 64 px thumbnail and on a 6000 px photo alike. Colours come
from a fixed palette of 20 well-separated colours, one per class index; the tag text is black or
white, whichever contrasts more with the tag colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Saturated, well-separated colours (Ultralytics' palette, reordered so that neighbouring class indexes differ
# in hue), each readable under black or white text.
PALETTE: tuple[str, ...] = ("FF3838", "00C2FF", "48F90A", "FFB21D", "CB38FF", "1A9334", "0018EC", "FF95C8",
                            "00D4BB", "FF701F", "8438FF", "CFD231", "344593", "3DDB86", "FF37C7", "2C99A8",
                            "92CC17", "520085", "FF9D97", "6473FF")


def class_colour(label: int) -> tuple[int, int, int]:
    value = PALETTE[int(label) % len(PALETTE)]
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, by the background's relative luminance (ITU-R BT.601 weights)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def line_width(width: int, height: int) -> int:
    return max(2, round((width + height) / 2 * 0.003))


def font_size(width: int, height: int) -> int:
    return max(11, round((width + height) / 2 * 0.022))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_detections(image: Image.Image | np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    classes: Sequence[str]) -> Image.Image:
    """A copy of `image` (PIL, or (H, W, 3) uint8) with the detections drawn, least confident first.

    boxes: (N, 4) xyxy pixels of this image; scores: (N,); labels: (N,) 0-based into `classes`.
    """
    canvas = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))).convert("RGB")
    canvas = canvas.copy()
    width, height = canvas.size
    lw, font = line_width(width, height), _font(font_size(width, height))
    draw = ImageDraw.Draw(canvas)
    for i in np.argsort(np.asarray(scores), kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        label = int(labels[i])
        colour = class_colour(label)
        name = classes[label] if 0 <= label < len(classes) else str(label)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=lw)
        text = f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, round(font.size * 0.15)) if hasattr(font, "size") else 2
        tag_h = th + 2 * pad
        tx = min(max(0.0, x1), max(0.0, width - tw - 2 * pad))
        ty = y1 - tag_h if y1 - tag_h >= 0 else min(y1, height - tag_h)  # above the box, else inside it
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + tag_h], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=text_colour(colour), font=font)
    return canvas
