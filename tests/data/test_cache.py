"""Tests for data/cache.py (`--cache ram`): same samples as the uncached path, each file decoded once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import boxforge.data.cache as cache_module
import boxforge.data.loading as loading
from boxforge.config import TrainConfig
from boxforge.data.cache import RamCache, attach_cache, cache_estimate
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.loading import ClassificationDataset, DetectionDataset, detection_collate, make_loader
from boxforge.data.mosaic import MosaicDataset
from boxforge.data.pack import read_pack, write_pack
from boxforge.data.transforms import detection_transforms
from boxforge.engine.sampler import ResumableSampler, SeededDataset
from boxforge.engine.tasks import ClassifyTask, DetectTask
from boxforge.errors import BoxforgeError

torch.set_num_threads(1)

S = 48  # cache keeps the longer side at most 2 x S = 96 px


def _index(root: Path, sizes: list[tuple[int, int]], ext: str = ".png") -> DatasetIndex:
    """Noisy images (width, height) with two boxes each, the second partly outside the image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for n, (w, h) in enumerate(sizes):
        path = root / f"im{n}{ext}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        boxes = [[w * 0.1, h * 0.2, w * 0.6, h * 0.7], [w * 0.5, h * 0.5, w * 1.2, h * 1.1]]
        samples.append(Sample(f"im{n}", path, boxes=boxes, labels=[n % 2, 1], difficult=[False, n == 1]))
    return DatasetIndex(["a", "b"], samples, "voc", root, task="detect")


SMALL = [(90, 60), (40, 96), (64, 64)]  # longer side <= 2S: the cache keeps them as decoded
LARGE = [(300, 200), (150, 400), (97, 20)]  # downscaled once by the cache


def _same(a: tuple[Any, dict], b: tuple[Any, dict]) -> bool:
    if not torch.equal(a[0].as_subclass(torch.Tensor), b[0].as_subclass(torch.Tensor)):
        return False
    return a[1]["image_id"] == b[1]["image_id"] and all(
        torch.equal(a[1][k].as_subclass(torch.Tensor), b[1][k].as_subclass(torch.Tensor))
        for k in ("boxes", "labels", "difficult"))


def _epochs(dataset: Any, epochs: int = 2) -> list[tuple[Any, dict]]:
    """Every item of `epochs` epochs, each under its sampler seed (as training draws them)."""
    seeded = SeededDataset(dataset)
    sampler = ResumableSampler(len(dataset), batch_size=1, seed=5)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out += [seeded[item] for item in sampler]
    return out


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts: dict[str, int] = {}
    real = loading.read_image

    def counting(path: Path, *args: Any) -> torch.Tensor:
        counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return real(path, *args)

    monkeypatch.setattr(loading, "read_image", counting)  # the uncached path decodes here
    monkeypatch.setattr(cache_module, "read_image", counting)  # the cache decodes a file on its first read
    return counts


@pytest.mark.parametrize("ext", [".png", ".jpg"])  # two decoders (libpng, libjpeg): the cache must not care
def test_cached_samples_equal_uncached_and_each_file_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  ext: str) -> None:
    index = _index(tmp_path / "small", SMALL, ext)
    counts = _count_reads(monkeypatch)
    plain = _epochs(DetectionDataset(index, detection_transforms(True, S)))
    assert set(counts.values()) == {2}  # uncached: every epoch decodes every file
    counts.clear()
    cached_set = DetectionDataset(index, detection_transforms(True, S))
    attach_cache(cached_set, "ram", S)
    cached = _epochs(cached_set)
    assert counts == {f"im{n}{ext}": 1 for n in range(len(SMALL))}
    assert cached_set.cache.decoded == len(SMALL) == len(cached_set.cache)
    assert all(_same(a, b) for a, b in zip(plain, cached))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_downscaled_cache_equals_a_pack_of_the_same_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         ext: str) -> None:
    """Large images: the cached item is exactly the uncached item of the downscaled image (a `pack --max-side`)."""
    index = _index(tmp_path / "large", LARGE, ext)
    write_pack(index, tmp_path / "pack", max_side=2 * S)
    packed = _epochs(DetectionDataset(read_pack(tmp_path / "pack"), detection_transforms(True, S)))
    counts = _count_reads(monkeypatch)
    dataset = DetectionDataset(index, detection_transforms(True, S))
    attach_cache(dataset, "ram", S)
    cached = _epochs(dataset)
    assert set(counts.values()) == {1}
    assert all(_same(a, b) for a, b in zip(packed, cached))
    raw = [dataset.load(i) for i in range(len(LARGE))]  # untransformed: the longer side is 2S, boxes scaled
    assert [max(image.shape[-2:]) for image, _ in raw] == [2 * S] * len(LARGE)
    torch.testing.assert_close(raw[0][1]["boxes"].as_subclass(torch.Tensor),
                               torch.tensor([[9.6, 12.8, 57.6, 44.8], [48.0, 32.0, 96.0, 64.0]]))


