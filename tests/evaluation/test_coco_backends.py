"""The optional faster-coco-eval fast path gives pycocotools' numbers (stats and the precision array)."""

from __future__ import annotations

import numpy as np
import pytest

from boxforge import load_dataset
from boxforge.evaluation import Predictions, load_predictions
from boxforge.evaluation.coco import evaluate_coco, run_cocoeval
from tests.evaluation.test_coco import write_random_coco

pytest.importorskip("faster_coco_eval")


@pytest.mark.parametrize("seed", [0, 3])
def test_faster_coco_eval_matches_pycocotools(tmp_path, seed):
    gt_path, res_path = write_random_coco(tmp_path, seed)
    index = load_dataset(gt_path)
    preds = load_predictions(res_path, index)
    plain = run_cocoeval(index, preds, backend="pycocotools")
    fast = run_cocoeval(index, preds, backend="faster-coco-eval")
    assert type(plain).__module__.startswith("pycocotools") and type(fast).__module__.startswith("faster_coco_eval")
    assert np.allclose(plain.stats, fast.stats[:12], rtol=0, atol=1e-6)
    assert np.allclose(plain.eval["precision"], fast.eval["precision"], rtol=0, atol=1e-6)
    a, b = (evaluate_coco(index, preds, backend=k) for k in ("pycocotools", "faster-coco-eval"))
    assert a["stats"] == pytest.approx(b["stats"], abs=1e-6)
    assert a["per_class"] == pytest.approx(b["per_class"], abs=1e-6, nan_ok=True)


def test_no_detections_and_unknown_backend(tmp_path):
    gt_path, _ = write_random_coco(tmp_path, 1)
    index = load_dataset(gt_path)
    empty = Predictions(index.classes)
    a, b = (evaluate_coco(index, empty, backend=k) for k in ("pycocotools", "faster-coco-eval"))
    assert a["stats"] == pytest.approx(b["stats"], abs=1e-6)
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_coco(index, empty, backend="fast")


@pytest.mark.parametrize("seed, roboflow", [(0, False), (2, True)])
def test_faster_coco_eval_on_the_users_files_equals_pycocotools_on_them(tmp_path, seed, roboflow):
    # the ground truth is the file itself and the results list is passed as it is (Roboflow: ids from 0)
    from tests.evaluation._coco_files import pycocotools_on_files, write_coco_files

    gt_path, res_path = write_coco_files(tmp_path, seed, roboflow=roboflow, extra_categories=(5,))
    reference, _ = pycocotools_on_files(gt_path, res_path)
    index = load_dataset(gt_path)
    preds = load_predictions(res_path, index)
    fast = run_cocoeval(index, preds, backend="faster-coco-eval")
    assert type(fast).__module__.startswith("faster_coco_eval")
    assert np.allclose(fast.stats[:12], reference.stats, rtol=0, atol=1e-9)
    assert np.allclose(fast.eval["precision"], reference.eval["precision"], rtol=0, atol=1e-9)
    assert evaluate_coco(index, preds)["stats"] == pytest.approx(list(reference.stats), abs=1e-9)  # "auto"
