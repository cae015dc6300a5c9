"""Shared fixtures: a synthetic set, a briefly trained ssd_tiny (once per session) and hand-made checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import boxforge
from boxforge.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from boxforge.data.synth import synthesize_detection
from boxforge.models import get_model

IMG_SIZE = 128


def checkpoint_dict(model: torch.nn.Module, *, ema: dict | None = None, task: str = "detect") -> dict:
    """The keys the engine writes (checkpoint.training_state) that inference reads."""
    return {"format": CHECKPOINT_FORMAT, "task": task, "model_name": model.name,
            "class_names": list(model.class_names), "img_size": int(model.img_size), "config": {},
            "build_args": dict(model.build_args), "model": model.state_dict(), "ema": ema,
            "epoch": 1, "iteration": 0, "global_step": 1}


def untrained(img_size: int = 96, classes: tuple[str, ...] = ("circle", "square", "triangle"),
              seed: int = 0) -> torch.nn.Module:
    """An ssd_tiny with a random classification bias, so that scores differ between anchors and classes."""
    torch.manual_seed(seed)
    model = get_model("ssd_tiny", num_classes=len(classes), class_names=list(classes), img_size=img_size)
    with torch.no_grad():
        for layer in model.model.head.classification_head.module_list:
            layer.bias.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images, 3 classes, VOC root with train/test splits (test: 2 images)."""
    root = tmp_path_factory.mktemp("inference") / "synth"
    synthesize_detection(root, images=12, classes=3, seed=0, image_size=(160, 120))
    return root


@pytest.fixture(scope="session")
def trained(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.pt of a 40-step ssd_tiny run at 128 px (about 10 s on 2 cores): weak, but no longer uniform."""
    out = tmp_path_factory.mktemp("run") / "train"
    result = boxforge.train(data=str(synth), out=str(out), model="ssd_tiny", iterations=40, img_size=IMG_SIZE, batch_size=8,
                            threads=2, seed=0, report=False)
    assert result.last is not None
    return result.last


@pytest.fixture
def untrained_ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(checkpoint_dict(untrained()), tmp_path / "untrained.pt")


@pytest.fixture(scope="session")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained checkpoint exported with a dynamic batch (parity-checked by the export itself)."""
    from boxforge.api import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(trained, out, dynamic_batch=True)
    assert report.parity is not None and report.parity.ok, report.summary()
    return out
