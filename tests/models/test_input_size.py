"""--img-size auto: the input size follows the training boxes (models/input_size.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from boxforge.config import make_config
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError
from boxforge.models.input_size import FALLBACK, MIN_OBJECT_PX, SIZES, auto_img_size, choose_img_size


def test_large_objects_get_the_smallest_size_small_ones_a_larger_one() -> None:
    large = np.full((50, 2), 0.4)
    assert choose_img_size(large)[0] == SIZES[0] == 256
    small = np.full((50, 2), 0.04)  # 16 px needs 400 px -> the next multiple of 32: 416
    size, reason = choose_img_size(small)
    assert size == 416 and size * 0.04 >= MIN_OBJECT_PX and "416 px" in reason
    tiny = np.full((50, 2), 0.005)
    assert choose_img_size(tiny)[0] == SIZES[-1] == 640  # capped: CPU budgets


def test_the_smaller_side_and_the_lower_tail_decide() -> None:
    wh = np.array([[0.5, 0.04]] * 20 + [[0.5, 0.5]] * 80)  # 20% thin boxes: the 10th percentile is thin
    assert choose_img_size(wh)[0] == 416
    wh = np.array([[0.5, 0.04]] * 5 + [[0.5, 0.5]] * 95)  # 5%: below the percentile, ignored
    assert choose_img_size(wh)[0] == 256


def test_no_boxes_fall_back() -> None:
    assert choose_img_size(np.zeros((0, 2)))[0] == FALLBACK
    assert choose_img_size(np.zeros((0, 2)), image_side=200)[0] == 256  # never above the images, never below 256


def test_never_past_the_images_own_size() -> None:
    tiny = np.full((50, 2), 0.02)  # the box rule wants 640 px
    size, reason = choose_img_size(tiny, image_side=400)
    assert size == 416 and "capped at 416 px" in reason and "median longer side 400 px" in reason
    assert choose_img_size(tiny, image_side=321.5)[0] == 352  # the first multiple of 32 at or above it
    assert choose_img_size(tiny, image_side=320)[0] == 320
    assert choose_img_size(tiny, image_side=120)[0] == SIZES[0]  # small images: the smallest size, not below
    assert choose_img_size(tiny, image_side=1280) == choose_img_size(tiny)  # large images: the box rule alone
    small = np.full((50, 2), 0.04)  # wants 416: a cap above that changes nothing, nor does the reason
    assert choose_img_size(small, image_side=500) == choose_img_size(small)


def _index(sizes: list[tuple[int, int]], box_fraction: float) -> DatasetIndex:
    samples = [Sample(f"{i}", None, width=w, height=h, boxes=np.array([[0, 0, w * box_fraction, h * box_fraction]]),
                      labels=np.zeros(1, np.int64)) for i, (w, h) in enumerate(sizes)]
    return DatasetIndex(classes=["a"], samples=samples, format="voc", root=Path("."))


def test_auto_reads_the_boxes_and_the_median_image() -> None:
    # small boxes in 300 x 240 images (one odd 2000 px image does not move the median): capped at 320
    size, reason = auto_img_size(_index([(300, 240)] * 9 + [(2000, 1500)], 0.02))
    assert size == 320 and "capped" in reason
    # the same boxes in 1280 px photos: the box rule alone
    assert auto_img_size(_index([(1280, 960)] * 10, 0.02))[0] == 640
    # images whose size the annotations do not give: no cap
    assert auto_img_size(_index([(0, 0)] * 3, 0.02))[0] == FALLBACK


def test_config_accepts_auto_and_numbers_only() -> None:
    assert make_config({"data": "d"}).img_size == "auto"  # yolo_csp's recipe
    assert make_config({"data": "d", "model": "yolo_efficientnet_lite0"}).img_size == "auto"  # the pretrained start
    assert make_config({"data": "d", "model": "ssd_tiny"}).img_size is None
    assert make_config({"data": "d", "img_size": 288}).img_size == 288
    with pytest.raises(BoxforgeError, match="img-size"):
        make_config({"data": "d", "img_size": "big"})
