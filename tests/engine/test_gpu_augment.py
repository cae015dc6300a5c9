"""--gpu-augment: the setting, when `auto` turns it on, and that `on` trains on CPU with the worker path's batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import boxforge
from boxforge.cli import build_parser
from boxforge.config import TrainConfig, make_config
from boxforge.data.index import DatasetIndex
from boxforge.data.synth import synthesize_detection
from boxforge.engine.sampler import SeededDataset
from boxforge.engine.tasks import ClassifyTask, DetectTask, augment_on_device
from boxforge.errors import BoxforgeError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_setting_is_checked_and_reaches_the_config() -> None:
    with pytest.raises(BoxforgeError, match=r"--gpu-augment 'yes'; choose one of: auto, on, off"):
        make_config({"data": "d", "gpu_augment": "yes"})
    args = build_parser().parse_args(["train", "--data", "d", "--gpu-augment", "on"])
    assert make_config(vars(args)).gpu_augment == "on"
    assert make_config({"data": "d"}).gpu_augment == "auto"


def test_auto_is_on_only_for_cuda_without_mosaic() -> None:
    auto = TrainConfig(data=["d"])
    assert not augment_on_device(auto, CPU) and not augment_on_device(auto, None)
    assert augment_on_device(auto, CUDA)
    assert not augment_on_device(TrainConfig(data=["d"], mosaic=0.5), CUDA)
    assert augment_on_device(TrainConfig(data=["d"], gpu_augment="on"), CPU)
    assert not augment_on_device(TrainConfig(data=["d"], gpu_augment="off"), CUDA)
    with pytest.raises(BoxforgeError, match="for detectors"):
        ClassifyTask(TrainConfig(data=["d"], gpu_augment="on"), 2)
    with pytest.raises(BoxforgeError, match="--gpu-augment on with --mosaic 0.5"):
        DetectTask(TrainConfig(data=["d"], gpu_augment="on", mosaic=0.5), CUDA)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetIndex]:
    root = tmp_path_factory.mktemp("gpuaug") / "synth"
    return root, synthesize_detection(root, images=8, classes=2, seed=3, image_size=(160, 120))


def _batch(task: DetectTask, index: DatasetIndex, seeds: list[int]):
    dataset = SeededDataset(task.train_dataset(index, 96))
    items = [dataset[(i, s)] for i, s in enumerate(seeds)]
    return task.to_device(*task.collate(items), CPU)


def test_on_gives_the_batches_of_the_worker_path(tiny) -> None:
    """Same per-sample seeds: the device path's batch is the worker path's (pixels within 1 of 255)."""
    _, index = tiny
    off = DetectTask(TrainConfig(data=["d"], gpu_augment="off", cache="off"), CPU)
    on = DetectTask(TrainConfig(data=["d"], gpu_augment="on", cache="off"), CPU)
    assert off.recipe is None
    seeds = [5, 6, 7, 8, 9, 10]
    (a, ta), (b, tb) = _batch(off, index, seeds), _batch(on, index, seeds)
    assert on.recipe is not None and b.shape == a.shape == (6, 3, 96, 96) and b.dtype == a.dtype
    assert ((a - b) * 255).abs().max().item() <= 1.0 + 1e-3
    for x, y in zip(ta, tb):
        assert x["image_id"] == y["image_id"] and torch.equal(x["labels"], y["labels"])
        assert x["boxes"].shape == y["boxes"].shape
        assert (x["boxes"] - y["boxes"]).abs().max().item() <= 1e-4 if len(x["boxes"]) else True


def test_on_trains_a_step_on_cpu(tiny, tmp_path: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import boxforge.engine.tasks as tasks

    calls: list[int] = []
    real = tasks.apply_ssd

    def counted(images, targets, recipe, device):
        calls.append(len(images))
        return real(images, targets, recipe, device)

    monkeypatch.setattr(tasks, "apply_ssd", counted)
    root, _ = tiny
    result = boxforge.train(data=[str(root)], out=str(tmp_path / "run"), model="ssd_tiny", img_size=96,
                            batch_size=4, iterations=1, threads=1, seed=7, device="cpu", gpu_augment="on",
                            cache="off", report=False)
    assert result.global_step == 1 and result.last is not None and Path(result.last).exists()
    assert calls == [4]  # the one training batch went through the device path
    assert "--gpu-augment: the SSD augmentation runs on cpu" in capsys.readouterr().out
