"""Shared fixtures: tiny datasets written by the tests, and the real sets in ../shared/datasets.

The suite pins CPU semantics (bit-identical resume, CPU references compared at 1e-3, per-process
ranks), so it hides CUDA devices from itself and its subprocesses: on a GPU machine, `--device auto`
would otherwise move those runs onto the GPU (TF32 convolutions, atomics in backward, one GPU for
two torchrun ranks) and the comparisons would test the card, not the code. The CUDA path is
exercised by bench/gpu_train.py on a GPU machine.
"""

from __future__ import annotations

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA; see the docstring

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
RACCOON = SHARED / "raccoon"
SAMPLES = SHARED / "format-samples"


def write_image(path: Path, width: int = 64, height: int = 48, color: tuple[int, int, int] = (120, 30, 200),
                seed: int = 0) -> Path:
    """A small JPEG/PNG with a little noise so that two calls with different seeds differ in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, dtype=np.int16) + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def voc_xml(filename: str, width: int, height: int, objects: list[tuple], extra: str = "") -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    objs = []
    for o in objects:
        difficult = o[5] if len(o) > 5 else 0
        objs.append(f"<object><name>{o[0]}</name><difficult>{difficult}</difficult><truncated>0</truncated>"
                    f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>")
    return (f"{extra}<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{''.join(objs)}</annotation>")


def make_voc(root: Path, items: dict[str, list[tuple]], size: tuple[int, int] = (64, 48),
             splits: dict[str, list[str]] | None = None) -> Path:
    """A VOC devkit root: one image + XML per item id, optional ImageSets/Main splits."""
    for n, (image_id, objects) in enumerate(items.items()):
        write_image(root / "JPEGImages" / f"{image_id}.jpg", *size, seed=n)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", *size, objects))
    for name, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """Three images, two classes, one difficult box, train/test split."""
    return make_voc(tmp_path / "voc", {
        "a": [("cat", 5, 6, 30, 40), ("dog", 10, 10, 50, 30, 1)],
        "b": [("dog", 1, 1, 64, 48)],
        "c": [("cat", 20.5, 10, 40.25, 20)],
    }, splits={"train": ["a", "b"], "test": ["c"]})


def write_png_bomb(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A PNG of a few bytes whose header claims width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path
