"""`fit()`: the training loop, readable top to bottom, calling small helpers.

One pass of the loop: take a batch (watchdog stage "waiting for data"), set the
learning rate from run progress, forward under autocast, skip non-finite losses,
backward, clip, step, update the EMA, log, save when due. At epoch end: save
last.pt, validate, keep best.pt. Exact resume rests on three things: the
sampler's order and per-sample seeds depend only on (seed, epoch, index); every
piece of state (model, optimizer, scaler, EMA, position, RNG) is in the
checkpoint; and the learning rate is a function of the step, not of a stateful
scheduler. (--multi-scale's input size per batch is, likewise, a function of (seed,
epoch, iteration): engine/multiscale.py.)
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from boxforge import checkpoint as ckpt
from boxforge.config import TrainConfig, save_config
from boxforge.data.loading import make_loader
from boxforge.engine import distributed
from boxforge.engine.ema import ema_update_fn
from boxforge.engine.logging import MetricsLog
from boxforge.engine.malloc import keep_freed_memory
from boxforge.engine.multiscale import TrainSizes, describe as describe_sizes, train_sizes
from boxforge.engine.sampler import ResumableSampler, SeededDataset
from boxforge.engine.schedule import lr_factor
from boxforge.engine.setup import (Plan, build_model, build_optimizer, default_lr, fitted_anchors, input_size,
                                   kernel_choice, load_train_val, make_plan, resolve_device)
from boxforge.engine.sync_bn import convert_sync_bn
from boxforge.engine.tasks import Task, check_index_task, make_task
from boxforge.engine.threads import keep_checkpoint_threads, set_threads
from boxforge.engine.watchdog import EXIT_STALL, Watchdog, dead_worker
from boxforge.errors import BoxforgeError


VAL_FRACTION = 0.05  # default validation interval: this share of the run


class TrainingError(BoxforgeError):
    """Training cannot go on (non-finite losses, data loader failure); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float | None
    last: Path | None
    best: Path | None
    stopped_by: str
    best_label: str = "VOC12 mAP"  # what best_metric is: "VOC12 mAP" (detect) or "Acc@1" (classify, percent)


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


def fit(cfg: TrainConfig, *, local_rank: int | None = None) -> TrainResult:
    """Train a detector or a classifier as `cfg` says; returns where the outputs are. See README "Training".

    local_rank: torch.distributed.launch's `--local-rank`, for when the environment has no LOCAL_RANK
    (a launch detail, not a setting: it is not part of `cfg`, so not in config.yaml or checkpoints).
    """
    info = distributed.from_env(local_rank)
    device = resolve_device(cfg.device, info)
    threads_note = set_threads(cfg, info, device)
    if cfg.keep_memory and device.type == "cpu":
        keep_freed_memory()  # process-wide and lasting: see engine/malloc.py
    distributed.init(info, device, cfg.stall_timeout)
    run_dir = Path(cfg.out)
    log = MetricsLog(run_dir if info.is_main else None, enabled=info.is_main, tensorboard=cfg.tensorboard)
    if threads_note:
        log.print(threads_note)
    try:
        with kernel_choice(cfg, device):
            result = _fit(cfg, info, device, run_dir, log)
    except Exception as exc:
        lost = distributed.lost_peer(exc, info)
        if lost is None:
            raise
        raise lost from exc
    finally:
        log.close()
        distributed.shutdown()
    if info.is_main and cfg.report:
        _write_report(run_dir, device)
    return result


def _write_report(run_dir: Path, device: torch.device) -> None:
    """RUN_DIR/report.html once the checkpoints are safely written; any failure here is only a warning,
    because a finished run must never be lost to its report (`boxforge plot RUN_DIR --report` retries)."""
    try:
        from boxforge.report import write_report

        print(f"report written to {write_report(run_dir, device=str(device))}", flush=True)
    except Exception as exc:  # noqa: BLE001 - deliberately broad: see the docstring
        print(f"warning: could not write {run_dir / 'report.html'}: {type(exc).__name__}: {exc}; "
              f"the checkpoints are intact; retry with: boxforge plot {run_dir} --report", file=sys.stderr, flush=True)


