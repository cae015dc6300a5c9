"""Fitted default boxes: k-means on box shapes, handed to the feature maps by area, kept in checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import boxforge
from boxforge.data.formats.detect import load_dataset
from boxforge.errors import BoxforgeError
from boxforge.models import get_model
from boxforge.models.anchors import (FittedBoxGenerator, centred_iou, default_shapes, fit_anchor_shapes, kmeans_iou,
                                     mean_best_iou, relative_box_shapes)
from boxforge.inference import load_detector
from tests.conftest import RACCOON
from tests.engine.conftest import synth_set  # noqa: F401  (fixture)

TRUE = np.array([[0.05, 0.05], [0.1, 0.4], [0.4, 0.1], [0.6, 0.7]])


def _clustered(n: int = 400, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = TRUE[rng.integers(len(TRUE), size=n)]
    return picks * rng.uniform(0.95, 1.05, size=picks.shape)


def test_kmeans_recovers_known_clusters_sorted_by_area() -> None:
    centres = kmeans_iou(_clustered(), 4, seed=0)
    expected = TRUE[np.argsort(TRUE.prod(1))]
    assert np.allclose(centres, expected, rtol=0.03)
    assert np.array_equal(centres, kmeans_iou(_clustered(), 4, seed=0))  # deterministic


def test_fewer_distinct_shapes_than_anchors_are_padded_between_neighbours() -> None:
    centres = kmeans_iou(np.array([[0.1, 0.1], [0.4, 0.4], [0.1, 0.1]]), 4)
    assert centres.shape == (4, 2)
    assert np.all(np.diff(centres.prod(1)) > 0)
    assert np.allclose(centres[0], [0.1, 0.1]) and np.allclose(centres[-1], [0.4, 0.4])
    with pytest.raises(BoxforgeError, match="no boxes"):
        kmeans_iou(np.zeros((0, 2)), 3)


def test_fitted_shapes_cover_raccoon_better_than_the_default_boxes() -> None:
    wh = relative_box_shapes(load_dataset(RACCOON, split="train"))
    assert len(wh) > 150 and np.all((wh > 0) & (wh <= 1))
    shapes = fit_anchor_shapes(wh, 4, 6)
    assert [len(level) for level in shapes] == [6] * 4
    areas = [w * h for level in shapes for w, h in level]
    assert areas == sorted(areas)  # smallest shapes on the finest map
    default = default_shapes(get_model("ssd_tiny", num_classes=1).model.anchor_generator)
    assert mean_best_iou(wh, shapes) > mean_best_iou(wh, default) + 0.1
    assert centred_iou(np.array([[0.2, 0.2]]), np.array([[0.2, 0.2], [0.1, 0.1]])).tolist() == [[1.0, 0.25]]


def test_model_with_fitted_anchors_tiles_them_on_every_cell() -> None:
    shapes = fit_anchor_shapes(_clustered(), 4, 6)
    model = get_model("ssd_tiny", num_classes=2, img_size=128, anchors=shapes)
    assert isinstance(model.model.anchor_generator, FittedBoxGenerator)
    assert model.build_args["anchors"] == shapes
    model.eval()
    with torch.no_grad():
        feats = list(model.model.backbone(torch.zeros(1, 3, 128, 128)).values())
    from torchvision.models.detection.image_list import ImageList

    boxes = model.model.anchor_generator(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), feats)[0]
    assert len(boxes) == sum(6 * f.shape[-2] * f.shape[-1] for f in feats)
    last = boxes[-6:]  # the coarsest map's last cell: the six largest shapes
    wh = (last[:, 2:] - last[:, :2]) / 128
    assert torch.allclose(wh, torch.tensor(shapes[-1]).clamp(max=1), atol=1e-5)
    with pytest.raises(ValueError, match="4 lists of 6"):
        get_model("ssd_tiny", num_classes=2, anchors=shapes[:3])


def test_train_with_anchors_auto_stores_them_and_reloads(synth_set: Path, tmp_path: Path) -> None:
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), model="ssd_tiny", iterations=2, anchors="auto",
                            img_size=96, batch_size=4, threads=1, val_every=100, report=False)
    detector, _ = load_detector(result.last)
    expected = fit_anchor_shapes(relative_box_shapes(load_dataset(synth_set, split="train")), 4, 6, seed=0)
    assert [[tuple(s) for s in level] for level in detector.model.anchor_generator.shapes] == expected
    with pytest.raises(BoxforgeError, match="fitted anchors are for: ssd_mobilenet_fpn, ssd_tiny"):
        boxforge.train(data=[str(synth_set)], out=str(tmp_path / "bad"), model="ssd300_vgg16", anchors="auto",
                       iterations=1)
