"""The checkpoint format: what a checkpoint holds (`training_state`, `restore_training_state`), atomic
save, safe load, newest-good lookup.

Below the engine, so predict/export/eval can read checkpoints without importing training code. A
checkpoint is a plain dict of tensors and Python primitives, so it loads with
`torch.load(weights_only=True)`: a file that needs pickled code to load is refused, never executed.

Keys: `format` (CHECKPOINT_FORMAT), `task`, `model_name`, `build_args` (what `get_model` needs to
rebuild it), `class_names`, `img_size`, `config`, `threads`, `model` (state dict), and for resuming
`optimizer`, `scaler`, `ema`, `pending_grads`, `rng` and the `State` fields (`epoch`, `iteration`
(batches done in `epoch`), `global_step`, `images_seen`, `train_seconds`, `elapsed_seconds`,
`best_metric`, `nonfinite_total`).
"""

from __future__ import annotations

import io
import pickle
import random
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from boxforge.errors import CheckpointError, DiskFullError
from boxforge.files import atomic_write, is_disk_full, remove_quietly, remove_stale_temps

if TYPE_CHECKING:
    from boxforge.config import TrainConfig

CHECKPOINT_FORMAT = "boxforge-checkpoint-v1"
_SNAPSHOT = re.compile(r"^step-(\d+)\.pt$")
# Kept snapshots, by kind: step-N.pt (--snapshot-every N steps), epoch-N.pt (--snapshot-every-epochs N).
SNAPSHOT_KINDS: tuple[str, ...] = ("step", "epoch")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (files.py): a crash at any moment leaves either the old file or
    the new one, never a torn one. A full disk is a DiskFullError and the previous file stays intact."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise first: torch's zip writer hides the OSError of a full disk
    try:
        atomic_write(path, buffer.getbuffer())
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"{path}: disk full while saving the checkpoint; the previous checkpoint is intact "
                                f"({exc})") from exc
        raise CheckpointError(f"{path}: could not save the checkpoint: {exc}") from exc
    remove_stale_temps(path)
    return path


# What torch.load raises on a truncated or corrupt file besides UnpicklingError: arbitrary bytes drive torch's
# restricted unpickler into any of these (e.g. IndexError "pop from empty list" for a stray opcode); all mean
# the same thing for the user. models/weights.py catches the same set.
UNREADABLE_TORCH_FILE: tuple[type[BaseException], ...] = (
    RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
    AttributeError, OverflowError, MemoryError, struct.error)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; every failure becomes one clear CheckpointError.

    mmap: map the tensors instead of reading them (to look at a key or two of a large file cheaply).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            found = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise CheckpointError(f"{path}: refused: the file needs pickled code to load, which weights_only=True "
                                  f"forbids ({found})") from exc
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from exc
    except UNREADABLE_TORCH_FILE as exc:
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
        remove_quietly(p)
    return removed


@dataclass
class State:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0
    iteration: int = 0  # batches done within `epoch`
    global_step: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0  # in training batches (data + step): the img/s denominator
    elapsed_seconds: float = 0.0  # wall clock of the whole loop, validation and saving included: the --time budget
    best_metric: float | None = None
    nonfinite_total: int = 0


def training_state(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None,
                   scaler: torch.amp.GradScaler, state: State) -> dict[str, Any]:
    """Everything needed to continue exactly (and to use the model alone: names, size, config)."""
    return {
        "format": CHECKPOINT_FORMAT, "task": getattr(model, "task", "detect"), "model_name": cfg.model,
        "class_names": list(model.class_names), "img_size": int(model.img_size), "config": cfg.to_dict(),
        "build_args": dict(model.build_args), "threads": torch.get_num_threads(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": state.epoch, "iteration": state.iteration, "global_step": state.global_step,
        "images_seen": state.images_seen, "train_seconds": state.train_seconds,
        "elapsed_seconds": state.elapsed_seconds, "best_metric": state.best_metric,
        "nonfinite_total": state.nonfinite_total, "pending_grads": _pending_grads(model),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def _pending_grads(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Gradients summed so far in an unfinished --accumulate group (None at a step boundary).

    Saving them is what makes a checkpoint taken mid-group (Ctrl-C, the end of a --time budget)
    resume exactly: the weights have not moved since the group began, but BatchNorm statistics
    and these sums have.
    """
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads or None


def restore_training_state(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           ema: AveragedModel | None, scaler: torch.amp.GradScaler) -> State:
    """Put a checkpoint's weights, optimizer, scaler, EMA, pending gradients and RNG back; its position."""
    if list(saved.get("class_names", [])) != list(model.class_names):
        raise CheckpointError(f"checkpoint classes {saved.get('class_names')} differ from the dataset's "
                            f"{model.class_names}; to fine-tune on new classes use --weights, not --resume")
    model.load_state_dict(saved["model"])
    pending = saved.get("pending_grads") or {}
    for name, param in model.named_parameters():
        if name in pending:
            param.grad = pending[name].to(param.device)
    optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    if ema is not None and saved.get("ema"):
        ema.load_state_dict(saved["ema"])
    rng = saved.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        random.setstate(_as_tuple(rng["python"]))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return State(saved["epoch"], saved["iteration"], saved["global_step"], saved.get("images_seen", 0),
                 saved.get("train_seconds", 0.0), saved.get("elapsed_seconds", saved.get("train_seconds", 0.0)),
                 saved.get("best_metric"), saved.get("nonfinite_total", 0))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