def _fit(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, run_dir: Path,
         log: MetricsLog) -> TrainResult:
    resume = _find_resume(cfg, run_dir, log)
    if resume is not None and (note := keep_checkpoint_threads(cfg, resume.get("threads"))):
        log.print(note)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    chosen = load_train_val(cfg)
    train_index, val_index = chosen.train, chosen.val
    for line in chosen.summary() + chosen.notes:
        log.print(line)
    task = make_task(cfg, train_index.classes)
    for what, index in (("training", train_index), ("validation", val_index)):
        if index is not None:
            check_index_task(task, index, what)
    model = build_model(cfg, train_index.classes, resume, log, fitted_anchors(cfg, train_index, resume, log),
                        input_size(cfg, train_index, task, log) if resume is None else None)
    sizes = train_sizes(cfg.multi_scale, model, cfg.seed)
    if sizes is not None:
        log.print(describe_sizes(sizes, int(model.img_size), cfg.multi_scale))
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        (run_dir / "splits.json").write_text(json.dumps(chosen.to_json()) + "\n", encoding="utf-8")
    sampler = ResumableSampler(len(train_index), batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                               rank=info.rank, world_size=info.world_size)
    dataset = SeededDataset(task.train_dataset(train_index, int(model.img_size)))
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
        state = _restore(resume, model, optimizer, ema, scaler)
    train_model: nn.Module = DistributedDataParallel(model) if info.enabled else model
    plan = make_plan(cfg, sampler.batches_per_epoch())
    names = ", ".join(train_index.classes[:10]) + (f", ... ({len(train_index.classes)} classes)"
                                                   if len(train_index.classes) > 10 else "")
    log.print(f"training {cfg.model} on {len(train_index)} images ({names}), "
              f"{plan.iters_per_epoch} batches of {cfg.batch_size} per epoch"
              f"{f' x {info.world_size} ranks' if info.enabled else ''}, lr {lr:g}, device {device}, "
              f"threads {torch.get_num_threads()}; outputs in {run_dir}")
    loop = _Loop(cfg, info, device, run_dir, log, model, train_model, optimizer, ema, scaler, plan, lr,
                 sampler, loader, val_index, sizes)
    with Watchdog(cfg.stall_timeout, run_dir if info.is_main else None) as watchdog:
        loop.watchdog = watchdog
        stopped_by = loop.run(state)
    best = run_dir / "best.pt"
    return TrainResult(run_dir, state.epoch, state.global_step, state.best_metric,
                       run_dir / "last.pt" if (run_dir / "last.pt").exists() else None,
                       best if best.exists() else None, stopped_by, task.best_label)


def _find_resume(cfg: TrainConfig, run_dir: Path, log: MetricsLog) -> dict[str, Any] | None:
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


