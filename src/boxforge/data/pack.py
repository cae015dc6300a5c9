"""`boxforge pack`: decode a detection dataset once into a memory-mapped file set.

Training straight from JPEGs decodes every image every epoch, and on a slow or
networked store (object storage, NFS) it also waits on the store mid-epoch. A
pack holds the decoded pixels, optionally pre-resized, so a training epoch is
one sequential-ish read of a local, memory-mapped file and no decoding.

Layout of a pack folder OUT:
    pack.json     format marker, version, classes, source, resize, counts, skipped images
    pixels.u8     every image as raw (3, H, W) uint8 RGB (EXIF applied), one after another
    index.npz     ids (N,) str, offsets (N + 1,) int64 byte offsets into pixels.u8,
                  shapes (N, 2) int64 (H, W), crc32 (N,) uint32 of each image's bytes,
                  boxes (M, 4) float32 xyxy in packed pixels, labels (M,) int64,
                  difficult (M,) bool, box_offsets (N + 1,) int64
    <split>.txt   image ids of each split of the source (train.txt, test.txt, ...)

Every read checks the sample's CRC-32 (a corrupt sample is reported with its
image id, then skipped or raised by the dataset's strict policy) and that its
byte range lies inside pixels.u8. A pack only ever opens its own fixed file
names inside OUT; a symlink that leaves OUT is refused, as for any dataset root.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxforge.data.images import MAX_PIXELS, ImageReadError, read_image
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.safety import is_inside, regular_file_problem
from boxforge.errors import DatasetError, UnsafeInputError
from boxforge.files import atomic_path, atomic_write
from boxforge.progress import progress

PACK_FORMAT = "boxforge-pack"
PACK_VERSION = 1
PIXELS, INDEX, META = "pixels.u8", "index.npz", "pack.json"


def is_pack(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


@dataclass
class PackReport:
    out: Path
    images: int
    objects: int
    bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"packed {self.images} images, {self.objects} objects, {self.bytes / 2**20:.1f} MiB of pixels "
                f"-> {self.out}")
        return text + (f"; skipped {len(self.skipped)} unreadable images (listed in {META})" if self.skipped else "")


def _resized(pixels: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """(3, H, W) uint8 scaled (antialiased) so the longer side is `max_side`; unchanged when already smaller."""
    height, width = pixels.shape[-2:]
    if not max_side or max(height, width) <= max_side:
        return pixels
    from torchvision.transforms.v2 import functional as F

    scale = max_side / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    return F.resize(pixels, size, antialias=True)


def write_pack(index: DatasetIndex, out: str | Path, *, max_side: int | None = None) -> PackReport:
    """Decode every image of a detection `index` into the new folder `out` (see the module docstring).

    max_side: pre-resize so the longer side is at most this many pixels (boxes scaled
        to match); None keeps the decoded size. Unreadable images are left out and listed.
    Progress goes to stderr (boxforge/progress.py: a bar on a terminal, else a line every few seconds).
    """
    if index.task != "detect":
        raise DatasetError(f"pack needs a detection dataset; this one has task {index.task!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: already exists and is not empty; pack writes a new folder")
    out.mkdir(parents=True, exist_ok=True)
    ids, offsets, shapes, crcs = [], [0], [], []
    boxes, labels, difficult, box_offsets = [], [], [], [0]
    skipped: list[tuple[str, str]] = []
    with atomic_path(out / PIXELS) as tmp, open(tmp, "wb") as fh, \
            progress(len(index.samples), label="pack", unit="images") as shown:
        for s in shown.iterate(index.samples):
            try:
                if s.image_path is None:
                    raise ImageReadError(f"sample {s.image_id!r} has no image path")
                pixels = read_image(s.image_path)
            except (ImageReadError, UnsafeInputError, OSError) as exc:
                skipped.append((s.image_id, str(exc)))
                continue
            height, width = pixels.shape[-2:]
            pixels = _resized(pixels, max_side).contiguous()
            new_h, new_w = pixels.shape[-2:]
            data = pixels.numpy().tobytes()
            fh.write(data)
            ids.append(s.image_id)
            offsets.append(offsets[-1] + len(data))
            shapes.append((new_h, new_w))
            crcs.append(zlib.crc32(data))
            scale = np.array([new_w / width, new_h / height] * 2, np.float32)
            boxes.append(s.boxes.astype(np.float32) * scale)
            labels.append(s.labels.astype(np.int64))
            difficult.append(s.difficult.astype(bool))
            box_offsets.append(box_offsets[-1] + len(s.boxes))
    with atomic_path(out / INDEX) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ids=np.array(ids, dtype=np.str_), offsets=np.array(offsets, np.int64),
                 shapes=np.array(shapes, np.int64).reshape(-1, 2), crc32=np.array(crcs, np.uint32),
                 boxes=np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32),
                 labels=np.concatenate(labels) if labels else np.zeros((0,), np.int64),
                 difficult=np.concatenate(difficult) if difficult else np.zeros((0,), bool),
                 box_offsets=np.array(box_offsets, np.int64))
    kept = set(ids)
    for name, members in index.splits.items():
        atomic_write(out / f"{name}.txt", "".join(f"{i}\n" for i in members if i in kept))
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "classes": list(index.classes), "source": str(index.root),
            "source_format": index.format, "max_side": max_side, "images": len(ids), "bytes": offsets[-1],
            "splits": sorted(index.splits), "skipped": [{"image_id": i, "reason": r} for i, r in skipped]}
    atomic_write(out / META, json.dumps(meta, indent=2) + "\n")
    return PackReport(out, len(ids), box_offsets[-1], offsets[-1], skipped)


def _pack_file(root: Path, name: str) -> Path:
    """`root/name`, refused when it is not a regular file inside `root` (the dataset root rule)."""
    path = root / name
    if not path.exists():
        raise DatasetError(f"{root}: not a complete pack, {name} is missing")
    if not is_inside(root, path):
        raise UnsafeInputError(f"{path}: leads outside the pack folder {root}")
    why = regular_file_problem(path)
    if why:
        raise UnsafeInputError(f"{path}: {why}")
    return path


def split_names(root: Path) -> list[str]:
    """The source's splits a pack kept (`<split>.txt` beside `pack.json`), sorted."""
    meta = json.loads(_pack_file(root, META).read_text(encoding="utf-8"))
    return sorted(name for name in meta.get("splits", []) if (root / f"{name}.txt").is_file())


