"""Out-of-fold predictions: every image predicted by a model trained without it (audit/folds.py's plan).

Each fold model is an ordinary training run of the engine (checkpoints, watchdog, logs) in
OUT/folds/fold-K, with `--resume auto`: an audit killed midway continues where it stopped, and a fold
whose held-out predictions are written (OUT/folds/fold-K/predictions.json) is not trained again.
The held-out images are predicted through inference's batch runner with `eval`'s post-processing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.audit.folds import FoldPlan
from boxforge.config import make_config
from boxforge.data.index import DatasetIndex
from boxforge.data.splits import TrainVal
from boxforge.evaluation.predictions import Predictions, load_predictions, save_predictions

FOLDS_DIR = "folds"


def fold_predictions(index: DatasetIndex, plan: FoldPlan, k: int, *, data: str, out: Path,
                     settings: dict[str, Any], log: Callable[[str], None] = print) -> Predictions:
    """The held-out predictions of fold k: read back when written, else a fold model trained and run."""
    from boxforge.engine.fit import fit
    from boxforge.inference.evaluate import model_predictions
    from boxforge.inference.load import load_model

    fold_dir = out / FOLDS_DIR / f"fold-{k}"
    done = fold_dir / "predictions.json"
    held = index.subset(np.flatnonzero(plan.folds == k), split=f"fold {k}")
    if done.is_file():
        log(f"fold {k + 1}/{plan.k}: predictions already written ({done}); not training again")
        return load_predictions(done, held)
    train = index.subset(np.flatnonzero(plan.folds != k), split=f"all folds but {k}")
    log(f"fold {k + 1}/{plan.k}: training on {len(train)} images for {plan.train_minutes:.1f} min, then predicting "
        f"the {len(held)} held out")
    cfg = make_config({**settings, "data": [data], "out": str(fold_dir), "time": plan.train_minutes, "resume": "auto",
                       "report": False})
    result = fit(cfg, data=TrainVal(train, None, [f"{data}: every fold but {k}"], []))
    preds, _, skipped = model_predictions(held, load_model(result.last, cfg.device).backend,
                                          batch_size=cfg.batch_size, workers=cfg.workers)
    for reason in skipped:
        log(f"fold {k + 1}: skipped {reason}")
    save_predictions(preds, index.classes, done)
    return preds


def out_of_fold(index: DatasetIndex, plan: FoldPlan, *, data: str, out: Path, settings: dict[str, Any],
                log: Callable[[str], None] = print) -> Predictions:
    """All images' out-of-fold predictions, labels indexing index.classes."""
    merged = Predictions(list(index.classes))
    for k in range(plan.k):
        for image_id, p in fold_predictions(index, plan, k, data=data, out=out, settings=settings,
                                            log=log).images.items():
            merged.add(image_id, p.boxes, p.scores, p.labels)
    return merged
