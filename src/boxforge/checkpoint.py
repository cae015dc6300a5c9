"""The checkpoint format: atomic save, safe load, newest-good lookup.

Below the engine, so predict/export/eval can read checkpoints without importing
training code. A checkpoint is a plain dict of tensors and Python primitives, so
it loads with `torch.load(weights_only=True)`: a file that needs pickled code to
load is refused, never executed.

Keys written by the engine: `format` (CHECKPOINT_FORMAT), `model` (state dict),
`model_name`, `class_names`, `config`, `task`, and for resuming `optimizer`,
`scheduler`, `scaler`, `ema`, `epoch`, `iteration` (batches done in `epoch`),
`global_step`, `rng`, `best_metric`.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from boxforge.errors import BoxforgeError

CHECKPOINT_FORMAT = "boxforge-checkpoint-v1"
_SNAPSHOT = re.compile(r"^step-(\d+)\.pt$")
# Kept snapshots, by kind: step-N.pt (--snapshot-every N steps), epoch-N.pt (--snapshot-every-epochs N).
SNAPSHOT_KINDS: tuple[str, ...] = ("step", "epoch")


class CheckpointError(BoxforgeError):
    """A checkpoint that cannot be written or read; the message names the file and the cause."""


class DiskFullError(CheckpointError):
    """Saving failed for lack of space (or a file-size limit); the previous checkpoint is intact."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, fsync, rename, fsync the folder.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise first: torch's zip writer hides the OSError of a full disk
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        _remove_quietly(tmp)
        if _is_disk_full(exc):
            raise DiskFullError(f"{path}: disk full while saving the checkpoint; the previous checkpoint is intact "
                                f"({exc})") from exc
        raise CheckpointError(f"{path}: could not save the checkpoint: {exc}") from exc
    _fsync_dir(path.parent)
    _remove_stale_temps(path)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete `.NAME.tmp-PID` files that a process killed mid-save left behind (its PID no longer runs)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_quietly(tmp)
        except OSError:
            continue


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "file too large" in text or "disk quota" in text


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; every failure becomes one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            found = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise CheckpointError(f"{path}: refused: the file needs pickled code to load, which weights_only=True "
                                  f"forbids ({found})") from exc
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, OverflowError, MemoryError, struct.error) as exc:
        # arbitrary bytes drive torch's restricted unpickler into any of these (e.g. IndexError
        # "pop from empty list" for a stray opcode); all mean the same thing for the user
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state


def is_boxforge_checkpoint(state: dict[str, Any]) -> bool:
    return state.get("format") == CHECKPOINT_FORMAT and "model" in state


def snapshots(run_dir: str | Path, kind: str = "step") -> list[Path]:
    """`KIND-N.pt` files in `run_dir` (kind "step" or "epoch"), newest first (highest N)."""
    if kind not in SNAPSHOT_KINDS:
        raise ValueError(f"unknown snapshot kind {kind!r}; choose one of: {', '.join(SNAPSHOT_KINDS)}")
    pattern = _SNAPSHOT if kind == "step" else re.compile(rf"^{kind}-(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob(f"{kind}-*.pt") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints in `run_dir` to resume from: last.pt, then step-N.pt by N, then epoch-N.pt by N (newest first)."""
    run_dir = Path(run_dir)
    found = [run_dir / "last.pt"] if (run_dir / "last.pt").is_file() else []
    return found + snapshots(run_dir, "step") + snapshots(run_dir, "epoch")


def find_resume(run_dir: str | Path, log: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `run_dir` that loads; bad ones are reported (via `log`) and skipped."""
    best: tuple[Path, dict[str, Any]] | None = None
    for path in resume_candidates(run_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            log(f"skipping {exc}")
            continue
        if not is_boxforge_checkpoint(state):
            log(f"skipping {path}: not a boxforge training checkpoint")
            continue
        if best is None or state.get("global_step", 0) > best[1].get("global_step", 0):
            best = (path, state)
    return best


def prune_snapshots(run_dir: str | Path, keep: int, kind: str = "step") -> list[Path]:
    """Delete all but the newest `keep` `KIND-N.pt` snapshots (our own files only); returns what was removed.

    Each kind is pruned on its own, so frequent step snapshots never push out the epoch ones.
    """
    removed = snapshots(run_dir, kind)[max(keep, 0):]
    for p in removed:
        _remove_quietly(p)
    return removed
