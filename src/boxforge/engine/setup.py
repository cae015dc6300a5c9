"""Building what a run needs from its TrainConfig: device, threads, data, model (with fitted anchors and
the input size chosen from the data), optimizer, plan.

Each helper does one thing so `fit()` reads top to bottom.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxforge.config import TrainConfig
from boxforge.data import splits
from boxforge.data.splits import TrainVal
from boxforge.engine.distributed import DistInfo
from boxforge.engine.logging import MetricsLog
from boxforge.engine.tasks import Task
from boxforge.errors import BoxforgeError
from boxforge.models import get_model
from boxforge.models.transfer import freeze_backbone

DEFAULT_LR = {"sgd": 0.02, "adamw": 0.002}  # for batch 16; scaled linearly with the global batch
DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """auto: CUDA when present, one GPU per local rank (cuda:LOCAL_RANK), as torchrun and the references do."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BoxforgeError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise BoxforgeError(f"--device {name}: local rank {info.local_rank} needs cuda:{info.local_rank}, but this "
                                f"machine has {count} CUDA device(s); start at most {count} process(es) per machine "
                                f"(torchrun --nproc_per_node {count}) or train on CPU with --device cpu")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


@contextmanager
def kernel_choice(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Speed or bitwise repeatability for the run, restoring torch's global flags afterwards.

    Default on CUDA: cuDNN autotuning (every training batch has the model's fixed input size, or one of
    --multi-scale's few sizes, so the per-shape search pays once per size), which picks kernels by timing
    and so may differ run to run.
    --deterministic: no autotuning, deterministic kernels where torch has them, cuBLAS's fixed workspace;
    what `--resume` needs to be bit-identical on a GPU (it is on CPU anyway). An op with no deterministic
    CUDA kernel (e.g. nearest upsampling's backward) warns, naming itself, rather than ending the run.
    """
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def load_train_val(cfg: TrainConfig) -> TrainVal:
    """The training and validation sets by the one split policy (data/splits.py), checked for shared images."""
    data = cfg.data if len(cfg.data) > 1 else cfg.data[0]
    return splits.load_train_val(data, split=cfg.split, val=cfg.val, format=cfg.format,
                                 allow_overlap=cfg.allow_overlap)


def default_lr(cfg: TrainConfig, world_size: int) -> float:
    if cfg.lr is not None:
        return cfg.lr
    return DEFAULT_LR[cfg.optimizer] * cfg.batch_size * cfg.accumulate * world_size / 16


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD+momentum or AdamW; no weight decay on norms and biases (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    wd = cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WD[cfg.optimizer]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


@dataclass
class Plan:
    """How long the run is: `total_steps` optimizer steps, or a `budget_s` wall-clock budget."""

    iters_per_epoch: int
    total_steps: int | None
    budget_s: float | None
    epochs: int | None

    def progress(self, step: int, seconds: float) -> float:
        if self.budget_s:
            return min(1.0, seconds / self.budget_s)
        return min(1.0, step / max(1, self.total_steps or 1))

    def done(self, step: int, seconds: float, epoch: int) -> bool:
        if self.budget_s:
            return seconds >= self.budget_s
        if self.total_steps is not None and step >= self.total_steps:
            return True
        return self.epochs is not None and epoch >= self.epochs


DEFAULT_EPOCHS = 30


def make_plan(cfg: TrainConfig, iters_per_epoch: int) -> Plan:
    steps_per_epoch = max(1, iters_per_epoch // cfg.accumulate)
    if cfg.time:
        return Plan(iters_per_epoch, None, cfg.time * 60.0, None)
    if cfg.iterations:
        return Plan(iters_per_epoch, cfg.iterations, None, None)
    epochs = cfg.epochs or DEFAULT_EPOCHS
    return Plan(iters_per_epoch, epochs * steps_per_epoch, None, epochs)


def fitted_anchors(cfg: TrainConfig, index: Any, resume: dict[str, Any] | None, log: MetricsLog) -> Any:
    """--anchors auto: default-box shapes from k-means on the training boxes (None: the model's own)."""
    if cfg.anchors != "auto" or resume is not None:
        return None
    from boxforge.models.anchors import default_shapes, fit_anchor_shapes, mean_best_iou, relative_box_shapes
    from boxforge.models.detection import ANCHOR_LAYOUT

    if cfg.model not in ANCHOR_LAYOUT:
        raise BoxforgeError(f"--anchors auto: {cfg.model} keeps its own default boxes (its pretrained head depends "
                            f"on them); fitted anchors are for: {', '.join(sorted(ANCHOR_LAYOUT))}")
    wh = relative_box_shapes(index)
    shapes = fit_anchor_shapes(wh, *ANCHOR_LAYOUT[cfg.model], seed=cfg.seed)
    default = default_shapes(get_model(cfg.model, num_classes=1).model.anchor_generator)
    log.print(f"anchors fitted to {len(wh)} training boxes (k-means, 1 - IoU): mean best IoU "
              f"{mean_best_iou(wh, shapes):.3f} (the default boxes: {mean_best_iou(wh, default):.3f}); (w, h) per "
              f"feature map: " + "; ".join(" ".join(f"{w:.3f}x{h:.3f}" for w, h in level) for level in shapes))
    return shapes


def input_size(cfg: TrainConfig, index: Any, task: Task, log: MetricsLog) -> int | None:
    """--img-size: pixels, None (the model's default), or auto: chosen from the training boxes."""
    if cfg.img_size != "auto":
        return cfg.img_size
    if task.name != "detect":
        raise BoxforgeError("--img-size auto is chosen from box sizes, for detectors; give classifiers a number")
    from boxforge.models.anchors import relative_box_shapes
    from boxforge.models.input_size import choose_img_size

    size, reason = choose_img_size(relative_box_shapes(index))
    log.print(f"--img-size auto: {size} px ({reason})")
    return size


def build_model(cfg: TrainConfig, classes: list[str], resume: dict[str, Any] | None, log: MetricsLog,
                anchors: Any = None, img_size: int | None = None) -> nn.Module:
    """The model to train: rebuilt exactly as saved when resuming, else built from the settings (+ --freeze)."""
    if resume is not None:  # the architecture exactly as saved (some depend on the weights it started from)
        return _maybe_freeze(cfg, get_model(resume["model_name"], **resume["build_args"]), log)
    model = get_model(cfg.model, num_classes=len(classes), class_names=classes, img_size=img_size,
                      weights=cfg.weights, weights_backbone=cfg.weights_backbone,
                      **({"anchors": anchors} if anchors is not None else {}))
    report = getattr(model, "transfer_report", None)
    if report is not None:
        log.print(str(report))
    return _maybe_freeze(cfg, model, log)


def _maybe_freeze(cfg: TrainConfig, model: nn.Module, log: MetricsLog) -> nn.Module:
    """--freeze backbone: no gradients and fixed BatchNorm statistics in the feature extractor."""
    if cfg.freeze == "backbone":
        frozen = freeze_backbone(model)
        log.print(f"froze the backbone: {frozen} parameters, BatchNorm statistics fixed")
    return model
