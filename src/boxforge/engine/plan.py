"""`train --plan`: what a run would do and what it would cost, shown before committing 15 minutes or 15 hours.

The plan names the dataset's facts that drove the recipe, the recipe itself with one line of reason per
choice (model, input size, batch and learning rate, optimizer / EMA / autocast, augmentation, cache,
threads, validation), then measures: a few real training steps of exactly this run on this machine (the
engine's own loop, in a temporary folder) give images per second, so the epochs that fit in `--time`
(or the time `--epochs` needs) and the process's peak memory. Warnings say where the budget is short for
the data or a class has too few examples to learn. Every normal run prints the same reasons and warnings
at its start (without the measurement).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import resource
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxforge.config import TrainConfig
from boxforge.data.index import DatasetIndex
from boxforge.data.splits import TrainVal

MIN_EPOCHS = 30  # fewer passes than this over a small set leaves a detector under-trained
MIN_CLASS_BOXES = 10  # a class with fewer training boxes is unlikely to be learned
TINY_PX = 8.0  # boxes smaller than this at the input size are hard for a stride-8 map
WARMUP, MEASURED = 2, 6  # steps: the first ones pay for start-up and are left out
# A window shorter than this is re-measured longer: a busy machine makes short windows noisy (4 s windows on a
# shared 2-core CI machine read 0.79x the run's own rate once; 8 s costs a plan 4 s more, still well under a minute).
MEASURE_S = 8.0
MAX_STEPS = 200  # ... but never with more steps than this


@dataclass
class TrainPlan:
    model: str
    img_size: int | None
    batch_size: int
    img_s: float | None = None
    measured_steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    peak_memory_mb: float | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = ["plan:"] + [f"  {r}" for r in self.reasons]
        if self.img_s is not None:
            cost = (f"about {self.epochs:.0f} epochs fit in {self.minutes:g} min" if self.epochs is not None
                    else f"the run needs about {self.minutes:.1f} min")
            out.append(f"  measured: {self.img_s:.1f} img/s over {self.measured_steps} steps on this machine; {cost} "
                       f"(before validation); peak memory {self.peak_memory_mb:.0f} MB")
        return out + [f"  warning: {w}" for w in self.warnings]


def _facts(index: DatasetIndex) -> tuple[str, Counter[int]]:
    counts: Counter[int] = Counter()
    for s in index.samples:
        counts.update(s.labels.tolist() if index.task == "detect" else [s.label])
    boxes = sum(counts.values())
    rare = min(range(len(index.classes)), key=lambda c: counts.get(c, 0)) if index.classes else None
    line = (f"data: {len(index)} training images, {boxes} boxes ({boxes / max(len(index), 1):.1f} per image), "
            f"{len(index.classes)} classes" + (f"; the rarest, {index.classes[rare]}, has {counts.get(rare, 0)}"
                                               if rare is not None and len(index.classes) > 1 else ""))
    return line, counts


def describe(cfg: TrainConfig, chosen: TrainVal, img_size: int | None, size_reason: str | None) -> TrainPlan:
    """The recipe and its reasons, and the warnings the data gives (no measurement)."""
    from boxforge.models import MODELS

    spec = MODELS[cfg.model]
    facts, counts = _facts(chosen.train)
    plan = TrainPlan(cfg.model, img_size, cfg.batch_size, reasons=[*chosen.summary(), facts])
    recipe = ", ".join(f"{k} {v}" for k, v in spec.recipe.items()) or "none"
    plan.reasons.append(f"model {cfg.model} ({spec.task}); its own recipe: {recipe}")
    if img_size is not None:
        plan.reasons.append(f"input {img_size} px" + (f": {size_reason}" if size_reason else ""))
    plan.reasons.append(f"batch {cfg.batch_size}, {cfg.optimizer}, lr "
                        f"{'%g' % cfg.lr if cfg.lr else 'default (scaled to the global batch)'}, "
                        f"{cfg.schedule} schedule with {cfg.warmup:.0%} warm-up; EMA {'on' if cfg.ema else 'off'}, "
                        f"autocast {'on' if cfg.amp else 'off'}")
    plan.reasons.append(f"augmentation: mosaic {cfg.mosaic:g}, multi-scale {cfg.multi_scale or 'off'}; "
                        f"cache {cfg.cache}")
    plan.reasons.append("validation: " + (f"{len(chosen.val)} images, every 5% of the run"
                                          if chosen.val is not None else "none (best.pt will be the last weights)"))
    for c, name in enumerate(chosen.train.classes):
        if len(chosen.train.classes) > 1 and counts.get(c, 0) < MIN_CLASS_BOXES:
            plan.warnings.append(f"class {name} has {counts.get(c, 0)} training boxes (< {MIN_CLASS_BOXES}): expect "
                                 "a low AP for it; more examples help more than more epochs")
    if img_size is not None:
        tiny = _tiny_share(chosen.train, img_size)
        if tiny > 0.1:
            plan.warnings.append(f"{tiny:.0%} of the boxes are under {TINY_PX:g} px at {img_size} px input: "
                                 "a larger --img-size would keep them")
    return plan


def _tiny_share(index: DatasetIndex, size: int) -> float:
    from boxforge.models.anchors import relative_box_shapes

    wh = relative_box_shapes(index)
    return float((wh.min(axis=1) * size < TINY_PX).mean()) if len(wh) else 0.0


def _trial(cfg: TrainConfig, chosen: TrainVal, measured: int) -> tuple[float, float, int]:
    """Train WARMUP + `measured` real steps of this run in a temporary folder: (img/s, seconds measured, img size)."""
    from boxforge.checkpoint import load_checkpoint
    from boxforge.engine.fit import fit

    with tempfile.TemporaryDirectory(prefix="boxforge-plan-") as tmp:
        trial = dataclasses.replace(cfg, out=tmp, iterations=WARMUP + measured, time=None, epochs=None, resume=None,
                                    report=False, log_every=10**9, save_every=0, snapshot_every=0,
                                    snapshot_every_epochs=0, tensorboard=False)
        with contextlib.redirect_stdout(io.StringIO()):  # the trial's own log lines are not the plan
            result = fit(trial, data=TrainVal(chosen.train, None, chosen.train_sources, []))
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        built = int(load_checkpoint(result.last)["img_size"])
    steps = [r for r in records if r.get("type") == "train"]
    first, last = steps[WARMUP - 1], steps[-1]
    seconds = max(last["time"] - first["time"], 1e-9)
    return (last["images_seen"] - first["images_seen"]) / seconds, seconds, built


def measure(cfg: TrainConfig, chosen: TrainVal, plan: TrainPlan) -> TrainPlan:
    """Add the measured img/s, epochs (or minutes) and peak memory from real steps of this very run.

    WARMUP + MEASURED steps first; when those few steps took under MEASURE_S (a small or fast model), a
    second trial runs as many steps as fill MEASURE_S (at most MAX_STEPS), so epoch boundaries and a busy
    neighbour weigh in the figure as they will in the run."""
    steps = MEASURED
    img_s, seconds, built = _trial(cfg, chosen, steps)
    if seconds < MEASURE_S:
        longer = min(MAX_STEPS, int(MEASURE_S * img_s / cfg.batch_size) + 1)
        if longer > steps:
            steps = longer
            img_s, seconds, built = _trial(cfg, chosen, steps)
    plan.img_s, plan.measured_steps = img_s, steps
    plan.img_size = plan.img_size or built
    plan.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_epoch = len(chosen.train) / plan.img_s
    if cfg.time:
        plan.minutes, plan.epochs = cfg.time, cfg.time * 60 / per_epoch
        if plan.epochs < MIN_EPOCHS:
            plan.warnings.append(f"--time {cfg.time:g} fits only about {plan.epochs:.0f} epochs (< {MIN_EPOCHS}): "
                                 f"the model will be under-trained; about {MIN_EPOCHS * per_epoch / 60:.0f} min "
                                 f"would give {MIN_EPOCHS}")
    else:
        epochs = cfg.epochs or (cfg.iterations * cfg.batch_size / len(chosen.train) if cfg.iterations else 30)
        plan.minutes = epochs * per_epoch / 60
    return plan


def plan_training(cfg: TrainConfig) -> TrainPlan:
    """The plan of `cfg` (see the module docstring), measured."""
    from boxforge.data.splits import load_train_val
    from boxforge.models.input_size import auto_img_size

    chosen = load_train_val(cfg.data if len(cfg.data) > 1 else cfg.data[0], split=cfg.split, val=cfg.val,
                            format=cfg.format, allow_overlap=cfg.allow_overlap)
    size, reason = cfg.img_size, None
    if cfg.img_size == "auto":
        size, reason = auto_img_size(chosen.train)
    plan = describe(cfg, chosen, size if isinstance(size, int) else None, reason)
    return measure(cfg, chosen, plan)