def read_pack(root: str | Path, split: str | None = None) -> DatasetIndex:
    """The index of a pack (boxes in packed pixels); `split` a name with a `<split>.txt` in the pack, or a txt path.

    `meta["pack_slots"]` maps each sample to its slot in the pack, which `PackReader` reads.
    """
    root = Path(root)
    meta = json.loads(_pack_file(root, META).read_text(encoding="utf-8"))
    if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise DatasetError(f"{root / META}: not a version-{PACK_VERSION} boxforge pack "
                           f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    with np.load(_pack_file(root, INDEX), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ids = arrays["ids"]
    slots = np.arange(len(ids))
    splits = {name: _read_ids(root / f"{name}.txt") for name in meta.get("splits", []) if (root / f"{name}.txt").is_file()}
    if split is not None:
        wanted = splits.get(split) if split in splits else _read_ids(Path(split)) if Path(split).is_file() else None
        if wanted is None:
            raise DatasetError(f"{root}: no split {split!r} in this pack; it has: {', '.join(sorted(splits)) or 'none'}")
        where = {str(i): n for n, i in enumerate(ids)}
        slots = np.array([where[i] for i in wanted if i in where], dtype=np.int64)
    pixels_path = root / PIXELS
    samples = []
    for slot in slots.tolist():
        lo, hi = int(arrays["box_offsets"][slot]), int(arrays["box_offsets"][slot + 1])
        height, width = (int(v) for v in arrays["shapes"][slot])
        samples.append(Sample(str(ids[slot]), pixels_path, width, height, boxes=arrays["boxes"][lo:hi],
                              labels=arrays["labels"][lo:hi], difficult=arrays["difficult"][lo:hi]))
    return DatasetIndex(list(meta["classes"]), samples, "pack", root, split=split, splits=splits,
                        meta={"pack_slots": np.asarray(slots, dtype=np.int64), "pack_source": meta.get("source")})


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class PackReader:
    """Reads slot i of a pack as a (3, H, W) uint8 tensor, checksum-verified.

    The memory map is opened lazily in each process and never pickled, so a
    DataLoader worker maps the file itself instead of receiving a copy.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = _pack_file(self.root, INDEX)
        with np.load(path, allow_pickle=False) as z:
            self.ids, self.offsets, self.shapes, self.crc32 = z["ids"], z["offsets"], z["shapes"], z["crc32"]
        self.path = _pack_file(self.root, PIXELS)
        size = self.path.stat().st_size
        if len(self.offsets) != len(self.ids) + 1 or self.offsets[-1] > size or np.any(np.diff(self.offsets) < 0):
            raise DatasetError(f"{self.root / INDEX}: offsets do not fit {self.path} ({size} bytes); the pack is damaged")
        hw = self.shapes[:, 0] * self.shapes[:, 1]
        if np.any(hw * 3 != np.diff(self.offsets)) or np.any(hw > MAX_PIXELS):
            raise DatasetError(f"{self.root / INDEX}: image shapes do not match their byte ranges; the pack is damaged")
        self._map: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}

    def read(self, slot: int) -> torch.Tensor:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        lo, hi = int(self.offsets[slot]), int(self.offsets[slot + 1])
        data = np.array(self._map[lo:hi])  # a private copy: transforms may write, the map is read-only
        if zlib.crc32(data) != int(self.crc32[slot]):
            raise ImageReadError(f"{self.path}: sample {str(self.ids[slot])!r} (bytes {lo}-{hi}) fails its "
                                 "CRC-32 check; the pack is corrupt, re-run `boxforge pack`")
        height, width = (int(v) for v in self.shapes[slot])
        return torch.from_numpy(data).view(3, height, width)


def reader_for(index: DatasetIndex) -> tuple[PackReader, np.ndarray] | None:
    """(reader, slot per sample) when `index` was read from a pack, else None."""
    if index.format != "pack" or "pack_slots" not in index.meta:
        return None
    return PackReader(index.root), np.asarray(index.meta["pack_slots"], dtype=np.int64)
