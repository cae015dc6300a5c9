"""Which torch device a command runs on: the one rule for training, eval, predict and export."""

from __future__ import annotations

import torch

from boxforge.errors import BoxforgeError


def resolve_device(name: str | torch.device | None, *, local_rank: int = 0) -> torch.device:
    """"auto" (or None): CUDA when available, else CPU; "cpu", "cuda", "cuda:N" as given.

    A "cuda" without an index is cuda:LOCAL_RANK, one GPU per torchrun rank as torchrun and the
    torchvision references do; a rank beyond the machine's GPUs is a one-line error.
    """
    if isinstance(name, torch.device):
        return name
    text = "auto" if name is None else str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise BoxforgeError(f"--device {name!r}: allowed auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BoxforgeError(f"--device {name}: boxforge runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise BoxforgeError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else local_rank
    if index >= count:
        raise BoxforgeError(f"--device {name}: local rank {local_rank} needs cuda:{index}, but this machine has "
                            f"{count} CUDA device(s); start at most {count} process(es) per machine (torchrun "
                            f"--nproc_per_node {count}) or run on CPU with --device cpu")
    return torch.device("cuda", index)
