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
import random
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from boxforge import checkpoint as ckpt
from boxforge.checkpoint import State
from boxforge.config import TrainConfig, save_config
from boxforge.data import splits
from boxforge.data.index import DatasetIndex
from boxforge.data.loading import make_loader
from boxforge.engine.distributed import DistInfo
from boxforge.engine.ema import ema_update_fn
from boxforge.engine.logging import MetricsLog
from boxforge.engine.multiscale import TrainSizes, describe as describe_sizes, train_sizes
from boxforge.engine.sampler import ResumableSampler, SeededDataset
from boxforge.engine.sync_bn import convert_sync_bn
from boxforge.engine.tasks import Task, check_index_task, make_task
from boxforge.engine.threads import keep_checkpoint_threads
from boxforge.data.splits import TrainVal
from boxforge.errors import BoxforgeError
from boxforge.files import write_json
from boxforge.models import get_model
from boxforge.models.transfer import freeze_backbone

DEFAULT_LR = {"sgd": 0.02, "adamw": 0.002}  # for batch 16; scaled linearly with the global batch
DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}


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
    from boxforge.models import MODELS

    layout = MODELS[cfg.model].anchor_layout
    if layout is None:
        fitted = sorted(name for name, s in MODELS.items() if s.anchor_layout)
        raise BoxforgeError(f"--anchors auto: {cfg.model} keeps its own default boxes (its pretrained head depends "
                            f"on them, or it has none); fitted anchors are for: {', '.join(fitted)}")
    wh = relative_box_shapes(index)
    shapes = fit_anchor_shapes(wh, *layout, seed=cfg.seed)
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
    from boxforge.models.input_size import auto_img_size

    size, reason = auto_img_size(index)
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


@dataclass
class TrainRun:
    """A run's parts, built once by `prepare_run`; the loop (engine/loop.py) takes this and nothing else.

    model: the Detector or classifier (on `device`); train_model: the same wrapped in DDP under torchrun.
    sizes: --multi-scale's input size per batch (None: the fixed size). state: where the run starts
    (a resumed checkpoint's position, else the beginning).
    """

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    log: MetricsLog
    task: Task
    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler
    plan: Plan
    base_lr: float
    sampler: ResumableSampler
    loader: Any
    val_index: DatasetIndex | None
    sizes: TrainSizes | None
    state: State


def prepare_run(cfg: TrainConfig, info: DistInfo, device: torch.device, run_dir: Path, log: MetricsLog,
                data: TrainVal | None = None) -> TrainRun:
    """Everything the loop needs, in order: resume point, data (`data`, else the split policy), task, model,
    loader, optimizer, EMA, scaler, plan; writes config.yaml and splits.json (main rank) and logs what it chose."""
    resume = find_resume(cfg, run_dir, log)
    if resume is not None and (note := keep_checkpoint_threads(cfg, resume.get("threads"))):
        log.print(note)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    chosen = data if data is not None else load_train_val(cfg)
    train_index, val_index = chosen.train, chosen.val
    for line in chosen.summary() + chosen.notes:
        log.print(line)
    task = make_task(cfg, train_index.classes, device)
    for what, index in (("training", train_index), ("validation", val_index)):
        if index is not None:
            check_index_task(task, index, what)
    model = build_model(cfg, train_index.classes, resume, log, fitted_anchors(cfg, train_index, resume, log),
                        input_size(cfg, train_index, task, log) if resume is None else None)
    if resume is None:
        from boxforge.engine.plan import describe

        for line in describe(cfg, chosen, int(model.img_size), None).lines():
            log.print(line)
    sizes = train_sizes(cfg.multi_scale, model, cfg.seed)
    if sizes is not None:
        log.print(describe_sizes(sizes, int(model.img_size), cfg.multi_scale))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        write_json(run_dir / "splits.json", chosen.to_json())
    sampler = ResumableSampler(len(train_index), batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                               rank=info.rank, world_size=info.world_size)
    dataset = SeededDataset(task.train_dataset(train_index, int(model.img_size)))
    if getattr(task, "recipe", None) is not None:
        log.print(f"--gpu-augment: the SSD augmentation runs on {device} in the training process; the data workers "
                  f"draw its parameters and send uint8 images")
    loader = make_loader(dataset, cfg.batch_size, workers=cfg.workers, sampler=sampler, timeout=cfg.stall_timeout,
                         collate_fn=task.collate, pin_memory=device.type == "cuda")
    if info.enabled and cfg.sync_bn:
        log.print(f"--sync-bn: {convert_sync_bn(model, device)} BatchNorm layers normalise over all ranks")
    model.to(device)
    if cfg.channels_last and getattr(model, "prefers_channels_last", False):
        model.to(memory_format=torch.channels_last)  # every detector: faster steps, see models/detector.py
    lr = default_lr(cfg, info.world_size)
    optimizer = build_optimizer(model, cfg, lr)
    ema = AveragedModel(model, multi_avg_fn=ema_update_fn(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    state = State()
    if resume is not None:
        state = ckpt.restore_training_state(resume, model, optimizer, ema, scaler)
    train_model: nn.Module = DistributedDataParallel(model) if info.enabled else model
    plan = make_plan(cfg, sampler.batches_per_epoch())
    names = ", ".join(train_index.classes[:10]) + (f", ... ({len(train_index.classes)} classes)"
                                                   if len(train_index.classes) > 10 else "")
    log.print(f"training {cfg.model} on {len(train_index)} images ({names}), "
              f"{plan.iters_per_epoch} batches of {cfg.batch_size} per epoch"
              f"{f' x {info.world_size} ranks' if info.enabled else ''}, lr {lr:g}, device {device}, "
              f"threads {torch.get_num_threads()}; outputs in {run_dir}")
    return TrainRun(cfg, info, device, run_dir, log, task, model, train_model, optimizer, ema, scaler, plan, lr,
                    sampler, loader, val_index, sizes, state)


def find_resume(cfg: TrainConfig, run_dir: Path, log: MetricsLog) -> dict[str, Any] | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = ckpt.find_resume(run_dir, log=log.print)
        if found is None:
            log.print(f"--resume auto: no checkpoint in {run_dir} yet; starting from scratch")
            return None
        log.print(f"resuming from {found[0]} (epoch {found[1]['epoch']}, iteration {found[1]['iteration']})")
        return found[1]
    state = ckpt.load_checkpoint(cfg.resume)
    if not ckpt.is_boxforge_checkpoint(state):
        raise BoxforgeError(f"{cfg.resume}: not a boxforge training checkpoint; use --weights for plain weights")
    return state
