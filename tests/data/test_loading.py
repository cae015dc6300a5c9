"""Tests for data/loading.py and data/transforms.py on a tiny dataset made here with PIL."""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from boxforge.data.images import _read_regular_file, load_rgb
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.loading import (
    ClassificationDataset,
    DetectionDataset,
    detection_collate,
    make_loader,
)
from boxforge.data.transforms import SafeIoUCrop, classification_transforms, detection_transforms
from boxforge.errors import DatasetError, UnsafeInputError

torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a 2-core runner

RED, BLUE = (220, 20, 20), (20, 20, 220)
GOOD_BOX = [8, 6, 40, 30]
EDGE_BOX = [70, 50, 100, 90]  # partly outside an 80x60 image: clipped to [70, 50, 80, 60]
OUTSIDE_BOX = [100, 100, 120, 120]  # wholly outside: dropped after clipping
INVALID = [[float("nan"), 0, 10, 10], [20, 20, 20, 40], [30, 30, 10, 40]]  # NaN, zero width, negative


def _solid(w: int, h: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (w, h), color)


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    """Image files of every kind the loader must handle, keyed by image id."""
    d = tmp_path / "JPEGImages"
    d.mkdir()
    paths = {name: d / f"{name}{ext}" for name, ext in [
        ("rgb", ".jpg"), ("grey", ".png"), ("cmyk", ".jpg"), ("exif", ".jpg"), ("palette", ".png"),
        ("bmp", ".bmp"), ("corrupt", ".jpg"), ("truncated", ".jpg"), ("missing", ".jpg"),
    ]}
    _solid(80, 60, RED).save(paths["rgb"], quality=95)
    _solid(50, 30, (90, 90, 90)).convert("L").save(paths["grey"])
    _solid(40, 20, RED).convert("CMYK").save(paths["cmyk"], quality=95)
    stored = _solid(80, 60, RED)  # stored 80x60: top half red, bottom half blue
    stored.paste(_solid(80, 30, BLUE), (0, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: 60 wide, 80 high
    stored.save(paths["exif"], quality=95, exif=exif)
    _solid(30, 30, BLUE).convert("P").save(paths["palette"])
    _solid(24, 16, BLUE).save(paths["bmp"])
    paths["corrupt"].write_bytes(b"this is not a JPEG at all" * 10)
    data = paths["rgb"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


def _detect_index(paths: list[tuple[str, Path]], boxes: dict[str, list[list[float]]] | None = None) -> DatasetIndex:
    boxes = boxes or {}
    samples = []
    for image_id, path in paths:
        b = boxes.get(image_id, [GOOD_BOX])
        samples.append(Sample(image_id, path, boxes=b, labels=[i % 2 for i in range(len(b))],
                              difficult=[i == 1 for i in range(len(b))]))
    return DatasetIndex(["cat", "dog"], samples, "voc", paths[0][1].parent if paths else Path("."), task="detect")


def _run_with_timeout(fn: Callable[[], Any], timeout: float = 10.0) -> dict[str, Any]:
    """Run fn in a daemon thread; fail the test (not hang it) if it does not return in time."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"call did not return within {timeout}s (blocked?)"
    return out


def test_items_have_documented_shapes_and_types(images: dict[str, Path]) -> None:
    ids = ["rgb", "grey", "cmyk", "palette", "bmp"]
    ds = DetectionDataset(_detect_index([(i, images[i]) for i in ids]))
    sizes = {"rgb": (60, 80), "grey": (30, 50), "cmyk": (20, 40), "palette": (30, 30), "bmp": (16, 24)}
    assert len(ds) == 5 and ds.classes == ("cat", "dog")
    for k, image_id in enumerate(ids):
        image, target = ds[k]
        h, w = sizes[image_id]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert tuple(image.shape) == (3, h, w)
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
        assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (h, w)
        assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
        assert target["image_id"] == image_id and target["orig_size"] == (h, w)
    assert ds.skipped == []


def test_greyscale_cmyk_palette_become_rgb(images: dict[str, Path]) -> None:
    ds = DetectionDataset(_detect_index([(i, images[i]) for i in ["grey", "cmyk", "palette"]]))
    grey, cmyk, palette = (ds[k][0].float().mean(dim=(1, 2)) for k in range(3))
    assert torch.allclose(grey, torch.full((3,), 90.0), atol=2)
    assert torch.allclose(cmyk, torch.tensor(RED, dtype=torch.float32), atol=12)
    assert torch.allclose(palette, torch.tensor(BLUE, dtype=torch.float32), atol=12)


def test_exif_orientation_is_applied(images: dict[str, Path]) -> None:
    image, target = DetectionDataset(_detect_index([("exif", images["exif"])]))[0]
    assert tuple(image.shape) == (3, 80, 60) and target["orig_size"] == (80, 60)
    expected = torch.from_numpy(load_rgb(images["exif"]).copy()).permute(2, 0, 1)  # PIL's exif_transpose
    assert (image.int() - expected.int()).abs().float().mean() < 3
    # Rotated clockwise: the stored top (red) is now on the right, the bottom (blue) on the left.
    assert image[0, 40, 50] > 150 and image[2, 40, 50] < 80
    assert image[2, 40, 10] > 150 and image[0, 40, 10] < 80


def test_invalid_boxes_dropped_and_rest_clipped(images: dict[str, Path]) -> None:
    boxes = {"rgb": [GOOD_BOX, *INVALID, EDGE_BOX, OUTSIDE_BOX]}
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"])], boxes))
    assert ds.dropped_boxes == 3
    _, target = ds[0]
    assert target["boxes"].tolist() == [GOOD_BOX, [70, 50, 80, 60]]
    # labels/difficult follow their boxes: GOOD_BOX was object 0, EDGE_BOX object 4.
    assert target["labels"].tolist() == [0, 0]
    assert target["difficult"].tolist() == [False, False]


@pytest.mark.parametrize("size", [100, (50, 120)])
def test_eval_transform_resizes_and_scales_boxes(images: dict[str, Path], size: Any) -> None:
    boxes = {"rgb": [GOOD_BOX, EDGE_BOX]}
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"])], boxes), detection_transforms(False, size))
    image, target = ds[0]
    out_h, out_w = (size, size) if isinstance(size, int) else size
    assert tuple(image.shape) == (3, out_h, out_w) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    sx, sy = out_w / 80, out_h / 60
    expected = [[8 * sx, 6 * sy, 40 * sx, 30 * sy], [70 * sx, 50 * sy, 80 * sx, 60 * sy]]
    assert torch.allclose(target["boxes"], torch.tensor(expected), atol=1e-3)
    assert tuple(target["boxes"].canvas_size) == (out_h, out_w)
    assert target["orig_size"] == (60, 80)


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "missing"])
def test_bad_image_skipped_and_recorded_when_not_strict(images: dict[str, Path], bad: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"]), (bad, images[bad]), ("grey", images["grey"])]))
    with caplog.at_level(logging.WARNING, logger="boxforge.data.loading"):
        _, target = ds[1]
    assert target["image_id"] == "grey"  # deterministic: the next readable index
    assert [image_id for image_id, _ in ds.skipped] == [bad]
    assert str(images[bad]) in ds.skipped[0][1]
    assert any(bad in r.getMessage() for r in caplog.records)
    assert ds[1][1]["image_id"] == "grey" and len(ds.skipped) == 1  # recorded once
    # The last index wraps around to the first.
    ds2 = DetectionDataset(_detect_index([("rgb", images["rgb"]), (bad, images[bad])]))
    assert ds2[1][1]["image_id"] == "rgb"


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "missing"])
def test_bad_image_raises_dataset_error_when_strict(images: dict[str, Path], bad: str) -> None:
    ds = DetectionDataset(_detect_index([(bad, images[bad]), ("rgb", images["rgb"])]), strict=True)
    with pytest.raises(DatasetError, match=str(images[bad]).replace(".", r"\.")):
        ds[0]


def test_all_images_bad_raises(images: dict[str, Path]) -> None:
    ds = DetectionDataset(_detect_index([("corrupt", images["corrupt"]), ("missing", images["missing"])]))
    with pytest.raises(DatasetError, match="none of the 2 images"):
        ds[0]


def test_named_pipe_rejected_without_blocking(images: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        strict = DetectionDataset(_detect_index([("pipe", fifo)]), strict=True)
        out = _run_with_timeout(lambda: strict[0])
        assert isinstance(out.get("error"), DatasetError) and "pipe" in str(out["error"])
        lenient = DetectionDataset(_detect_index([("pipe", fifo), ("rgb", images["rgb"])]))
        out = _run_with_timeout(lambda: lenient[0])
        assert out["value"][1]["image_id"] == "rgb" and lenient.skipped[0][0] == "pipe"
        # Second line of defence (a pipe swapped in after the stat check): open + fstat.
        out = _run_with_timeout(lambda: _read_regular_file(fifo))
        assert isinstance(out.get("error"), UnsafeInputError)
    finally:  # if a reader is stuck in open(), a non-blocking writer releases it
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_collate_stacks_same_size_and_lists_mixed(images: dict[str, Path]) -> None:
    pairs = [(i, images[i]) for i in ["rgb", "grey", "cmyk"]]
    resized = DetectionDataset(_detect_index(pairs), detection_transforms(False, 64))
    batch_images, targets = detection_collate([resized[k] for k in range(3)])
    assert isinstance(batch_images, torch.Tensor) and tuple(batch_images.shape) == (3, 3, 64, 64)
    assert [t["image_id"] for t in targets] == ["rgb", "grey", "cmyk"]
    raw = DetectionDataset(_detect_index(pairs))
    batch_images, targets = detection_collate([raw[k] for k in range(3)])
    assert isinstance(batch_images, list) and [tuple(im.shape) for im in batch_images] == [
        (3, 60, 80), (3, 30, 50), (3, 20, 40)]


def test_train_transform_with_zero_boxes(images: dict[str, Path]) -> None:
    torch.manual_seed(0)
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"])], {"rgb": []}), detection_transforms(True, 64))
    for _ in range(20):
        image, target = ds[0]
        assert tuple(image.shape) == (3, 64, 64) and image.dtype == torch.float32
        assert tuple(target["boxes"].shape) == (0, 4) and len(target["labels"]) == 0
    # Without the guard this never returns: no crop can hold a box centre, and 1.0 ("keep") is not offered.
    empty = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(60, 80))}
    image = tv_tensors.Image(torch.zeros(3, 60, 80, dtype=torch.uint8))
    out = _run_with_timeout(lambda: SafeIoUCrop(sampler_options=[0.5])(image, empty))
    assert "error" not in out


def test_train_transform_keeps_targets_in_step(images: dict[str, Path]) -> None:
    torch.manual_seed(1)
    boxes = {"rgb": [GOOD_BOX, [40, 20, 78, 58], [2, 40, 20, 58]]}
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"])], boxes), detection_transforms(True, 64))
    counts = set()
    for _ in range(30):
        image, target = ds[0]
        n = len(target["boxes"])
        counts.add(n)
        assert tuple(image.shape) == (3, 64, 64)
        assert len(target["labels"]) == len(target["difficult"]) == n
        if n:
            b = target["boxes"]
            assert float(b.min()) >= 0 and float(b[:, 2].max()) <= 64 and float(b[:, 3].max()) <= 64
            assert bool(((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all())
    assert len(counts) > 1  # the crop really removes boxes sometimes


def test_dataset_holds_packed_arrays_not_samples(images: dict[str, Path]) -> None:
    boxes = {"rgb": [GOOD_BOX, EDGE_BOX], "grey": []}
    ds = DetectionDataset(_detect_index([("rgb", images["rgb"]), ("grey", images["grey"])], boxes))

    def walk(value: Any) -> None:
        assert not isinstance(value, (Sample, DatasetIndex)), f"dataset keeps a {type(value).__name__}"
        if isinstance(value, np.ndarray):
            assert value.dtype != object, "object arrays are lists of Python objects in disguise"
        if isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)
        if isinstance(value, dict):
            for item in value.values():
                walk(item)

    for value in vars(ds).values():
        walk(value)
    assert ds._boxes.shape == (2, 4) and ds._boxes.dtype == np.float32
    assert ds._offsets.tolist() == [0, 2, 2]
    assert ds._paths.dtype.kind == "S" and ds.image_path(1) == images["grey"]


def test_loader_with_two_workers_runs_one_epoch(images: dict[str, Path]) -> None:
    ids = ["rgb", "grey", "cmyk", "palette", "bmp", "exif"]
    ds = DetectionDataset(_detect_index([(i, images[i]) for i in ids]), detection_transforms(True, 32))
    loader = make_loader(ds, batch_size=2, shuffle=True, workers=2, seed=3, timeout=60)
    assert loader.persistent_workers and loader.timeout == 60
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    seen = []
    for batch_images, targets in loader:
        assert isinstance(batch_images, torch.Tensor) and tuple(batch_images.shape) == (2, 3, 32, 32)
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == sorted(ids)


def _first(batch: list[Any]) -> Any:
    return batch[0]


class _RandomProbe(torch.utils.data.Dataset):
    """Reports the worker's thread count and its numpy/random draws."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[int, int, float]:
        return torch.get_num_threads(), int(np.random.randint(1 << 30)), random.random()


def test_loader_workers_are_single_threaded_and_seeded() -> None:
    def draws(seed: int) -> list[tuple[int, int, float]]:
        loader = make_loader(_RandomProbe(), 1, workers=2, seed=seed, collate_fn=_first)
        return list(loader)

    first, again, other = draws(7), draws(7), draws(8)
    assert {threads for threads, _, _ in first} == {1}
    assert first == again and first != other
    assert first[0][1:] != first[1][1:]  # the two workers do not share a stream


def test_loader_shuffle_is_reproducible_and_validates(images: dict[str, Path]) -> None:
    ds = ClassificationDataset(_classify_index(images, ["rgb", "grey", "cmyk", "palette", "bmp", "exif"]))
    order = lambda seed: [int(lbl) for _, lbl in make_loader(ds, 1, shuffle=True, seed=seed, collate_fn=_first)]  # noqa: E731
    assert order(5) == order(5) != order(6)
    assert sorted(order(5)) == list(range(6))
    with pytest.raises(ValueError, match="choose one of"):
        make_loader(ds, 2, workers=1, mp_context="bogus")
    with pytest.raises(ValueError, match="not both"):
        make_loader(ds, 2, shuffle=True, sampler=torch.utils.data.SequentialSampler(ds))


def _classify_index(images: dict[str, Path], ids: list[str]) -> DatasetIndex:
    samples = [Sample(i, images[i], label=k) for k, i in enumerate(ids)]
    return DatasetIndex([f"c{k}" for k in range(len(ids))], samples, "imagefolder", Path("."), task="classify")


def test_classification_dataset(images: dict[str, Path]) -> None:
    index = _classify_index(images, ["rgb", "grey", "corrupt", "exif"])
    raw = ClassificationDataset(index)
    image, label = raw[3]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and tuple(image.shape) == (3, 80, 60)
    assert label == 3
    assert raw[2][1] == 3 and raw.skipped[0][0] == "corrupt"  # skipped to the next image
    for train in (True, False):
        ds = ClassificationDataset(index, classification_transforms(train, 32), strict=False)
        image, label = ds[0]
        assert tuple(image.shape) == (3, 32, 32) and image.dtype == torch.float32 and label == 0
        assert not math.isclose(float(image.mean()), 0.5, abs_tol=0.05)  # normalised, not just scaled
    with pytest.raises(DatasetError, match="corrupt"):
        ClassificationDataset(index, strict=True)[2]
    no_path = DatasetIndex(["a"], [Sample("x", None, label=0)], "imagefolder", Path("."), task="classify")
    with pytest.raises(DatasetError, match="^sample 'x' has no image path$"):
        ClassificationDataset(no_path, strict=True)[0]
    with pytest.raises(DatasetError, match="needs a 'classify' index"):
        ClassificationDataset(_detect_index([("rgb", images["rgb"])]))
    unlabelled = DatasetIndex(["a"], [Sample("x", images["rgb"])], "imagefolder", Path("."), task="classify")
    with pytest.raises(DatasetError, match="no label"):
        ClassificationDataset(unlabelled)