def test_mosaic_reads_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_reads(monkeypatch)
    dataset = DetectionDataset(_index(tmp_path / "large", LARGE), detection_transforms(True, S))
    attach_cache(dataset, "ram", S)
    first = _epochs(MosaicDataset(dataset, S, 1.0))
    assert set(counts.values()) == {1}
    assert all(_same(a, b) for a, b in zip(first, _epochs(MosaicDataset(dataset, S, 1.0))))


def test_refuses_above_the_ram_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = DetectionDataset(_index(tmp_path / "small", SMALL))
    need = 3 * (2 * 320) ** 2 * 3 * 2  # 3 images, 2 workers
    with pytest.raises(BoxforgeError) as info:
        attach_cache(dataset, "ram", 320, workers=2, limit=need - 1)
    message = str(info.value)
    assert "\n" not in message and "0.01 GiB" in message and "3 images x 640^2 x 3 bytes x 2 processes" in message
    assert dataset.cache is None
    attach_cache(dataset, "ram", 320, workers=2, limit=need)
    assert isinstance(dataset.cache, RamCache)
    monkeypatch.setattr(cache_module, "physical_ram", lambda: 4 * need - 4)  # default limit: 25% of it
    with pytest.raises(BoxforgeError, match=r"25% of physical RAM"):
        attach_cache(DetectionDataset(_index(tmp_path / "small", SMALL)), "ram", 320, workers=2)
    with pytest.raises(BoxforgeError, match="choose one of: ram"):
        attach_cache(dataset, "disk", 320)


def test_pack_data_is_not_cached(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_pack(_index(tmp_path / "small", SMALL), tmp_path / "pack")
    dataset = DetectionDataset(read_pack(tmp_path / "pack"), detection_transforms(True, S))
    with caplog.at_level(logging.INFO, logger="boxforge.data.cache"):
        attach_cache(dataset, "ram", S)
    assert dataset.cache is None and "pack" in caplog.text
    assert len(_epochs(dataset, 1)) == len(SMALL)


def test_two_workers_fill_their_own_caches(tmp_path: Path) -> None:
    index = _index(tmp_path / "small", SMALL * 2)
    dataset = DetectionDataset(index, detection_transforms(True, S))
    attach_cache(dataset, "ram", S, workers=2)
    dataset.load(0)  # a filled slot in the main process is not shipped to the workers
    assert len(dataset.cache) == 1
    sampler = ResumableSampler(len(dataset), batch_size=2, seed=5)
    loader = make_loader(SeededDataset(dataset), 2, workers=2, sampler=sampler, collate_fn=detection_collate)
    got = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got += [(image, target) for images, targets in loader for image, target in zip(images, targets)]
    expected = _epochs(DetectionDataset(index, detection_transforms(True, S)))
    assert len(got) == len(expected) == 2 * len(index.samples)
    assert all(_same(a, b) for a, b in zip(expected, got))
    assert len(dataset.cache) == 1  # the workers' caches live in the workers


def test_config_and_tasks_wire_the_options(tmp_path: Path) -> None:
    index = _index(tmp_path / "small", SMALL)
    cfg = TrainConfig(data=["x"], mosaic=0.5, cache="ram")
    cfg.validate()
    dataset = DetectTask(cfg).train_dataset(index, S)
    assert isinstance(dataset, MosaicDataset) and dataset.p == 0.5
    assert isinstance(dataset.dataset.cache, RamCache)
    plain = DetectTask(TrainConfig(data=["x"], cache="off")).train_dataset(index, S)
    assert isinstance(plain, DetectionDataset) and plain.cache is None
    auto = DetectTask(TrainConfig(data=["x"])).train_dataset(index, S)  # the default: 3 small images fit
    assert isinstance(auto, DetectionDataset) and isinstance(auto.cache, RamCache)
    with pytest.raises(BoxforgeError, match="--cache"):
        TrainConfig(data=["x"], cache="disk").validate()
    classify = DatasetIndex(["a", "b"], [Sample(s.image_id, s.image_path, label=n % 2)
                                         for n, s in enumerate(index.samples)], "imagefolder", index.root,
                            task="classify")
    cls_set = ClassifyTask(TrainConfig(data=["x"], cache="ram"), 2).train_dataset(classify, S)
    assert isinstance(cls_set, ClassificationDataset) and isinstance(cls_set.cache, RamCache)
    image, label = cls_set[1]
    assert image.shape == (3, S, S) and label == 1 and len(cls_set.cache) == 1


def test_auto_caches_only_what_fits_its_smaller_share(tmp_path: Path) -> None:
    index = _index(tmp_path / "small", SMALL)
    need = cache_estimate(len(index.samples), S, 1)
    for limit, cached in ((need, True), (need - 1, False)):
        dataset = DetectionDataset(index, None)
        attach_cache(dataset, "auto", S, limit=limit)  # "ram" with the same limit would raise instead
        assert (dataset.cache is not None) is cached
    dataset = DetectionDataset(index, None)
    attach_cache(dataset, "off", S)
    assert dataset.cache is None
