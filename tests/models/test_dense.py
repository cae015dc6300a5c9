"""yolo_csp, the anchor-free detector: shapes, assignment, losses, learning, export, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import boxforge
from boxforge.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from boxforge.data.synth import synthesize_detection
from boxforge.models import get_model
from boxforge.models.dense import cell_centres, distances_to_boxes, expected_distances
from boxforge.models.dense_loss import assign, pad_targets, pairwise_iou


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 70.0, 120.0, 125.0]]),
             "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def test_builds_at_sizes_multiple_of_32_and_refuses_others() -> None:
    model = get_model("yolo_csp", num_classes=3, img_size=128)
    assert model.name == "yolo_csp" and model.build_args["scale"] == "n"
    assert 2.5e6 < sum(p.numel() for p in model.parameters()) < 3.5e6
    with pytest.raises(ValueError, match="multiple of 32"):
        get_model("yolo_csp", num_classes=3, img_size=100)
    with pytest.raises(ValueError, match="unknown scale"):
        get_model("yolo_csp", num_classes=3, scale="xl")
    with pytest.raises(ValueError, match="task alignment"):
        get_model("yolo_csp", num_classes=3, iou_thresh=0.5)


def test_eval_output_is_in_input_pixels_and_0_based() -> None:
    model = get_model("yolo_csp", num_classes=3, img_size=128).eval()
    model.set_postprocess(score_thresh=0.0, nms_thresh=1.0)  # untrained boxes coincide; keep them all
    with torch.no_grad():
        out = model([torch.rand(3, 200, 300), torch.rand(3, 64, 64)])
    assert len(out) == 2
    boxes, labels = out[0]["boxes"], out[0]["labels"]
    assert len(boxes) == 100  # detections_per_img
    assert float(boxes[:, 2].max()) <= 300 and float(boxes[:, 3].max()) <= 200 and float(boxes.min()) >= 0
    assert set(labels.tolist()) <= {0, 1, 2}
    assert (out[0]["scores"][:-1] >= out[0]["scores"][1:]).all()


def test_distance_decoding() -> None:
    logits = torch.full((1, 1, 4 * 16), -50.0)
    for side, bin_ in enumerate((2, 3, 4, 5)):
        logits[0, 0, side * 16 + bin_] = 50.0  # a one-hot distribution: expectation = the bin
    dist = expected_distances(logits, 16)
    assert torch.allclose(dist, torch.tensor([[[2.0, 3.0, 4.0, 5.0]]]))
    boxes = distances_to_boxes(dist, torch.tensor([[100.0, 50.0]]), torch.tensor([8.0]))
    assert torch.allclose(boxes, torch.tensor([[[84.0, 26.0, 132.0, 90.0]]]))


def test_cell_centres_follow_the_strides() -> None:
    feats = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    points, strides = cell_centres(feats, (8, 16))
    assert points.shape == (20, 2) and strides.tolist() == [8.0] * 16 + [16.0] * 4
    assert points[0].tolist() == [4.0, 4.0] and points[16].tolist() == [8.0, 8.0] and points[5].tolist() == [12.0, 12.0]


def test_assignment_picks_cells_inside_the_box_aligned_with_the_prediction() -> None:
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [100.0, 100.0]])
    gt_boxes, gt_labels, valid = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 20.0, 10.0]]),
                                               "labels": torch.tensor([1])}], torch.device("cpu"))
    scores = torch.full((1, 4, 2), 0.5)
    pred = torch.tensor([[[0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0],
                          [0.0, 0.0, 20.0, 10.0]]])
    fg, assigned, targets = assign(scores, pred, points, gt_boxes, gt_labels, valid, topk=1)
    # the cell with the exact box wins; cell 2 is outside the box (x=25 > 20) even with a perfect prediction
    assert fg.tolist() == [[True, False, False, False]] and assigned[0, 0] == 0
    assert torch.allclose(targets[0, 0], torch.tensor([0.0, 1.0]))  # class 1, target = its IoU (1.0)
    fg, _, targets = assign(scores, pred, points, gt_boxes, gt_labels, valid, topk=10)
    assert fg.tolist() == [[True, True, False, False]]
    # target = alignment / best alignment x best IoU = (0.5^0.5 x 0.5^6) / (0.5^0.5 x 1^6) x 1.0
    assert torch.allclose(targets[0, 1, 1], torch.tensor(0.5**6)) and targets[0, 1, 0] == 0


def test_an_object_smaller_than_a_cell_still_gets_its_nearest_cell() -> None:
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    gt_boxes, gt_labels, valid = pad_targets([{"boxes": torch.tensor([[8.5, 8.5, 10.5, 10.5]]),
                                               "labels": torch.tensor([0])}], torch.device("cpu"))
    fg, _, _ = assign(torch.full((1, 4, 1), 0.5), torch.zeros(1, 4, 4), points, gt_boxes, gt_labels, valid)
    assert fg.tolist() == [[False, False, False, True]]


def test_a_cell_claimed_by_two_objects_keeps_the_better_overlap() -> None:
    points = torch.tensor([[10.0, 10.0]])
    gt_boxes, gt_labels, valid = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 40.0, 40.0]]),
                                               "labels": torch.tensor([0, 1])}], torch.device("cpu"))
    pred = torch.tensor([[[4.0, 4.0, 40.0, 40.0]]])
    fg, assigned, targets = assign(torch.full((1, 1, 2), 0.5), pred, points, gt_boxes, gt_labels, valid)
    assert fg.tolist() == [[True]] and assigned.tolist() == [[1]] and targets[0, 0, 0] == 0


def test_pairwise_iou() -> None:
    a = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    b = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    assert torch.allclose(pairwise_iou(a, b), torch.tensor([[[1.0, 1 / 3, 0.0]]]), atol=1e-6)


def test_losses_are_finite_with_and_without_objects_and_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = get_model("yolo_csp", num_classes=3, img_size=128).train()
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 96, 160)], _targets())
    assert set(losses) == {"bbox_regression", "classification", "bbox_distribution"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # Box branches learn only on the levels that got positives (here stride 8, where these boxes' cells
    # align best); everything else must be reached.
    unreached = [n for n, p in model.named_parameters() if (p.grad is None or not p.grad.abs().sum() > 0)
                 and not n.startswith(("model.head.box.1.", "model.head.box.2."))]
    assert not unreached, unreached[:5]
    assert model.model.head.box[0][-1].weight.grad.abs().sum() > 0
    empty = model([torch.rand(3, 128, 128)], [_targets()[1]])
    assert float(empty["bbox_regression"].detach()) == 0.0 and float(empty["classification"].detach()) > 0


def test_overfits_two_images() -> None:
    """A few dozen AdamW steps on two images must fit them: the losses and assignment work together."""
    torch.manual_seed(0)
    model = get_model("yolo_csp", num_classes=3, img_size=128).train()
    images = [torch.rand(3, 128, 128) * 0.2, torch.rand(3, 128, 128) * 0.2]
    images[0][:, 20:90, 10:60] = 0.9
    images[0][:, 70:125, 70:120] = 0.5
    targets = _targets()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        loss = sum(model(images, targets).values())
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    # BatchNorm's running statistics (momentum 0.03, started at var 1) trail the tiny variances of
    # 2 flat images by orders of magnitude after 60 steps; settle them (0.97^300 ~ 1e-4) before eval.
    batch = model.model.transform(images)[0].tensors
    with torch.no_grad():
        for _ in range(300):
            model.model._heads(batch)
    model.eval()
    with torch.no_grad():
        det = model(images[:1])[0]
    best = det["boxes"][:2]
    iou = pairwise_iou(best[None], targets[0]["boxes"][None])[0].amax(0)
    assert float(iou.min()) > 0.5, (det["boxes"][:3], det["labels"][:3])


def test_trains_with_the_model_recipe_then_exports_and_reloads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthesize_detection(data, images=12, classes=2, seed=0, image_size=(160, 120))
    result = boxforge.train(data=str(data), model="yolo_csp", out=str(tmp_path / "run"), iterations=6,
                            img_size=96 + 32, batch_size=4, threads=1, seed=0, report=False)
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "optimizer: adamw" in cfg and "ema: true" in cfg  # the model's own recipe (config.MODEL_DEFAULTS)
    from boxforge.api import export_onnx
    from boxforge.inference import load_detector

    model, meta = load_detector(result.last, "cpu")
    assert meta.model_name == "yolo_csp" and model.img_size == 128
    report = export_onnx(result.last, tmp_path / "m.onnx")
    assert report.parity is not None and report.parity.ok, report.summary()


def test_checkpoint_rebuild_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = get_model("yolo_csp", num_classes=2, img_size=96, scale="n").eval()
    state = {"format": CHECKPOINT_FORMAT, "task": "detect", "model_name": model.name,
             "class_names": list(model.class_names), "img_size": 96, "config": {}, "build_args": model.build_args,
             "model": model.state_dict(), "ema": None, "epoch": 1, "iteration": 0, "global_step": 1}
    path = save_checkpoint(state, tmp_path / "m.pt")
    from boxforge.inference import load_detector

    again, _ = load_detector(path, "cpu")
    x = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        a, b = model(x)[0], again(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_the_bare_default_picks_its_input_size_from_the_boxes(tmp_path: Path, capsys) -> None:
    """`train --data DATA` alone: yolo_csp, its recipe, and --img-size auto (models/input_size.py)."""
    data = tmp_path / "data"
    synthesize_detection(data, images=6, classes=1, seed=1, image_size=(160, 120))
    result = boxforge.train(data=str(data), out=str(tmp_path / "run"), iterations=1, batch_size=2, threads=1,
                            report=False)
    from boxforge.checkpoint import load_checkpoint
    from boxforge.models.input_size import SIZES

    saved = load_checkpoint(result.last)
    assert saved["model_name"] == "yolo_csp" and saved["img_size"] in SIZES
    assert f"--img-size auto: {saved['img_size']} px" in capsys.readouterr().out
