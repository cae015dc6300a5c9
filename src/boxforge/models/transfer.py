"""Fine-tuning helpers: load what fits from other weights, and freeze a backbone properly.

`load_matching` is how a detector trained on COCO (91 classes) or on another dataset becomes
the starting point for a new class list: every tensor whose name and shape agree is copied,
the rest (typically the classification head) keep their fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

# Prefixes a state dict may carry from a wrapper (DDP "module.", our Detector "model.") or that
# select the backbone out of a whole detector ("model.backbone.").
_PREFIXES: tuple[str, ...] = ("module.", "model.", "module.model.", "backbone.", "model.backbone.")
_SHOWN_NAMES = 8


@dataclass(frozen=True)
class TransferReport:
    """What `load_matching` did, tensor by tensor (parameters and buffers, by state-dict name).

    transferred: copied from the source; reinitialised: kept the model's own values because the
    source lacks them or has another shape (`shape_mismatch` lists the latter); unused: source
    tensors the model has no place for.
    """

    transferred: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of tensors in the model's state dict."""
        return len(self.transferred) + len(self.reinitialised)

    def __str__(self) -> str:
        text = f"transferred {len(self.transferred)}/{self.total} tensors"
        if self.reinitialised:
            text += f"; re-initialised: {_short_list(self.reinitialised)}"
        if self.unused:
            text += f"; unused from source: {len(self.unused)}"
        return text


def _short_list(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown if len(names) <= _SHOWN_NAMES else f"{shown}, ... (+{len(names) - _SHOWN_NAMES} more)"


def _align_keys(source: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Rename `source` so its keys line up with `target_keys`, trying the usual wrapper prefixes.

    Picks whichever of {as is, the keys under a known prefix with it stripped, all keys with
    "model." added} matches the most names: so a torchvision state dict loads into a `Detector`,
    a boxforge checkpoint into a bare model, and a detector's backbone into a bare backbone.
    """
    targets = set(target_keys)
    candidates = [dict(source)]
    for prefix in _PREFIXES:
        candidates.append({k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)})
    candidates.append({f"model.{k}": v for k, v in source.items()})
    return max(candidates, key=lambda c: len(targets.intersection(c)))


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> TransferReport:
    """Copy into `model` every tensor of `state_dict` whose name and shape match; report the rest.

    The tensors that do not match keep the values the model already has (its fresh
    initialisation when called right after building). Dtypes are converted by the copy.
    """
    own = model.state_dict()
    source = _align_keys(state_dict, own.keys())
    report = TransferReport()
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        incoming = source.get(name)
        if incoming is not None and incoming.shape == tensor.shape:
            matched[name] = incoming
            report.transferred.append(name)
        else:
            report.reinitialised.append(name)
            if incoming is not None:
                report.shape_mismatch.append(name)
    report.unused.extend(k for k in source if k not in own)
    model.load_state_dict(matched, strict=False)
    return report


def freeze_backbone(model: nn.Module) -> int:
    """Freeze the backbone of a `Detector`: no gradients, and BatchNorm statistics that stay put.

    Sets `requires_grad=False` on every parameter of `model.backbone_modules()` and marks the
    model so that its `train()` keeps those modules in eval mode; otherwise a train-mode forward
    would keep updating BatchNorm running mean/var with the new data's batch statistics even
    though the layers around them no longer learn. Returns the number of frozen parameters.
    """
    if not hasattr(model, "backbone_modules") or not hasattr(model, "frozen_backbone"):
        raise TypeError(f"freeze_backbone needs a boxforge Detector (with backbone_modules()), "
                        f"got {type(model).__name__}")
    frozen = 0
    for module in model.backbone_modules():
        for parameter in module.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    model.frozen_backbone = True
    model.train(model.training)  # apply the eval-mode rule now, whatever mode the model is in
    return frozen
