"""Small classification runs: the synthetic shapes set, resnet18 at low resolution, two threads, CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from boxforge import api
from boxforge.data.synth import synthesize_classification
from boxforge.engine.fit import TrainResult


def train_settings(data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """Settings every classification test shares; `extra` overrides them."""
    return {"data": [str(data)], "out": str(out), "model": "resnet18", "img_size": 32, "batch_size": 8,
            "optimizer": "adamw", "crop_scale": 0.5, "device": "cpu", "threads": 2, "seed": 1, "log_every": 100,
            "report": False, **extra}


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images (48 train, 12 val), 3 classes, 64 px."""
    root = tmp_path_factory.mktemp("cls") / "small"
    synthesize_classification(root, images=60, classes=3, seed=5)
    return root


@pytest.fixture(scope="session")
def short_run(small_set: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Two epochs: a real checkpoint for eval, predict and export to work on (accuracy is not the point)."""
    out = tmp_path_factory.mktemp("cls-run") / "run"
    return api.train(**train_settings(small_set, out, epochs=2, ema=True))
