"""Rules for untrusted dataset files: paths stay inside the root, XML has no entities.

Documented rule for paths: an annotation may only name files inside the dataset
root. Absolute paths, `..` that climbs out, and symlinks whose target lies
outside the root are refused (an `unsafe_path` problem), never opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from boxforge.errors import UnsafeInputError

# An annotation file larger than this is not an annotation (a VOC XML is ~1 KB;
# the whole COCO train2017 instances file is ~450 MB, so JSON gets its own bound).
MAX_XML_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 2 * 1024 * 1024 * 1024


def resolve_inside(root: Path, relpath: str | os.PathLike[str]) -> Path:
    """Join `relpath` to `root` and prove the result (symlinks followed) stays inside.

    Raises UnsafeInputError naming the path; returns the joined (unresolved) path so
    messages show what the user wrote.
    """
    text = os.fspath(relpath)
    if not text:
        raise UnsafeInputError("empty path")
    if "\x00" in text:
        raise UnsafeInputError(f"path {text!r} contains a NUL byte")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise UnsafeInputError(f"absolute path {text!r} is not allowed; paths must be relative to the dataset root")
    joined = Path(root) / text
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeInputError(f"path {text!r} leads outside the dataset root {root}")
    return joined


def is_inside(root: Path, path: Path) -> bool:
    """True when `path` (symlinks followed) lies inside `root`."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def regular_file_problem(path: Path) -> str | None:
    """Why `path` must not be opened as data (a pipe or device would block or never end), or None.

    Missing files return None: callers report them as missing, not unsafe.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "is a named pipe, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return "is not a regular file"


def read_bytes_bounded(path: Path, limit: int) -> bytes:
    """Read a small text file, refusing non-regular files and files over `limit` bytes."""
    why = regular_file_problem(path)
    if why:
        raise UnsafeInputError(f"{path}: {why}")
    size = os.path.getsize(path)
    if size > limit:
        raise UnsafeInputError(f"{path}: {size} bytes is over the {limit}-byte limit for this kind of file")
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


def parse_xml(path: Path) -> Element:
    """Parse an annotation XML safely: no DTD entities, no external references, bounded size.

    Raises UnsafeInputError for entities/DTDs, ValueError (with the parser's line) for
    XML that is not well-formed.
    """
    data = read_bytes_bounded(path, MAX_XML_BYTES)
    try:
        return SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise UnsafeInputError(f"{path}: XML uses a DTD or entities, which annotation files never need ({type(exc).__name__})") from exc
    except SafeET.ParseError as exc:
        raise ValueError(f"{path}: XML is not well-formed: {exc}") from exc
