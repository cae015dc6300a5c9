"""Helpers every reader shares: listing images, reading id lists and class-name files."""

from __future__ import annotations

import os
from pathlib import Path

from boxforge.data.images import IMAGE_EXTENSIONS
from boxforge.data.safety import read_bytes_bounded
from boxforge.errors import DatasetError

MAX_LIST_BYTES = 512 * 1024 * 1024

# Files that name the classes, one a line, in the order the class ids follow.
CLASS_FILES: tuple[str, ...] = ("classes.txt", "class_names.txt", "obj.names", "labels.txt", "names.txt")
# A first class name that is the background slot, not a class (compared case-insensitively).
BACKGROUND_NAMES: frozenset[str] = frozenset({"background", "__background__", "_background_"})


def list_images(folder: Path) -> dict[str, Path]:
    """Image id (path relative to `folder`, no extension, `/` separators) -> path, recursively.

    Symlinks to directories are not followed, so a link cannot pull files from outside.
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            rel_dir = os.path.relpath(dirpath, folder)
            image_id = stem if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{stem}"
            found.setdefault(image_id, Path(dirpath) / name)
    return found


def strip_image_ext(relpath: str) -> str:
    """`a/b.jpg` -> `a/b`: the image id convention (relative path, no extension)."""
    rel = relpath.replace("\\", "/")
    stem, ext = os.path.splitext(rel)
    return stem if ext.lower() in IMAGE_EXTENSIONS else rel


def id_from_relpath(relpath: str) -> str:
    """Image id of a path written relative to a dataset root: no extension, no leading images folder."""
    rel = strip_image_ext(relpath).lstrip("./")
    first, _, rest = rel.partition("/")
    return rest if rest and first in ("images", "Images", "JPEGImages") else rel


def read_lines(path: Path) -> list[str]:
    """Non-blank lines of a text file with `#` comments removed, whitespace stripped."""
    data = read_bytes_bounded(path, MAX_LIST_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if raw.lstrip().startswith("#") else raw.strip()
        if line:
            lines.append(line)
    return lines


def read_id_list(path: Path) -> list[str]:
    """Image ids of a split file: the first token of each line (VOC `<cls>_<split>.txt` lines have two)."""
    return [strip_image_ext(line.split()[0]) for line in read_lines(path)]


def read_class_file(path: Path) -> list[str]:
    """Class names, one a line, in id order. Datumaro `labelmap.txt` lines (`name:color:...`) keep the name."""
    names = []
    for line in read_lines(path):
        name = line.split(":", 1)[0].strip() if path.name == "labelmap.txt" else line
        if name:
            names.append(name)
    if not names:
        raise DatasetError(f"{path}: class-name file lists no classes")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"{path}: class names appear twice: {', '.join(duplicates)}")
    return names


def drop_background(names: list[str], where: str | Path) -> list[str]:
    """`names` without a leading background entry (`background`, `__background__`, `_background_`, any case).

    Why: MindSpore SSD's class files and datumaro's VOC `labelmap.txt` list the background first, so a
    class list read as written would shift every 1-based text-list id by one and make "background" a
    class the detector learns. Only formats whose ids are 1-based (text lists) or whose objects are
    matched by name (VOC) call this; in a 0-based format (YOLO `names`, obj.names, ImageNet lists)
    index 0 is a real class and must stay. `where` names the source for the error when nothing is left.
    """
    if not names or names[0].strip().lower() not in BACKGROUND_NAMES:
        return list(names)
    if len(names) == 1:
        raise DatasetError(f"{where}: the class list names only {names[0]!r}, the background; list the classes")
    return list(names[1:])


def find_class_file(*folders: Path) -> Path | None:
    """The first class-name file found in `folders` (labelmap.txt counts too)."""
    for folder in folders:
        for name in ("labelmap.txt", *CLASS_FILES):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def find_split_file(root: Path, split: str) -> Path | None:
    """Where a split's id list lives: a path to a txt file, `ImageSets/Main/NAME.txt`, or `NAME.txt` at the root."""
    as_path = Path(split)
    if as_path.suffix == ".txt" and as_path.is_file():
        return as_path
    for candidate in (root / "ImageSets" / "Main" / f"{split}.txt", root / f"{split}.txt"):
        if candidate.is_file():
            return candidate
    return None


def available_splits(root: Path) -> list[str]:
    """Split names a VOC-style root offers (for error messages and split-overlap checks)."""
    names: set[str] = set()
    main = root / "ImageSets" / "Main"
    if main.is_dir():
        names.update(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
    names.update(p.stem for p in root.glob("*.txt") if p.stem in ("train", "val", "test", "trainval"))
    return sorted(names)
