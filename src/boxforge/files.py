"""The one atomic writer: a temporary file in the target's folder, fsync, rename, fsync the folder.

A crash at any moment leaves either the old file or the new one, never a torn one, and a reader
never sees half a file. Every file boxforge writes for the user (checkpoints, predictions,
reports, exports, packs, manifests, settings) goes through here.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"  # temporary names: `.NAME.tmp-PID` beside the target


def temp_name(path: Path) -> Path:
    """Where `path` is written before its rename: a hidden name in the same folder, with our pid."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_disk_full(exc: BaseException) -> bool:
    """True for a full disk, a quota or a file-size limit (RLIMIT_FSIZE), however the error says it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "file too large" in text or "disk quota" in text


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to (by any means: open, torch.onnx.export, np.save);
    when the block ends normally it is fsynced and renamed onto `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_json(path: str | Path, doc: Any, *, indent: int | None = None) -> Path:
    """`doc` as strict JSON (NaN refused: write None) to `path`, atomically."""
    return atomic_write(path, json.dumps(doc, allow_nan=False, indent=indent) + ("\n" if indent else ""))


def remove_stale_temps(path: Path) -> None:
    """Delete `.NAME.tmp-PID` files a process killed mid-write left beside `path` (that PID no longer runs)."""
    for tmp in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            remove_quietly(tmp)
        except OSError:
            continue
