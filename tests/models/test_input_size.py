"""--img-size auto: the input size follows the training boxes (models/input_size.py)."""

from __future__ import annotations

import numpy as np
import pytest

from boxforge.config import make_config
from boxforge.errors import BoxforgeError
from boxforge.models.input_size import FALLBACK, MIN_OBJECT_PX, SIZES, choose_img_size


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


def test_config_accepts_auto_and_numbers_only() -> None:
    assert make_config({"data": "d"}).img_size == "auto"  # yolo_csp's recipe
    assert make_config({"data": "d", "model": "ssd_tiny"}).img_size is None
    assert make_config({"data": "d", "img_size": 288}).img_size == 288
    with pytest.raises(BoxforgeError, match="img-size"):
        make_config({"data": "d", "img_size": "big"})
