"""The training loop, readable top to bottom, calling small helpers.

One pass of the loop: take a batch (watchdog stage "waiting for data"), set the
learning rate from run progress, forward under autocast, skip non-finite losses,
backward, clip, step, update the EMA, log, save when due. At epoch end: save
last.pt, validate, keep best.pt. Exact resume rests on three things: the
sampler's order and per-sample seeds depend only on (seed, epoch, index); every
piece of state (model, optimizer, scaler, EMA, position, RNG) is in the
checkpoint (checkpoint.py); and the learning rate is a function of the step, not
of a stateful scheduler. (--multi-scale's input size per batch is, likewise, a
function of (seed, epoch, iteration): engine/multiscale.py.)
"""

from __future__ import annotations

import math
import time
from typing import Any, NoReturn

import torch
from torch import nn

from boxforge import checkpoint as ckpt
from boxforge.checkpoint import State
from boxforge.engine import distributed
from boxforge.engine.schedule import lr_factor
from boxforge.engine.setup import TrainRun
from boxforge.engine.watchdog import Watchdog, dead_worker
from boxforge.errors import BoxforgeError, TrainingError

VAL_FRACTION = 0.05  # default validation interval: this share of the run


class Loop:
    """The epoch/iteration loop and its bookkeeping; `run()` is the whole story."""

    def __init__(self, parts: TrainRun) -> None:
        self.cfg, self.info, self.device, self.run_dir, self.log = (parts.cfg, parts.info, parts.device,
                                                                    parts.run_dir, parts.log)
        self.model, self.train_model, self.optimizer = parts.model, parts.train_model, parts.optimizer
        self.ema, self.scaler, self.plan, self.base_lr = parts.ema, parts.scaler, parts.plan, parts.base_lr
        self.sampler, self.loader, self.val_index = parts.sampler, parts.loader, parts.val_index
        self.sizes = parts.sizes  # --multi-scale: each batch's input size, a function of (seed, epoch, iteration)
        self.task = parts.task
        self.watchdog: Watchdog | None = None
        self.amp_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if self.cfg.amp else None

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
        """One epoch from `state.iteration`, its progress shown by the log (a bar on a terminal); False when
        the run's budget ended inside it."""
        state, cfg = self.state, self.cfg
        self.sampler.set_epoch(state.epoch, state.iteration)
        self.model.train()
        consecutive_bad = 0
        tick = time.perf_counter()
        self._tick_clock()
        self._beat("waiting for data")
        with self.log.epoch(state.epoch, total=self.plan.iters_per_epoch, done=state.iteration):
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
            ckpt.save_checkpoint(ckpt.training_state(self.cfg, self.model, self.optimizer, self.ema, self.scaler,
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
                                         batch_size=self.cfg.batch_size)
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


def _guarded(loader: Any, loop: Loop) -> Any:
    """Iterate the loader, turning worker deaths and data timeouts into the watchdog's clean exit.

    `iter(loader)` is guarded as `next` is: with persistent workers, starting an epoch waits for every
    worker to acknowledge the reset, so a worker frozen at an epoch's end times out there (found by the
    stall tests with SIGSTOP landing at an epoch boundary: the RuntimeError escaped, and the interpreter's exit
    then waited forever on the frozen worker)."""
    try:
        iterator = iter(loader)
    except (RuntimeError, ConnectionError, EOFError) as exc:
        _data_failure(exc, getattr(loader, "_iterator", None), loader, loop)
    if loop.watchdog is not None and loader.num_workers > 0 and not getattr(loop, "_probing", False):
        loop._probing = True  # workers persist across epochs: one probe is enough
        loop.watchdog.add_check(lambda: _worker_problem(getattr(loader, "_iterator", None)))
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (RuntimeError, ConnectionError, EOFError) as exc:
            _data_failure(exc, iterator, loader, loop)
        yield batch


def _data_failure(exc: BaseException, iterator: Any, loader: Any, loop: Loop) -> NoReturn:
    """Re-raise `exc` where it is not the loader's (no workers, or boxforge's own error); otherwise end the run
    through the watchdog's clean exit with the dead worker or the timeout named."""
    if loader.num_workers == 0 or isinstance(exc, BoxforgeError):
        raise exc
    problem = _worker_problem(iterator, wait_s=3.0) or f"data loading failed: {str(exc).splitlines()[0]}"
    reason = f"boxforge: {problem}"
    if loop.watchdog is not None:
        loop.watchdog.abort(f"{reason}.")
    raise TrainingError(reason) from exc
