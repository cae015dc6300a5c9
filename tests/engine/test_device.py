"""Device choice and kernel flags: one GPU per local rank, cuDNN autotuning or --deterministic, flags restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import boxforge
from boxforge.config import TrainConfig
from boxforge.devices import resolve_device
from boxforge.engine.setup import kernel_choice
from boxforge.errors import BoxforgeError
from tests.engine.test_loop import SMALL


def _one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_each_local_rank_gets_its_own_gpu_and_too_many_ranks_is_a_clear_error(monkeypatch) -> None:
    _one_gpu(monkeypatch)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(BoxforgeError) as info:
        resolve_device("auto", local_rank=1)
    message = str(info.value)
    assert "local rank 1" in message and "1 CUDA device" in message and "--nproc_per_node 1" in message
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BoxforgeError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def _flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled())


def test_kernel_choice_sets_the_flags_for_the_run_and_restores_them() -> None:
    before = _flags()
    assert before == (False, False, False)  # torch's defaults, which the rest of the suite relies on
    with kernel_choice(TrainConfig(), torch.device("cuda", 0)):
        assert _flags() == (True, False, False)  # autotuning: fixed input sizes
    assert _flags() == before
    with kernel_choice(TrainConfig(), torch.device("cpu")):
        assert _flags() == before  # nothing to tune on CPU
    with kernel_choice(TrainConfig(deterministic=True), torch.device("cuda", 0)):
        assert _flags() == (False, True, True)
    assert _flags() == before
    with pytest.raises(RuntimeError), kernel_choice(TrainConfig(deterministic=True), torch.device("cpu")):
        raise RuntimeError("a failing run")
    assert _flags() == before  # restored on the way out of a failure too


def test_deterministic_run_trains_and_is_recorded(synth_set: Path, tmp_path: Path) -> None:
    """The flag reaches the checkpoint and the global switch is off again after the run."""
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), iterations=2, deterministic=True,
                            **{**SMALL, "model": "yolo_csp"})
    assert torch.load(result.last, weights_only=True)["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()


def test_detectors_train_channels_last_unless_told_not_to(synth_set: Path, tmp_path: Path) -> None:
    """Faster steps for every detector (bench/step_speed.py); --no-channels-last keeps torch's default layout."""
    for flag, expected in ((True, True), (False, False)):
        result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / str(flag)), iterations=1, channels_last=flag,
                                **SMALL)
        convs = [t for t in torch.load(result.last, weights_only=True)["model"].values() if t.dim() == 4 and
                 t.shape[-1] > 1]
        assert convs and all(t.is_contiguous(memory_format=torch.channels_last) == expected for t in convs)