def checkpoint_state(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None,
                     scaler: torch.amp.GradScaler, state: State) -> dict[str, Any]:
    """Everything needed to continue exactly (and to use the model alone: names, size, config)."""
    return {
        "format": ckpt.CHECKPOINT_FORMAT, "task": getattr(model, "task", "detect"), "model_name": cfg.model,
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


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None,
             scaler: torch.amp.GradScaler) -> State:
    if list(saved.get("class_names", [])) != list(model.class_names):
        raise BoxforgeError(f"checkpoint classes {saved.get('class_names')} differ from the dataset's "
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


class _Loop:
    """The epoch/iteration loop and its bookkeeping; `run()` is the whole story."""

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, run_dir: Path,
                 log: MetricsLog, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: AveragedModel | None, scaler: torch.amp.GradScaler, plan: Plan, base_lr: float,
                 sampler: ResumableSampler, loader: Any, val_index: Any, sizes: TrainSizes | None = None) -> None:
        self.cfg, self.info, self.device, self.run_dir, self.log = cfg, info, device, run_dir, log
        self.model, self.train_model, self.optimizer, self.ema, self.scaler = model, train_model, optimizer, ema, scaler
        self.plan, self.base_lr, self.sampler, self.loader, self.val_index = plan, base_lr, sampler, loader, val_index
        self.sizes = sizes  # --multi-scale: each batch's input size, a function of (seed, epoch, iteration)
        self.watchdog: Watchdog | None = None
        self.task: Task = make_task(cfg, list(model.class_names))
        self.amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if cfg.amp else None

    def run(self, state: State) -> str:
        self.state = state
        self.validated_at: int | None = None
        self.validated_progress = self._progress()
        self.clock = time.perf_counter()  # elapsed_seconds runs from here, across epochs and validations
        try:
            while not self.plan.done(state.global_step, state.elapsed_seconds, state.epoch):
                finished = self._epoch()
                if not finished:
                    break
                state.epoch += 1
                state.iteration = 0
                self._save("last.pt")
                self._epoch_snapshot()
                if self.val_index is not None and self._validation_due():
                    self._validate()
            if self.val_index is not None and self.validated_at != state.global_step:
                self._validate()
            if self.val_index is None:
                self._save("best.pt")  # nothing to choose by: the last weights, as the start-up warning said
        except KeyboardInterrupt:
            self.log.print("interrupted: saving last.pt before exiting")
            self._save("last.pt")
            raise
        return "budget"

    def _progress(self) -> float:
        """Fraction of the run done: steps of the planned total, or seconds of the --time budget."""
        return self.plan.progress(self.state.global_step, self.state.elapsed_seconds)

    def _tick_clock(self) -> None:
        now = time.perf_counter()
        self.state.elapsed_seconds += now - self.clock
        self.clock = now

    def _validation_due(self) -> bool:
        """--val-every N epochs; by default every epoch that ends 5% of the run after the last validation,
        so a long run on a small set validates about 20 times rather than every few seconds."""
        if self.cfg.val_every:
            return self.state.epoch % self.cfg.val_every == 0
        return self._progress() - self.validated_progress >= VAL_FRACTION - 1e-9

    def _beat(self, stage: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(stage)

    def _epoch(self) -> bool:
        """One epoch from `state.iteration`; False when the run's budget ended inside it."""
        state, cfg = self.state, self.cfg
        self.sampler.set_epoch(state.epoch, state.iteration)
        self.model.train()
        consecutive_bad = 0
        tick = time.perf_counter()
        self._tick_clock()
        self._beat("waiting for data")
        for images, targets in _guarded(self.loader, self):
            self._beat("in the training step")
            losses, ok = self._step(images, targets)
            now = time.perf_counter()
            state.train_seconds += now - tick
            tick = now
            self._tick_clock()
            state.iteration += 1
            if not ok:
                consecutive_bad += 1
                state.nonfinite_total += 1
                if consecutive_bad >= cfg.max_nonfinite:
                    raise TrainingError(f"{consecutive_bad} non-finite losses in a row "
                                        f"({self.task.describe_batch(targets)}); "
                                        f"stopping; the last good checkpoint is {self.run_dir / 'last.pt'}")
            else:
                consecutive_bad = 0
                self._after_step(losses, len(targets))
            if self.plan.done(state.global_step, state.elapsed_seconds, state.epoch):
                self._save("last.pt")
                return state.iteration >= self.plan.iters_per_epoch
            self._beat("waiting for data")
        return True

    def _step(self, images: Any, targets: list[dict[str, Any]]) -> tuple[dict[str, float], bool]:
        state, cfg = self.state, self.cfg
        self.stepped = False  # set when this batch completes an optimizer step (--accumulate groups)
        lr = self.base_lr * lr_factor(self._progress(),
                                      schedule=cfg.schedule, warmup=cfg.warmup, milestones=cfg.milestones,
                                      gamma=cfg.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr
        images, targets = self.task.to_device(images, targets, self.device)
        size = self.sizes.at(state.epoch, state.iteration) if self.sizes is not None else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss_dict = self.task.losses(self.train_model, images, targets, size=size)
        loss = sum(loss_dict.values()) / cfg.accumulate
        if not distributed.all_true(bool(torch.isfinite(loss)), self.info, self.device):  # ranks skip together
            self.optimizer.zero_grad(set_to_none=True)
            return {}, False
        self.scaler.scale(loss).backward()
        if (state.iteration + 1) % cfg.accumulate == 0 or state.iteration + 1 == self.plan.iters_per_epoch:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            state.global_step += 1
            self.stepped = True
        return {k: float(v.detach()) for k, v in loss_dict.items()}, True

    def _after_step(self, losses: dict[str, float], batch: int) -> None:
        state, cfg = self.state, self.cfg
        state.images_seen += batch * self.info.world_size
        losses = distributed.all_reduce_mean(losses, self.info, self.device)
        rate = state.images_seen / max(state.train_seconds, 1e-9)
        eta = None
        if self.plan.budget_s:
            eta = max(0.0, self.plan.budget_s - state.elapsed_seconds)
        elif self.plan.total_steps:
            eta = (self.plan.total_steps - state.global_step) * state.train_seconds / max(state.global_step, 1)
        self.log.step(epoch=state.epoch, iteration=state.iteration, iters_per_epoch=self.plan.iters_per_epoch,
                      step=state.global_step, losses=losses, lr=self.lr, images_seen=state.images_seen,
                      img_per_s=rate, eta_s=eta, device=self.device,
                      log_line=state.iteration % cfg.log_every == 0 or state.iteration == self.plan.iters_per_epoch)
        if not self.stepped:  # inside an --accumulate group: step-numbered saves wait for its step
            return
        if cfg.save_every and state.global_step % cfg.save_every == 0 and state.iteration < self.plan.iters_per_epoch:
            self._save("last.pt")
        if cfg.snapshot_every and state.global_step % cfg.snapshot_every == 0:
            self._save(f"step-{state.global_step}.pt")
            if self.info.is_main:
                ckpt.prune_snapshots(self.run_dir, cfg.keep)

    def _epoch_snapshot(self) -> None:
        """epoch-N.pt every --snapshot-every-epochs N epochs, the newest --keep of them kept."""
        every = self.cfg.snapshot_every_epochs
        if every and self.state.epoch % every == 0:
            self._save(f"epoch-{self.state.epoch}.pt")
            if self.info.is_main:
                ckpt.prune_snapshots(self.run_dir, self.cfg.keep, kind="epoch")

    def _save(self, name: str) -> None:
        if not self.info.is_main:
            return
        self._beat("saving a checkpoint")
        try:
            ckpt.save_checkpoint(checkpoint_state(self.cfg, self.model, self.optimizer, self.ema, self.scaler,
                                                  self.state), self.run_dir / name)
        except ckpt.DiskFullError as exc:
            if self.cfg.on_disk_full != "continue":
                raise
            self.log.print(f"warning: {exc}; training continues (--on-disk-full continue)")

    def _validate(self) -> None:
        self._beat("in validation")
        self.validated_at = self.state.global_step
        self.validated_progress = self._progress()
        if self.info.is_main:
            eval_model = self.ema.module if self.ema is not None else self.model
            metrics = self.task.validate(eval_model, self.val_index, device=self.device,
                                         batch_size=self.cfg.batch_size, amp_dtype=self.amp_dtype)
            self.log.validation(epoch=self.state.epoch, step=self.state.global_step, metrics=metrics)
            score = metrics.get(self.task.best_key)
            if score is not None and math.isfinite(score) and (self.state.best_metric is None
                                                               or score > self.state.best_metric):
                self.state.best_metric = score
                self._save("best.pt")
                self.log.print(f"new best {self.task.best_label} {score:.4f}: saved best.pt")
        distributed.barrier(self.info)
        self._beat("waiting for data")


def _worker_problem(iterator: Any, wait_s: float = 0.0) -> str | None:
    """"data loading failed: worker N (pid P) killed by signal S", polling up to `wait_s` for the exit to show."""
    deadline = time.monotonic() + wait_s
    while True:
        dead = dead_worker(iterator)
        if dead or time.monotonic() >= deadline:
            return f"data loading failed: {dead}" if dead else None
        time.sleep(0.1)


def _guarded(loader: Any, loop: _Loop) -> Any:
    """Iterate the loader, turning worker deaths and data timeouts into the watchdog's clean exit."""
    iterator = iter(loader)
    if loop.watchdog is not None and loader.num_workers > 0 and not getattr(loop, "_probing", False):
        loop._probing = True  # workers persist across epochs: one probe is enough
        loop.watchdog.add_check(lambda: _worker_problem(getattr(loader, "_iterator", None)))
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (RuntimeError, ConnectionError, EOFError) as exc:
            if loader.num_workers == 0 or isinstance(exc, BoxforgeError):
                raise
            problem = _worker_problem(iterator, wait_s=3.0) or f"data loading failed: {str(exc).splitlines()[0]}"
            reason = f"boxforge: {problem}"
            if loop.watchdog is not None:
                loop.watchdog.abort(f"{reason}.")
            raise TrainingError(reason) from exc
        yield batch


__all__ = ["EXIT_STALL", "TrainResult", "TrainingError", "checkpoint_state", "fit"]
