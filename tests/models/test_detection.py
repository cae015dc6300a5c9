"""Every detector builds, takes one training step and predicts 0-based labels; the registry's errors."""

from __future__ import annotations

import pytest
import torch

from boxforge.models import MODELS, Detector, get_model, models_for
from tests.models.conftest import tiny_batch

# The smallest input each architecture accepts without degenerate maps (SSD300's unpadded
# last convs need >= 268 px), so the whole file stays well under a minute on two cores.
DETECTOR_SIZES = {"ssd_tiny": 128, "ssd_mobilenet_fpn": 128, "ssdlite320_mobilenet_v3_large": 128,
                  "ssd300_vgg16": 268, "yolo_csp": 128, "ssdlite_efficientnet_lite0": 128,
                  "yolo_efficientnet_lite0": 128}


def test_every_detector_is_listed_with_a_test_size() -> None:
    assert set(models_for("detect")) == set(DETECTOR_SIZES)


@pytest.mark.parametrize("name", sorted(DETECTOR_SIZES))
def test_detector_trains_one_step_and_predicts(name: str) -> None:
    size = DETECTOR_SIZES[name]
    model = get_model(name, num_classes=3, img_size=size, class_names=["circle", "square", "star"])
    assert isinstance(model, Detector)
    assert (model.img_size, model.num_classes, model.class_names) == (size, 3, ["circle", "square", "star"])
    assert model.model.transform.fixed_size == (size, size)

    images, targets = tiny_batch()
    model.train()
    losses = model(images, targets)
    extra = {"bbox_distribution"} if name.startswith("yolo_") else set()  # their distribution focal loss
    assert set(losses) == {"bbox_regression", "classification"} | extra
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.model.head.parameters() if p.requires_grad]
    assert head_grads and all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(g.abs().sum() > 0 for g in head_grads)

    model.eval()
    model.set_postprocess(score_thresh=0.0)  # keep every class's top boxes, so labels of all classes show
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == 2
    for image, pred in zip(images, predictions):
        assert set(pred) == {"boxes", "scores", "labels"}
        n = len(pred["labels"])
        assert 0 < n <= 100
        assert pred["boxes"].shape == (n, 4) and pred["scores"].shape == (n,)
        assert pred["labels"].dtype == torch.int64
        assert set(pred["labels"].tolist()) <= {0, 1, 2}
        # boxes come back in the input image's pixels, not the resized ones
        assert float(pred["boxes"][:, 2].max()) <= image.shape[2] + 1e-3
        assert float(pred["boxes"][:, 3].max()) <= image.shape[1] + 1e-3


def test_eval_defaults_and_batched_tensor_input() -> None:
    model = get_model("ssd_tiny", num_classes=2, img_size=96).eval()
    assert model.postprocess_settings()["score_thresh"] == 0.01
    assert model.postprocess_settings()["nms_thresh"] == 0.45
    assert model.postprocess_settings()["detections_per_img"] == 100
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 80))
    assert len(out) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in out)


def test_fpn_with_mobilenet_v3_backbone_runs() -> None:
    model = get_model("ssd_mobilenet_fpn", num_classes=2, img_size=96, backbone="mobilenet_v3_large",
                      fpn_channels=32, head_convs=1)
    images, targets = tiny_batch()
    targets = [{"boxes": t["boxes"], "labels": t["labels"].clamp(max=1)} for t in targets]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.build_args["backbone"] == "mobilenet_v3_large"


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError) as err:
        get_model("yolo9000", num_classes=3)
    message = str(err.value)
    assert message.startswith("unknown model 'yolo9000'; choose one of: ")
    assert all(name in message for name in MODELS)


def test_tasks_cover_every_model() -> None:
    assert {spec.task for spec in MODELS.values()} == {"detect", "classify"}  # one table: every model has its task
    assert {"mobilenet_v2", "shufflenet_v2_x1_0", "resnet18", "resnet50"} <= set(models_for("classify"))
    with pytest.raises(ValueError, match="choose one of: classify, detect"):
        models_for("segment")


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 0}, "num_classes=0"),
    ({"num_classes": 2, "class_names": ["a"]}, "1 class_names for num_classes=2"),
    ({"num_classes": 2, "img_size": 16}, "img_size=16; allowed: an integer >= 64"),
    ({"num_classes": 2, "score_tresh": 0.5}, "unknown option.*score_tresh.*choose from: score_thresh"),
])
def test_builder_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_model("ssd_tiny", **kwargs)


def test_vgg_size_and_fpn_backbone_errors() -> None:
    with pytest.raises(ValueError, match=">= 268"):
        get_model("ssd300_vgg16", num_classes=2, img_size=200)
    with pytest.raises(ValueError, match="choose one of: mobilenet_v2, mobilenet_v3_large"):
        get_model("ssd_mobilenet_fpn", num_classes=2, backbone="resnet18")


def test_classifier_builds_with_class_count() -> None:
    model = get_model("resnet18", num_classes=4, class_names=list("abcd"))
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    assert model.class_names == ["a", "b", "c", "d"]
