"""Run settings: one dataclass, loaded from YAML, overridden from the CLI, saved as RUN_DIR/config.yaml.

The YAML only sets defaults (as timm does): anything given on the command line wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from boxforge.errors import BoxforgeError
from boxforge.files import atomic_write
from boxforge.models.registry import DEFAULT_MODEL, MODELS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda")
ANCHORS = ("default", "auto")
AUTO_AUGMENTS = ("autoaugment", "randaugment", "trivialaugment", "augmix")  # as data/transforms.py
GPU_AUGMENTS = ("auto", "on", "off")  # --gpu-augment (engine/tasks.py augment_on_device)
MULTI_SCALE_DEFAULT = (0.7, 1.3)  # --multi-scale alone: darknet's random=1 spread (engine/multiscale.py)


@dataclass
class TrainConfig:
    """Every training setting with its default. Units are in the names (minutes, seconds, iterations)."""

    data: list[str] = field(default_factory=list)
    split: str | None = None
    val: str | None = None
    allow_overlap: bool = False  # train even when the validation set shares images with the training set
    format: str | None = None
    model: str = DEFAULT_MODEL
    task: str | None = None
    out: str = "runs/train"
    epochs: int | None = None
    iterations: int | None = None
    time: float | None = None  # minutes of wall clock for the whole run
    batch_size: int = 16
    lr: float | None = None  # None: optimizer default scaled by batch size
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of the run (multistep)
    gamma: float = 0.1
    warmup: float = 0.03  # fraction of the run spent in linear warm-up
    img_size: int | str | None = None  # None: the model's; "auto": from the training boxes (models/input_size.py)
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    amp: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    accumulate: int = 1
    clip_grad: float | None = 10.0
    weights: str | None = None
    weights_backbone: str | None = None
    freeze: str | None = None
    resume: str | None = None
    save_every: int = 0  # iterations between last.pt saves inside an epoch (0: only at epoch end)
    snapshot_every: int = 0  # iterations between kept step-N.pt snapshots (0: none)
    snapshot_every_epochs: int = 0  # epochs between kept epoch-N.pt snapshots (0: none)
    keep: int = 3
    best_metric: str = "voc12"  # detectors: what chooses best.pt: voc12, coco (AP) or fitness (0.1 AP50 + 0.9 AP)
    val_every: int | None = None  # epochs; None: each epoch ending 5% of the run after the last validation
    stall_timeout: float = 300.0
    on_disk_full: str = "stop"  # a checkpoint save that finds the disk full: "stop" the run, or "continue" unsaved
    log_every: int = 10
    max_nonfinite: int = 5
    threads: int | str | None = None  # None: the core share (bit-identical); "auto": less the busy cores
    strict_data: bool = False
    tensorboard: bool = False  # also log metrics.jsonl's scalars to RUN_DIR/tensorboard (optional package)
    report: bool = True  # write RUN_DIR/report.html when the run ends (main rank)
    anchors: str = "default"  # or "auto": default boxes fitted to the training boxes (k-means, 1 - IoU)
    deterministic: bool = False  # deterministic kernels, no cuDNN autotuning (engine/setup.py kernel_choice)
    channels_last: bool = True  # detectors' weights in channels-last memory (faster steps; models/detector.py)
    keep_memory: bool = True  # CPU: glibc malloc keeps freed blocks, no page faults per step (engine/malloc.py)
    sync_bn: bool = False  # torchrun: BatchNorm statistics over all ranks (torchvision references' --sync-bn)
    mosaic: float = 0.0  # detectors: probability that a training sample is a 4-image mosaic (data/mosaic.py)
    # detectors: the SSD augmentation applied on the training device, workers only drawing its parameters
    # (data/device_augment.py): "on", "off", or "auto" (on with CUDA and no --mosaic; off on CPU)
    gpu_augment: str = "auto"
    cache: str = "auto"  # "ram" / "auto" (when it fits in 10% of RAM) / "off": decoded images in memory (data/cache.py)
    # detectors: [min, max] fractions of img_size; each batch trains at a size drawn from the multiples of 32 between
    # (engine/multiscale.py); None (or False): off; True: MULTI_SCALE_DEFAULT, written out by validate()
    multi_scale: list[float] | None = None
    # Classification recipe (torchvision references/classification); ignored by detectors.
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0: off
    cutmix_alpha: float = 0.0  # 0: off; with both on, each batch uses one of the two
    auto_augment: str | None = None  # autoaugment, randaugment, trivialaugment, augmix
    random_erase: float = 0.0  # probability of RandomErasing per image
    crop_scale: float = 0.08  # smallest image-area fraction RandomResizedCrop keeps (torchvision: 0.08)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BoxforgeError(f"--optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise BoxforgeError(f"--schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise BoxforgeError(f"--device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if sum(x is not None for x in (self.epochs, self.iterations, self.time)) > 1:
            raise BoxforgeError("give at most one of --epochs, --iterations, --time")
        if self.task not in (None, "detect", "classify"):
            raise BoxforgeError(f"--task {self.task!r}; choose one of: detect, classify")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.random_erase <= 1.0:
            raise BoxforgeError(f"--label-smoothing {self.label_smoothing} must be in [0, 1) and "
                                f"--random-erase {self.random_erase} in [0, 1]")
        if self.auto_augment not in (None, *AUTO_AUGMENTS):
            raise BoxforgeError(f"--auto-augment {self.auto_augment!r}; choose one of: {', '.join(AUTO_AUGMENTS)}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise BoxforgeError(f"--crop-scale {self.crop_scale}: allowed 0 < scale <= 1")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise BoxforgeError("--mixup-alpha and --cutmix-alpha must be >= 0 (0 turns them off)")
        if self.anchors not in ANCHORS:
            raise BoxforgeError(f"--anchors {self.anchors!r}; choose one of: {', '.join(ANCHORS)}")
        if self.on_disk_full not in ("stop", "continue"):
            raise BoxforgeError(f"--on-disk-full {self.on_disk_full!r}; choose one of: stop, continue")
        if not 0.0 <= self.mosaic <= 1.0:
            raise BoxforgeError(f"--mosaic {self.mosaic}: a probability, allowed 0 <= p <= 1")
        if self.gpu_augment not in GPU_AUGMENTS:
            raise BoxforgeError(f"--gpu-augment {self.gpu_augment!r}; choose one of: {', '.join(GPU_AUGMENTS)}")
        if self.cache not in ("ram", "auto", "off"):
            raise BoxforgeError(f"--cache {self.cache!r}; choose one of: ram, auto, off")
        self._check_multi_scale()
        if self.img_size is not None and self.img_size != "auto" and (
                isinstance(self.img_size, bool) or not isinstance(self.img_size, int) or self.img_size < 32):
            raise BoxforgeError(f"--img-size {self.img_size!r}; allowed: an integer >= 32 or auto")
        if self.threads is not None and self.threads != "auto" and (
                isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise BoxforgeError(f"--threads {self.threads!r}; allowed: an integer >= 1 or auto")
        if self.best_metric not in ("voc12", "coco", "fitness"):
            raise BoxforgeError(f"--best-metric {self.best_metric!r}; choose one of: voc12, coco, fitness")
        if self.freeze not in (None, "backbone"):
            raise BoxforgeError(f"--freeze {self.freeze!r}; the only choice is: backbone")
        if self.snapshot_every < 0 or self.snapshot_every_epochs < 0:
            raise BoxforgeError("--snapshot-every and --snapshot-every-epochs must be >= 0 (0: no snapshots)")
        for name in ("batch_size", "accumulate", "keep", "val_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BoxforgeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.data:
            raise BoxforgeError("--data is required: a dataset folder or file")

    def _check_multi_scale(self) -> None:
        """multi_scale: None (off), True (the default range, written out) or [min, max] with 0 < min <= 1 <= max."""
        if self.multi_scale is True:
            self.multi_scale = list(MULTI_SCALE_DEFAULT)
        if self.multi_scale is None or self.multi_scale is False:
            self.multi_scale = None
            return
        pair = self.multi_scale
        ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair))
        if not ok or not 0 < pair[0] <= 1 <= pair[1] <= 4:
            raise BoxforgeError(f"--multi-scale {pair!r}: give MIN:MAX, fractions of the input size with "
                                f"0 < MIN <= 1 <= MAX <= 4 (e.g. 0.5:1.5), or no value for "
                                f"{MULTI_SCALE_DEFAULT[0]}:{MULTI_SCALE_DEFAULT[1]}")
        self.multi_scale = [float(pair[0]), float(pair[1])]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# The recipe each model was designed with (its ModelSpec's, models/registry.py), used where neither the
# command line nor the YAML file says otherwise. "auto" for amp: bfloat16 autocast on CUDA or a CPU with AMX
# (fast_autocast), elsewhere float32, which measured faster there; img_size "auto": from the
# training boxes (models/input_size.py), resolved when the data is loaded.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(s.recipe) for name, s in MODELS.items() if s.recipe}


def fast_autocast() -> bool:
    """True where --amp pays: a CUDA device, or a CPU with AMX (Intel's bfloat16 matrix tiles).

    AVX512-BF16 alone is not enough. bench/step_speed.py on a 2-core Xeon with AVX512-BF16 and no AMX
    (2026-12-01) measured bf16 autocast at 0.78-0.90x of fp32 for all four detectors (yolo_csp
    channels-last 17.9 vs 20.6 img/s), where a CPU of this workplace on 2026-11-27 (flags not recorded)
    measured 1.5-2.2x for the dense models. Without AMX the default stays float32: faster and exact.
    """
    import torch

    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: float32, never the slow path
        return False


def load_yaml_defaults(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML file; unknown keys are an error that lists the known ones."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BoxforgeError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise BoxforgeError(f"{path}: a config file is a mapping of setting: value")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise BoxforgeError(f"{path}: unknown settings {unknown}; known: {', '.join(sorted(FIELDS))}")
    if isinstance(doc.get("data"), str):
        doc["data"] = [doc["data"]]
    return doc


def make_config(overrides: dict[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < the model's MODEL_DEFAULTS < YAML file < explicit overrides (None values: "not given")."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_yaml_defaults(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None and k in FIELDS})
    for key, value in MODEL_DEFAULTS.get(values.get("model", TrainConfig.model), {}).items():
        if key not in values:
            values[key] = fast_autocast() if (key, value) == ("amp", "auto") else value
    if isinstance(values.get("data"), (str, Path)):
        values["data"] = [str(values["data"])]
    values["data"] = [str(d) for d in values.get("data", [])]
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
