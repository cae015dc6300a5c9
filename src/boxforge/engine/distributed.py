"""torch.distributed from torchrun's environment: RANK, LOCAL_RANK, WORLD_SIZE.

gloo on CPU, NCCL on CUDA. One stalled or dead rank ends the others with a
message instead of a hang: a rank whose peer died gets a transport error at
once (`lost_peer` turns it into one line); a rank waiting on a stalled peer is
ended by its watchdog after --stall-timeout, and failing that by the process
group timeout (the stall timeout, at least 30 s).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from boxforge.errors import BoxforgeError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(local_rank: int | None = None) -> DistInfo:
    """Rank, local rank and world size from torchrun's environment (one process without WORLD_SIZE).

    local_rank: the `--local-rank=N` (or `--local_rank=N`) that `python -m torch.distributed.launch`
    passes on the command line when --use-env is not given; it stands in for LOCAL_RANK when the
    environment lacks it (the environment wins when both are there).
    """
    if local_rank is not None and (isinstance(local_rank, bool) or not isinstance(local_rank, int) or local_rank < 0):
        raise BoxforgeError(f"--local-rank {local_rank!r}: allowed an integer >= 0")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = os.environ.get("LOCAL_RANK")
    return DistInfo(int(os.environ.get("RANK", "0")), int(local) if local is not None else (local_rank or 0), world)


def init(info: DistInfo, device: torch.device, timeout_s: float) -> None:
    """Join the process group (no-op for a single process)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=max(timeout_s, 30.0)))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity for one process)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` holds on every rank: ranks that decide together never wait on each other."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return float(t) == 0.0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# Words in the errors gloo and NCCL raise when the other end of a collective is gone or silent.
_PEER_FAILURE_WORDS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out",
                       "timeout", "gloo", "nccl", "socket")


def lost_peer(exc: BaseException, info: DistInfo) -> BoxforgeError | None:
    """A one-line error for a collective that failed because another rank died or stalled, else None.

    gloo raises a bare RuntimeError with a C++ source path and a long hint; this names the rank, the
    cause and what to do, so a multi-rank log says in one line why each surviving rank stopped.
    """
    if not info.enabled or isinstance(exc, BoxforgeError):
        return None
    text = str(exc)
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(exc, dist_error) or (isinstance(exc, RuntimeError)
                                             and any(w in text.lower() for w in _PEER_FAILURE_WORDS))):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    first = first.split(". ", 1)[0].rstrip(".")
    return BoxforgeError(f"rank {info.rank} of {info.world_size}: a collective operation failed ({first}): another "
                         f"rank died or stalled (see its log); restart all ranks with --resume auto")
