"""`check --fix`: move offending files aside with a manifest that can undo every move.

Nothing is deleted or rewritten. The whole manifest (every planned move with the
file's hash) is written atomically *before* the first move, so a run killed
midway still leaves a manifest that describes every file it may have moved;
`undo` puts back whatever was moved, byte-identical, and skips what was not.
Annotation files shared by many images (COCO JSON, text lists) are never moved:
only the image is, and the manifest says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from boxforge.data.index import DatasetIndex
from boxforge.data.problems import Problem
from boxforge.errors import BoxforgeError
from boxforge.files import atomic_write

MANIFEST = "manifest.json"
PER_IMAGE_ANNOTATIONS = {"voc", "yolo"}


@dataclass
class UndoResult:
    restored: int
    already_in_place: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_moves(index: DatasetIndex, problems: list[Problem]) -> list[Path]:
    """Files to move for the error problems: the image and, where it is per-image, its annotation."""
    by_image = {index.relative(s.image_path): s for s in index.samples}
    by_ann = {index.relative(s.annotation_path): s for s in index.samples if s.annotation_path}
    files: dict[str, Path] = {}
    for p in problems:
        if p.severity != "error":
            continue
        sample = by_image.get(p.image) if p.image else None
        sample = sample or (by_ann.get(p.annotation) if p.annotation else None)
        if sample is None:
            continue
        for path in (sample.image_path, sample.annotation_path if index.format in PER_IMAGE_ANNOTATIONS else None):
            if path is not None and os.path.lexists(path) and Path(path).is_file():
                files[os.path.realpath(path)] = Path(path)
    return sorted(files.values())


def quarantine(index: DatasetIndex, problems: list[Problem], qdir: Path) -> Path:
    """Move the files behind error problems into `qdir` (relative paths kept); returns the manifest path."""
    qdir = Path(qdir)
    manifest_path = qdir / MANIFEST
    if manifest_path.exists():
        raise BoxforgeError(f"{manifest_path} exists: undo it first (--undo) or choose another --quarantine folder")
    root = index.root.resolve()
    entries = []
    for path in plan_moves(index, problems):
        rel = Path(os.path.relpath(Path(path).resolve(), root))
        if rel.parts and rel.parts[0] == "..":
            raise BoxforgeError(f"{path}: lies outside the dataset root {root}; refusing to move it")
        entries.append({"source": str(root / rel), "quarantined": str(qdir.resolve() / rel), "sha256": _sha256(path)})
    qdir.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "root": str(root), "moves": entries,
           "note": "shared annotation files (COCO JSON, text lists) are not moved" if index.format not in PER_IMAGE_ANNOTATIONS else ""}
    atomic_write(manifest_path, json.dumps(doc, indent=2))
    for entry in entries:
        dst = Path(entry["quarantined"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(entry["source"], dst)
    return manifest_path


def undo(manifest_path: Path) -> UndoResult:
    """Put every quarantined file back, checking its hash; never overwrites a file that is back in place."""
    try:
        doc = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        moves = doc["moves"]
    except (OSError, ValueError, KeyError) as exc:
        raise BoxforgeError(f"{manifest_path}: not a boxforge quarantine manifest ({exc})") from exc
    restored = in_place = 0
    for entry in moves:
        src, dst = Path(entry["source"]), Path(entry["quarantined"])
        if src.exists():
            if _sha256(src) != entry["sha256"]:
                raise BoxforgeError(f"{src}: exists with different content than the quarantined file; left both alone")
            if dst.exists() and _sha256(dst) == entry["sha256"]:
                dst.unlink()  # a copy left by a move interrupted across file systems; the original is back
            in_place += 1
            continue
        if not dst.exists():
            raise BoxforgeError(f"{dst}: quarantined file is missing; cannot restore {src}")
        if _sha256(dst) != entry["sha256"]:
            raise BoxforgeError(f"{dst}: content changed since it was quarantined; not restoring it")
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dst, src)
        restored += 1
    return UndoResult(restored, in_place)

