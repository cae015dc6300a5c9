"""Tests for data/mosaic.py: four images tiled on a 2S x 2S canvas, boxes that match the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from boxforge.config import TrainConfig
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.loading import DetectionDataset, detection_collate, make_loader
from boxforge.data.mosaic import MosaicDataset, mosaic
from boxforge.data.transforms import detection_transforms
from boxforge.engine.sampler import SeededDataset
from boxforge.errors import BoxforgeError

torch.set_num_threads(1)

S = 64
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20)]  # label k is painted COLOURS[k]
# (width, height, boxes); boxes do not overlap, label = position in the list.
LAYOUTS = [
    (160, 120, [[10, 10, 60, 50], [90, 40, 150, 110]]),
    (80, 100, [[5, 60, 70, 95]]),
    (40, 40, [[8, 8, 30, 30], [32, 2, 39, 38]]),  # smaller than S: scaled up
    (120, 90, []),  # no boxes
    (100, 60, [[0, 0, 100, 20]]),
]


def _write(root: Path, layouts: list[tuple[int, int, list[list[float]]]]) -> DatasetIndex:
    """PNG images on black with each box painted solid in the colour of its label."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for n, (w, h, boxes) in enumerate(layouts):
        arr = np.zeros((h, w, 3), np.uint8)
        labels = [k % len(COLOURS) for k in range(len(boxes))]
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            arr[int(y1):int(y2), int(x1):int(x2)] = COLOURS[label]
        path = root / f"im{n}.png"
        Image.fromarray(arr).save(path)
        samples.append(Sample(f"im{n}", path, boxes=boxes, labels=labels, difficult=[False] * len(boxes)))
    return DatasetIndex([f"c{k}" for k in range(len(COLOURS))], samples, "voc", root, task="detect")


@pytest.fixture()
def index(tmp_path: Path) -> DatasetIndex:
    return _write(tmp_path / "images", LAYOUTS)


def _assert_boxes_match_pixels(image: torch.Tensor, target: dict, inset: int = 2) -> None:
    pixels = image.as_subclass(torch.Tensor)
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        x1, y1, x2, y2 = (int(np.ceil(box[0])) + inset, int(np.ceil(box[1])) + inset,
                          int(box[2]) - inset, int(box[3]) - inset)
        if x2 <= x1 or y2 <= y1:
            continue
        region = pixels[:, y1:y2, x1:x2].reshape(3, -1).float()
        expected = torch.tensor(COLOURS[label], dtype=torch.float32).view(3, 1)
        assert (region - expected).abs().max() <= 12, (box, label)


