"""`fit()`: one training run, start to end: device, threads, process group, then `prepare_run`
(engine/setup.py) builds the run's parts and `Loop` (engine/loop.py) trains them.

The engine never calls up: the run report is written by `api.train` after `fit` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from boxforge.config import TrainConfig
from boxforge.data.splits import TrainVal
from boxforge.engine import distributed
from boxforge.engine.logging import MetricsLog
from boxforge.engine.loop import Loop
from boxforge.engine.malloc import keep_freed_memory
from boxforge.devices import resolve_device
from boxforge.engine.setup import kernel_choice, prepare_run
from boxforge.engine.threads import set_threads
from boxforge.engine.watchdog import EXIT_STALL, Watchdog
from boxforge.errors import TrainingError


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
    is_main: bool = True  # rank 0 (or no torchrun): the process that wrote the files
    device: torch.device | None = None


def fit(cfg: TrainConfig, *, local_rank: int | None = None, data: TrainVal | None = None) -> TrainResult:
    """Train a detector or a classifier as `cfg` says; returns where the outputs are. See README "Training".

    local_rank: torch.distributed.launch's `--local-rank`, for when the environment has no LOCAL_RANK
    (a launch detail, not a setting: it is not part of `cfg`, so not in config.yaml or checkpoints).
    data: training and validation sets chosen by the caller (`boxforge audit`'s folds) instead of by the
    split policy from `cfg.data`.
    """
    info = distributed.from_env(local_rank)
    device = resolve_device(cfg.device, local_rank=info.local_rank)
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
            result = _fit(cfg, info, device, run_dir, log, data)
    except Exception as exc:
        lost = distributed.lost_peer(exc, info)
        if lost is None:
            raise
        raise lost from exc
    finally:
        log.close()
        distributed.shutdown()
    return result


def _fit(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, run_dir: Path,
         log: MetricsLog, data: TrainVal | None) -> TrainResult:
    parts = prepare_run(cfg, info, device, run_dir, log, data)
    loop = Loop(parts)
    with Watchdog(cfg.stall_timeout, run_dir if info.is_main else None) as watchdog:
        loop.watchdog = watchdog
        stopped_by = loop.run(parts.state)
    state, best = parts.state, run_dir / "best.pt"
    return TrainResult(run_dir, state.epoch, state.global_step, state.best_metric,
                       run_dir / "last.pt" if (run_dir / "last.pt").exists() else None,
                       best if best.exists() else None, stopped_by, parts.task.best_label, info.is_main, device)


__all__ = ["EXIT_STALL", "TrainResult", "TrainingError", "fit"]
