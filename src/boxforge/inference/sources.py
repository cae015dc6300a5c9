"""What `predict SOURCE...` means: image files, folders (searched recursively) and glob patterns.

Each image gets an id: its path relative to the folder (or the glob's fixed leading folder) it was
found under, without extension, `/`-separated (`street/0001`); an image named directly gets its stem.
Ids name the output files and the entries of the predictions file, so they must be unique: where two
sources give the same id, those ids are prefixed with their source's name (`dir1/0001`, `dir2/0001`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from boxforge.data.images import is_image_file
from boxforge.errors import BoxforgeError

_MAGIC = ("*", "?", "[")


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in _MAGIC)


def _glob_base(pattern: str) -> Path:
    """The leading folders of `pattern` that hold no glob characters ("." when none)."""
    parts = []
    for part in Path(pattern).parts:
        if _is_glob(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _walk(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under `folder`, sorted, skipping hidden folders and the `exclude` folder (our output)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _inside(here / d, exclude))
        found.extend(here / f for f in filenames if is_image_file(here / f) and not f.startswith("."))
    return sorted(found)


def _image_id(path: Path, base: Path | None) -> str:
    rel = path.relative_to(base) if base is not None else Path(path.name)
    return rel.with_suffix("").as_posix()


def resolve_sources(sources: Sequence[str | Path], exclude: str | Path | None = None) -> list[tuple[str, Path]]:
    """[(image_id, path)] for every image the SOURCE arguments name, in argument then path order.

    exclude: a folder whose files are never taken (predict's output folder, which may sit inside a
    source). Raises BoxforgeError for a source that names nothing, naming it.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[str, Path, str]] = []  # (id, path, source label)
    for source in sources:
        text = str(source)
        path = Path(text)
        if path.is_dir():
            entries = [(_image_id(p, path), p) for p in _walk(path, skip)]
        elif path.is_file():
            entries = [(_image_id(path, None), path)]
        elif _is_glob(text):
            base = _glob_base(text)
            entries = []
            for match in sorted(glob.glob(text, recursive=True)):
                m = Path(match)
                if m.is_dir():
                    entries += [(_image_id(p, base), p) for p in _walk(m, skip)]
                elif is_image_file(m) and not _inside(m, skip):
                    entries.append((_image_id(m, base), m))
        else:
            raise BoxforgeError(f"{text}: no such image file or folder, and no glob pattern")
        if not entries:
            raise BoxforgeError(f"{text}: no image files found (looked for {', '.join(_extensions())})")
        label = path.name if path.is_dir() else _glob_base(text).name if _is_glob(text) else path.parent.name
        found += [(image_id, p, label or "source") for image_id, p in entries]
    return _unique(found)


def _extensions() -> list[str]:
    from boxforge.data.images import IMAGE_EXTENSIONS

    return list(IMAGE_EXTENSIONS)


def _unique(found: list[tuple[str, Path, str]]) -> list[tuple[str, Path]]:
    """Drop repeats of the same file; prefix ids that two different files share with their source label."""
    seen: set[Path] = set()
    files = []
    for image_id, path, label in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append((image_id, path, label))
    counts: dict[str, int] = {}
    for image_id, _, _ in files:
        counts[image_id] = counts.get(image_id, 0) + 1
    result, used = [], set()
    for image_id, path, label in files:
        final = f"{label}/{image_id}" if counts[image_id] > 1 else image_id
        n = 2
        candidate = final
        while candidate in used:
            candidate, n = f"{final}~{n}", n + 1
        used.add(candidate)
        result.append((candidate, path))
    return result