@pytest.mark.parametrize("centre", [(S // 2, S // 2), (3 * S // 2, 3 * S // 2), (S, S), (40, 90), (100, 33)])
def test_mosaic_tiles_four_images_and_boxes_match_pixels(index: DatasetIndex, centre: tuple[int, int]) -> None:
    data = DetectionDataset(index)
    image, target = mosaic([data.load(i) for i in (0, 1, 2, 4)], S, centre)
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 2 * S, 2 * S) and image.dtype == torch.uint8
    boxes = target["boxes"]
    assert boxes.canvas_size == (2 * S, 2 * S) and boxes.dtype == torch.float32
    assert len(target["labels"]) == len(target["difficult"]) == len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= 2 * S).all()
    assert (boxes[:, 3] <= 2 * S).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert target["image_id"] == "im0+im1+im2+im4" and target["orig_size"] == (2 * S, 2 * S)
    _assert_boxes_match_pixels(image, target)


def test_mosaic_centre_box_all_four_quadrants(index: DatasetIndex) -> None:
    """Centred, every image is whole: each keeps all its boxes, in its own quadrant."""
    data = DetectionDataset(index)
    items = [data.load(i) for i in (0, 1, 2, 4)]
    image, target = mosaic(items, S, (S, S))
    assert len(target["boxes"]) == 2 + 1 + 2 + 1
    first = target["boxes"][:2]  # image 0 (160x120 -> 64x48) ends at the centre from the top left
    expected = torch.tensor(LAYOUTS[0][2], dtype=torch.float32) * 0.4 + torch.tensor([0, 16, 0, 16])
    torch.testing.assert_close(first, expected)


def test_box_losing_most_of_its_area_is_dropped(tmp_path: Path) -> None:
    data = DetectionDataset(_write(tmp_path, [(S, S, [[0, 0, 24, S]])] * 4))
    items = [data.load(i) for i in range(4)]
    # Image 0 ends at the centre from the top left: at x = 34 it starts at -30 and keeps 0..-6 of the box: dropped;
    # at x = 54 it starts at -10 and keeps 14 of 24 px (58%): kept, clipped to the canvas.
    _, cut = mosaic(items, S, (34, S))
    assert not any(b[1] < S and b[0] < 34 for b in cut["boxes"].tolist())
    _, kept = mosaic(items, S, (54, S))
    assert [0.0, 0.0, 14.0, float(S)] in kept["boxes"].tolist()
    _, sliver = mosaic(items, S, (44, S))  # 4 of 24 px: dropped, unless the threshold is lowered
    assert [0.0, 0.0, 4.0, float(S)] not in sliver["boxes"].tolist()
    _, sliver = mosaic(items, S, (44, S), min_visible=0.1)
    assert [0.0, 0.0, 4.0, float(S)] in sliver["boxes"].tolist()


def test_images_without_boxes(tmp_path: Path) -> None:
    data = DetectionDataset(_write(tmp_path, [(50, 40, []), (30, 70, [])]), detection_transforms(True, S))
    image, target = mosaic([data.load(i) for i in (0, 1, 0, 1)], S, (S, 50))
    assert image.shape == (3, 2 * S, 2 * S) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    seeded = SeededDataset(MosaicDataset(data, S, 1.0))
    for i in range(2):
        image, target = seeded[(i, 123 + i)]
        assert image.shape == (3, S, S) and len(target["boxes"]) == len(target["labels"]) == 0


def test_probability_zero_or_switched_off_is_exactly_the_old_path(index: DatasetIndex) -> None:
    data = DetectionDataset(index, detection_transforms(True, S))
    for wrapped in (MosaicDataset(data, S, 0.0), _off(MosaicDataset(data, S, 1.0))):
        for i in range(len(data)):
            torch.manual_seed(i)
            old = data[i]
            torch.manual_seed(i)
            new = wrapped[i]
            _assert_same(old, new)
            assert "+" not in new[1]["image_id"]


def _off(wrapped: MosaicDataset) -> MosaicDataset:
    wrapped.enabled = False
    return wrapped


def _assert_same(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0].as_subclass(torch.Tensor), b[0].as_subclass(torch.Tensor))
    for key in ("boxes", "labels", "difficult"):
        assert torch.equal(a[1][key].as_subclass(torch.Tensor), b[1][key].as_subclass(torch.Tensor)), key
    assert a[1]["image_id"] == b[1]["image_id"]


def test_training_pipeline_shapes_and_determinism(index: DatasetIndex) -> None:
    seeded = SeededDataset(MosaicDataset(DetectionDataset(index, detection_transforms(True, S)), S, 1.0))
    first = [seeded[(i, 1000 + i)] for i in range(len(index.samples))]
    for image, target in first:
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        assert "+" in target["image_id"] and len(target["boxes"]) == len(target["labels"])
        if len(target["boxes"]):
            assert target["boxes"].min() >= 0 and target["boxes"].max() <= S
    for i, item in enumerate(first):  # same (index, seed): same bytes
        _assert_same(item, seeded[(i, 1000 + i)])
    assert any(not torch.equal(first[0][0], seeded[(0, 7 + k)][0]) for k in range(3))


def test_partners_and_pixels_after_flip_free_pipeline(index: DatasetIndex) -> None:
    """Through a transform that only resizes, the boxes still sit on their colours."""
    seeded = SeededDataset(MosaicDataset(DetectionDataset(index, detection_transforms(False, 2 * S)), S, 1.0))
    for i in range(4):
        image, target = seeded[(i, 55 + i)]
        assert image.shape == (3, 2 * S, 2 * S)
        _assert_boxes_match_pixels((image * 255).round().to(torch.uint8), target)


def test_switch_reaches_persistent_workers(index: DatasetIndex) -> None:
    wrapped = MosaicDataset(DetectionDataset(index, detection_transforms(False, S)), S, 1.0)
    loader = make_loader(wrapped, 5, workers=2, collate_fn=detection_collate)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert all("+" in i for i in ids)
    wrapped.enabled = False
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert sorted(ids) == [f"im{n}" for n in range(len(LAYOUTS))]


def test_probability_is_validated(index: DatasetIndex) -> None:
    with pytest.raises(ValueError, match="mosaic probability"):
        MosaicDataset(DetectionDataset(index), S, 1.5)
    with pytest.raises(BoxforgeError, match="--mosaic"):
        TrainConfig(data=["x"], mosaic=-0.1).validate()
