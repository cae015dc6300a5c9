"""Turn a `--weights` / `--weights-backbone` value into a state dict, without ever touching the network.

A value may be:

* a torchvision weights-enum member name (`COCO_V1`, `IMAGENET1K_V1`, `DEFAULT`) for the
  builder's own enum: read from the local torch hub cache
  (`torch.hub.get_dir()/checkpoints/<file name from the enum URL>`) or refused with one line
  that says where the file should be; boxforge never downloads (machines that train often
  have no internet, and a silent 100 MB download in the middle of a run is a surprise);
* a local `.pt` / `.pth` file holding a state dict;
* a boxforge checkpoint: a dict whose key `"model"` holds the state dict.

Every file is read with `torch.load(..., weights_only=True)`: a file that needs pickled
Python code to load could run that code, so it is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

from boxforge.checkpoint import UNREADABLE_TORCH_FILE
from boxforge.errors import BoxforgeError

StateDict = dict[str, torch.Tensor]
WeightsSpec = str | Path | None

FILE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin")
# How a role is named in messages, and the CLI flag that sets it.
_ROLES: dict[str, tuple[str, str]] = {
    "weights": ("weights", "--weights"),
    "weights_backbone": ("backbone weights", "--weights-backbone"),
}


def looks_like_file(spec: str | Path) -> bool:
    """True if `spec` names a file rather than an enum member: a Path, a known suffix, a slash, or an existing file."""
    if isinstance(spec, Path):
        return True
    return spec.lower().endswith(FILE_SUFFIXES) or "/" in spec or os.sep in spec or Path(spec).is_file()


def cache_path(member: WeightsEnum) -> Path:
    """Where `torch.hub` would keep the file of a torchvision weights member: `<hub dir>/checkpoints/<name>`."""
    filename = os.path.basename(urlparse(member.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_state_dict(spec: WeightsSpec, *, enum: type[WeightsEnum] | None, model_name: str,
                       role: str = "weights") -> StateDict | None:
    """The state dict that `spec` names, or None when `spec` is None.

    `enum` is the torchvision weights enum that named weights refer to (None when the model
    has no named weights); `role` is "weights" or "weights_backbone" and only shapes messages.
    Raises BoxforgeError with one actionable line for every failure.
    """
    if spec is None:
        return None
    if role not in _ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(_ROLES)}")
    if looks_like_file(spec):
        return load_state_dict_file(Path(spec))
    return load_state_dict_file(named_weights_file(str(spec), enum=enum, model_name=model_name, role=role))


def named_weights_file(name: str, *, enum: type[WeightsEnum] | None, model_name: str, role: str = "weights") -> Path:
    """The cached file of enum member `name`; BoxforgeError if the name is unknown or the file is not cached."""
    what, flag = _ROLES[role]
    if enum is None:
        raise BoxforgeError(f"{model_name} has no named {what} (got {name!r}); "
                            f"pass a local file: {flag} path/to/file.pth")
    valid = list(enum.__members__)  # includes aliases such as DEFAULT
    if name not in enum.__members__:
        raise BoxforgeError(f"unknown {what} {name!r} for {model_name}; choose one of: {', '.join(valid)} "
                            f"or a local file ({'/'.join(FILE_SUFFIXES)})")
    path = cache_path(enum[name])
    if not path.is_file():
        raise BoxforgeError(f"{what} {name} for {model_name} are not in the local cache ({path}); "
                            f"download them where you have internet or pass a local file: {flag} path/to/file.pth")
    return path


def load_state_dict_file(path: Path) -> StateDict:
    """Read a state dict or a boxforge checkpoint from `path` on the CPU, refusing pickled code.

    Accepted layouts: `{name: Tensor}`, `{"model": {name: Tensor}, ...}` (boxforge checkpoint)
    and `{"state_dict": {...}}` (common in other tools). Returns `{name: Tensor}`.
    """
    if not path.is_file():
        raise BoxforgeError(f"{path}: weights file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BoxforgeError(_refusal(path, str(exc))) from None
    except UNREADABLE_TORCH_FILE as exc:
        raise BoxforgeError(f"{path}: cannot read weights: {type(exc).__name__}: {str(exc)[:200]}") from None
    return _extract_state_dict(obj, path)


def _refusal(path: Path, message: str) -> str:
    """One line for a `weights_only` refusal: the pickled global it wanted, else torch's reason."""
    wanted = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if wanted:
        return (f"{path}: refused to load: the file needs pickled Python code ({wanted.group(1)}), which could "
                "run anything; save a plain state_dict instead: torch.save(model.state_dict(), path)")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    reason = detail.group(1).strip() if detail else (message.strip().splitlines() or ["unknown error"])[-1]
    return f"{path}: cannot read weights: not a plain PyTorch weights file ({reason[:160]})"


def _extract_state_dict(obj: object, path: Path) -> StateDict:
    """Unwrap a checkpoint dict down to `{name: Tensor}`, or say what the file holds instead."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                return dict(inner)
        if obj and _all_tensors(obj):
            return dict(obj)
        keys = ", ".join(map(str, list(obj)[:6])) or "nothing"
        raise BoxforgeError(f"{path}: holds neither a state_dict nor a boxforge checkpoint "
                            f"(a dict with key 'model'); its keys: {keys}")
    raise BoxforgeError(f"{path}: holds a {type(obj).__name__}, not a state_dict or a boxforge checkpoint")


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())
