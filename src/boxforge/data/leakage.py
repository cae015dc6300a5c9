"""Does the validation set hold training images? Compared by file, by image id and by content.

A best checkpoint chosen on images the model trained on is the quietest wrong answer a trainer can
give, so `train` runs this before its first step (data/splits.py). Three ways an image is shared:
the same file (one path, or two paths to one inode); the same id of the same dataset when a file is
missing (a pack, an annotation-only set); the same bytes under two names (a copy in both folders).
Content is compared cheaply: only files whose sizes collide are read, first their first 64 KiB,
then in full, so 118,000 COCO images cost a `stat` each and a few reads.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from boxforge.data.index import DatasetIndex, Sample

HEAD_BYTES = 64 * 1024
SHOWN = 3  # shared images named in the message; the rest are counted


@dataclass
class SharedImages:
    """pairs: (validation image id, training image id, how: "same file" | "same id" | "same content")."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.pairs)

    def describe(self, val_images: int) -> str:
        shown = "; ".join(f"{v} ({how} as training image {t})" if v != t else f"{v} ({how})"
                          for v, t, how in self.pairs[:SHOWN])
        more = f"; and {self.count - SHOWN} more" if self.count > SHOWN else ""
        return (f"{self.count} of the {val_images} validation images are also training images: {shown}{more}")


def _file(sample: Sample) -> Path | None:
    path = sample.image_path
    return path if path is not None and os.path.isfile(path) else None


def _digest(path: Path, limit: int | None) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if limit is not None:
            h.update(fh.read(limit))
        else:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.digest()


def _same_dataset(a: DatasetIndex, b: DatasetIndex) -> bool:
    return Path(a.root).resolve() == Path(b.root).resolve() and a.format == b.format


def shared_images(train: DatasetIndex, val: DatasetIndex) -> SharedImages:
    """Every validation image that is also a training image, in validation order."""
    found = SharedImages()
    by_file: dict[tuple[int, int], str] = {}
    by_size: dict[int, list[tuple[Path, str]]] = defaultdict(list)
    packed = train.format == "pack" or val.format == "pack"  # one pixel file holds every image
    for s in train.samples:
        path = None if packed else _file(s)
        if path is not None:
            st = os.stat(path)
            by_file[(st.st_dev, st.st_ino)] = s.image_id
            by_size[st.st_size].append((path, s.image_id))
    train_ids = {s.image_id for s in train.samples} if _same_dataset(train, val) else set()
    digests: dict[tuple[Path, int | None], bytes] = {}

    def digest(path: Path, limit: int | None) -> bytes:
        key = (path, limit)
        if key not in digests:
            digests[key] = _digest(path, limit)
        return digests[key]

    for s in val.samples:
        path = None if packed else _file(s)
        if path is None:
            if s.image_id in train_ids:
                found.pairs.append((s.image_id, s.image_id, "same id"))
            continue
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in by_file:
            found.pairs.append((s.image_id, by_file[(st.st_dev, st.st_ino)], "same file"))
            continue
        for other, other_id in by_size.get(st.st_size, []):
            if digest(other, HEAD_BYTES) == digest(path, HEAD_BYTES) and digest(other, None) == digest(path, None):
                found.pairs.append((s.image_id, other_id, "same content"))
                break
    return found
