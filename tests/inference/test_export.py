"""`boxforge export`: ONNX with NMS in the graph, metadata, parity with PyTorch, static and dynamic batch; every
detector exported and matched against PyTorch by the test's own greedy IoU matching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import boxforge
from boxforge.checkpoint import save_checkpoint
from boxforge.cli import main
from boxforge.export import graph as graph_mod
from boxforge.export.graph import ExportableDetector
from boxforge.export.trace import to_onnx
from boxforge.export.parity import BOX_TOL, SCORE_TOL, ParityReport, compare_detections, synthetic_batch
from boxforge.models import get_model, models_for
from boxforge.inference import load_detector, load_model
from tests.inference.conftest import checkpoint_dict, untrained


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_metadata_describes_input_classes_and_postprocess(exported: Path, trained: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["boxforge_version"] == boxforge.__version__ and props["model_name"] == "ssd_tiny"
    assert json.loads(props["class_names"]) == ["circle", "square", "triangle"] and props["img_size"] == "128"
    norm = json.loads(props["normalization"])
    assert norm["applied_in_graph"] and norm["input_range"] == "0..1 RGB" and len(norm["mean"]) == 3
    post = json.loads(props["postprocess"])
    assert post == {"score_thresh": 0.001, "nms_thresh": 0.45, "detections_per_img": 100, "topk_candidates": 400}
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    assert [i.name for i in model.graph.input] == ["images", "score_thresh", "iou_thresh", "max_det"]
    defaults = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                if t.name in ("score_thresh", "iou_thresh", "max_det")}
    assert defaults["max_det"] == 100 and defaults["max_det"].dtype == np.int64
    assert np.isclose(defaults["score_thresh"], 0.001) and np.isclose(defaults["iou_thresh"], 0.45)
    assert [i.name for i in _session(exported).get_inputs()] == ["images"]  # the rest are optional
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels", "num_detections"]


def test_onnx_outputs_match_pytorch_within_tolerance(exported: Path, trained: Path) -> None:
    """Our own comparison, independent of the export's built-in check: batch of 3, dynamic batch."""
    model, _ = load_detector(trained)
    model.set_postprocess(score_thresh=0.001, nms_thresh=0.45, detections_per_img=100)
    batch = torch.cat([synthetic_batch(128), torch.rand(1, 3, 128, 128)])[:3]
    boxes, scores, labels, count = _session(exported).run(None, {"images": batch.numpy()})
    assert boxes.shape == (3, 100, 4) and scores.shape == (3, 100) and labels.dtype == np.int64
    assert count.shape == (3,)
    with torch.no_grad():
        ref = model(batch)
    report = ParityReport()
    for i, det in enumerate(ref):
        n = int(count[i])
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        assert np.all(np.diff(scores[i, :n]) <= 0)  # sorted by score
        got = (boxes[i, :n], scores[i, :n], labels[i, :n])
        compare_detections((det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy()), got,
                           score_thresh=0.001, max_det=100, ties=np.full(3, -np.inf), tol=1e-6, report=report,
                           where=f"image {i}")
    assert report.ok, report.failures[:3]
    assert report.compared >= 250 and report.max_box_diff < BOX_TOL and report.max_score_diff < SCORE_TOL


def test_export_cli_static_batch_other_size_and_thresholds(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m160.onnx"
    code = main(["export", "--weights", str(trained), "--out", str(out), "--img-size", "160", "--opset", "15",
                 "--score-thresh", "0.2", "--max-det", "20", "--iou-thresh", "0.5"])
    text = capsys.readouterr().out
    assert code == 0 and "parity with PyTorch" in text and ": OK" in text and "batch 1" in text
    session = _session(out)
    assert session.get_inputs()[0].shape == [1, 3, 160, 160]
    boxes, scores, labels, count = session.run(None, {"images": synthetic_batch(160)[:1].numpy()})
    assert boxes.shape == (1, 20, 4) and int(count[0]) <= 20 and (scores[0, :int(count[0])] > 0.2).all()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["postprocess"])["nms_thresh"] == 0.5 and props["img_size"] == "160"


def test_thresholds_are_run_time_inputs_that_match_the_checkpoint(exported: Path, trained: Path) -> None:
    """One exported file, two settings: through the inference layer it gives what the checkpoint gives at each."""
    batch = torch.cat([synthetic_batch(128), torch.rand(1, 3, 128, 128)])
    totals = []
    for settings in ({"score_thresh": 0.2, "iou_thresh": 0.3, "max_det": 5},
                     {"score_thresh": 0.01, "iou_thresh": 0.7, "max_det": 60}):
        found = []
        for path in (trained, exported):
            backend = load_model(path, "cpu").backend
            backend.configure(**settings)
            found.append(backend.run(batch))
            assert not backend.notes and backend.meta.postprocess["detections_per_img"] == settings["max_det"]
        for i, (ref, got) in enumerate(zip(*found)):
            assert len(ref[0]) == len(got[0]) <= settings["max_det"] and (got[1] > settings["score_thresh"]).all()
            pairs, failures = _greedy_match(ref, got)
            assert not failures and pairs == len(ref[0]), f"{settings} image {i}: {failures[:3]}"
        totals.append(sum(len(d[0]) for d in found[1]))
    assert 0 < totals[0] < totals[1], totals  # the file's output follows the inputs


def test_an_export_without_threshold_inputs_still_runs_and_says_what_it_cannot_do(exported: Path,
                                                                                   tmp_path: Path) -> None:
    """Exports made before the thresholds became inputs have them as constants: filtered after, with notes."""
    proto = onnx.load(str(exported))
    kept = [i for i in proto.graph.input if i.name == "images"]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)  # the initializers stay: constants now, as the old exporter baked them
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    backend = load_model(old, "cpu").backend
    assert not backend.runtime
    backend.configure(score_thresh=0.0001, iou_thresh=0.6, max_det=500)
    assert len(backend.notes) == 3 and any("fixed in this older export" in n for n in backend.notes)
    backend.configure(score_thresh=0.3, max_det=4)
    for boxes, scores, labels in backend.run(synthetic_batch(128)):
        assert len(scores) <= 4 and (scores > 0.3).all()


def test_a_wrong_graph_fails_the_parity_check(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    class Unnormalised(ExportableDetector):  # forgets the model's image_std: the classic export bug
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.std.fill_(1.0)

    monkeypatch.setattr("boxforge.export.onnx.ExportableDetector", Unnormalised)
    out = tmp_path / "bad.onnx"
    code = main(["export", "--weights", str(trained), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "parity check failed" in err and not out.exists()
    assert not list(tmp_path.glob(".bad.onnx*"))  # no temporary left behind


def test_eager_graph_equals_the_detector_on_an_untrained_model() -> None:
    """The export-friendly forward itself (before any ONNX) reproduces torchvision's post-processing."""
    model = untrained(img_size=96)
    model.set_postprocess(score_thresh=0.05, nms_thresh=0.45, detections_per_img=50)
    graph = ExportableDetector(model, score_thresh=0.05, iou_thresh=0.45, max_det=50).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref, (boxes, scores, labels, count) = model(x), graph(x)
    for i, det in enumerate(ref):
        n = int(count[i])
        assert n == len(det["boxes"]) > 0
        torch.testing.assert_close(boxes[i, :n], det["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[i, :n], det["scores"], atol=1e-6, rtol=0)
        assert torch.equal(labels[i, :n], det["labels"])


def test_export_of_an_ema_checkpoint_uses_the_ema_weights(tmp_path: Path) -> None:
    model = untrained(img_size=96)
    ema = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    ema["n_averaged"] = torch.tensor(3)
    raw = untrained(img_size=96, seed=1)
    path = save_checkpoint(checkpoint_dict(raw, ema=ema), tmp_path / "ema.pt")
    report = boxforge.export_onnx(path, tmp_path / "ema.onnx", check=False)
    assert report.weights == "ema" and report.parity is None
    x = torch.rand(1, 3, 96, 96)
    _, scores, _, count = _session(tmp_path / "ema.onnx").run(None, {"images": x.numpy()})
    model.set_postprocess(score_thresh=0.001, detections_per_img=100)
    with torch.no_grad():
        expected = model(x)[0]["scores"].numpy()
    np.testing.assert_allclose(scores[0, :int(count[0])][:10], expected[:10], atol=1e-5)


def test_multi_class_nms_matches_onnx_semantics(tmp_path: Path) -> None:
    """The eager NMS and ONNX NonMaxSuppression (as onnxruntime runs it) select the same boxes."""
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]]], dtype=torch.float32)
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.95], [0.1, 0.6, 0.05, 0.2], [0.3, 0.06, 0.5, 0.07]]])
    limits = (torch.tensor([10]), torch.tensor([0.5]), torch.tensor([0.07]))
    selected = graph_mod.multiclass_nms(boxes, scores, *limits)
    assert selected.tolist() == [[0, 0, 3], [0, 0, 2], [0, 1, 1], [0, 2, 2], [0, 2, 0]]

    class Wrapper(torch.nn.Module):
        def forward(self, b: torch.Tensor, s: torch.Tensor, k: torch.Tensor, iou: torch.Tensor,
                    low: torch.Tensor) -> torch.Tensor:
            return graph_mod.multiclass_nms(b, s, k, iou, low)

    path = tmp_path / "nms.onnx"
    to_onnx(Wrapper(), (boxes, scores, *limits), path, input_names=["b", "s", "k", "iou", "low"],
            output_names=["selected"], opset=18)
    feed = dict(zip(["b", "s", "k", "iou", "low"], (t.numpy() for t in (boxes, scores, *limits))))
    (got,) = _session(path).run(None, feed)
    assert got.tolist() == selected.tolist()
    feed["k"], feed["low"] = np.array([1]), np.array([0.5], np.float32)  # the limits are inputs, not constants
    (got,) = _session(path).run(None, feed)
    assert got.tolist() == [[0, 0, 3], [0, 1, 1]]  # class 2's best, 0.5, is not above 0.5
    assert got.tolist() == graph_mod.multiclass_nms(boxes, scores, torch.tensor([1]), limits[1],
                                                    torch.tensor([0.5])).tolist()


@pytest.mark.parametrize("opset", [11])
def test_too_old_opset_is_refused(trained: Path, tmp_path: Path, opset: int, capsys) -> None:
    assert main(["export", "--weights", str(trained), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)]) == 2
    assert "down to opset 15 at the lowest" in capsys.readouterr().err


# --- every detector: export, then the test's own matching of ONNX against PyTorch detections -----------------

# The last convolutions of each model's class and box branches (a new detector needs its line: a test below
# checks that this table names exactly the registry's detectors). Untrained, these give equal scores
# everywhere (0.25 from a near-zero softmax, 0.4167 from yolo's constant prior, 0.9999 saturated for VGG) and
# boxes that all overlap; equal scores leave NMS and top-k free to pick either of two candidates, so
# `_like_trained` redraws them (class logits: std 1 around offsets of std 0.5; box outputs: std 0.5).
_SSD = r"model\.head\.{}_head\.module_list\.\d+"
FINAL_CONVS: dict[str, tuple[str, str]] = {
    "ssd300_vgg16": (_SSD.format("classification"), _SSD.format("regression")),
    "ssd_tiny": (_SSD.format("classification"), _SSD.format("regression")),
    "ssdlite320_mobilenet_v3_large": (_SSD.format("classification") + r"\.1", _SSD.format("regression") + r"\.1"),
    "ssdlite_efficientnet_lite0": (_SSD.format("classification") + r"\.1", _SSD.format("regression") + r"\.1"),
    "ssd_mobilenet_fpn": (r"model\.head\.cls_logits", r"model\.head\.bbox_pred"),
    "yolo_csp": (r"model\.head\.cls\.\d+\.2", r"model\.head\.box\.\d+\.2"),
    "yolo_efficientnet_lite0": (r"model\.head\.cls\.\d+\.2", r"model\.head\.box\.\d+\.2"),
}
# Input sizes: the smallest each allows (models/detection.py VGG_MIN_SIZE), 64 for the SSDs, and 128 for the
# anchor-free models, whose 84 cells at 64 px leave only a handful of boxes after NMS.
EXPORT_SIZE = {"ssd300_vgg16": 268, "yolo_csp": 128, "yolo_efficientnet_lite0": 128}
MATCH_MIN_IOU, MAX_BOX_PX, MAX_SCORE = 0.9, 1.0, 1e-3  # README "export": within 1 px and 1e-3 in score
BORDER = 1e-4  # a detection this close to the lowest kept score may be in one list and not the other


def _test_images(size: int) -> torch.Tensor:
    """(2, 3, S, S) in 0..1: uniform noise, and a smooth gradient with a bright square."""
    torch.manual_seed(5)
    ramp = torch.linspace(0, 1, size)
    smooth = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), 1 - ramp.expand(size, size)])
    smooth[:, size // 4: size // 2, size // 3: size // 3 * 2] = 0.9
    return torch.stack([torch.rand(3, size, size), smooth])


def _like_trained(model: torch.nn.Module, patterns: tuple[str, str], images: torch.Tensor) -> None:
    """Make an untrained detector's scores distinct and its boxes varied, as a trained one's are.

    First BatchNorm statistics are set from `images` (one pass with every BatchNorm layer in training mode,
    the detector in eval mode): untrained running statistics let activations vanish through a deep net
    (1e-10 at yolo_csp's head). Then the final class and box convolutions (`patterns`) are redrawn so that
    their outputs vary with the input by a set amount (std) around random per-channel offsets."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    targets = {}  # conv -> (output std, bias std)
    for pattern, spread in zip(patterns, ((1.0, 0.5), (0.5, None))):
        found = {n: m for n, m in model.named_modules() if re.fullmatch(pattern, n)}
        assert found and all(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in found.values()), pattern
        targets.update({m: spread for m in found.values()})
    measured: dict[torch.nn.Module, float] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out: measured.__setitem__(mod, float(
        (out - mod.bias[None, :, None, None]).std()))) for m in targets]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: after one pass, exactly that batch's statistics
            norm.train()
        for conv in targets:
            conv.weight.normal_()
        model(images)
        for norm in norms:
            norm.eval()
        for conv, (std, bias_std) in targets.items():
            conv.weight.mul_(std / measured[conv])
            if bias_std is not None:
                conv.bias.normal_(0.0, bias_std)
    for hook in hooks:
        hook.remove()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (N, 4) with every box of b (M, 4), xyxy: (N, M)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _greedy_match(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> tuple[int, list[str]]:
    """Match each PyTorch detection (highest score first) to the unmatched ONNX one of its label with the
    highest IoU; returns (pairs, failures). A matched pair must agree within MAX_BOX_PX and MAX_SCORE; a
    detection left unmatched on either side is a failure unless it sits at the border of the kept scores."""
    (rb, rs, rl), (gb, gs, gl) = ref, got
    iou, free, failures, pairs = _iou(rb, gb), np.ones(len(gb), bool), [], 0
    border = min(rs.min(initial=1.0), gs.min(initial=1.0)) + BORDER
    for i in np.argsort(-rs, kind="stable"):
        # IoU, or the coordinates for a box clipped to zero area at the image border (IoU 0 with itself)
        close = (iou[i] >= MATCH_MIN_IOU) | (np.abs(gb - rb[i]).max(axis=1) <= MAX_BOX_PX)
        candidates = np.flatnonzero(free & (gl == rl[i]) & close)
        if not len(candidates):
            if rs[i] > border:
                failures.append(f"PyTorch detection {rb[i].round(1)} label {rl[i]} score {rs[i]:.4f} not in ONNX")
            continue
        j = candidates[np.lexsort((np.abs(gb[candidates] - rb[i]).max(axis=1), -iou[i, candidates]))[0]]
        free[j] = False
        pairs += 1
        box_diff, score_diff = np.abs(rb[i] - gb[j]).max(), abs(rs[i] - gs[j])
        if box_diff > MAX_BOX_PX or score_diff > MAX_SCORE:
            failures.append(f"pair {rb[i].round(1)} / {gb[j].round(1)}: {box_diff:.3g} px, score {score_diff:.3g}")
    failures += [f"ONNX detection {gb[j].round(1)} label {gl[j]} score {gs[j]:.4f} not in PyTorch"
                 for j in np.flatnonzero(free) if gs[j] > border]
    return pairs, failures


def test_the_table_of_final_convolutions_names_every_detector() -> None:
    assert sorted(FINAL_CONVS) == models_for("detect")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FINAL_CONVS))
def test_every_detector_exports_with_pytorch_detections(name: str, tmp_path: Path) -> None:
    size = EXPORT_SIZE.get(name, 64)
    images = _test_images(size)
    torch.manual_seed(0)
    model = get_model(name, num_classes=3, class_names=["circle", "square", "triangle"], img_size=size).eval()
    _like_trained(model, FINAL_CONVS[name], images)
    path = save_checkpoint(checkpoint_dict(model), tmp_path / f"{name}.pt")
    # batch 1: a dynamic batch makes torch.export trace symbolic shapes, twice the time for this
    # every-model test (the dynamic batch is tested on ssd_tiny by the `exported` fixture)
    report = boxforge.export_onnx(path, tmp_path / f"{name}.onnx", dynamic_batch=False, check=False)
    session = _session(tmp_path / f"{name}.onnx")
    runs = [session.run(None, {"images": image[None].numpy()}) for image in images]
    boxes, scores, labels, count = (np.concatenate([r[k] for r in runs]) for k in range(4))
    model.set_postprocess(**report.postprocess)
    with torch.no_grad():
        reference = model(images)
    total = 0
    for i, det in enumerate(reference):
        n = int(count[i])
        assert n == len(det["boxes"]) > 10, f"image {i}: {n} ONNX detections, {len(det['boxes'])} PyTorch"
        ref = (det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy())
        pairs, failures = _greedy_match(ref, (boxes[i, :n], scores[i, :n], labels[i, :n]))
        assert not failures, f"{name} image {i}: {failures[:3]}"
        assert pairs >= n - 2, f"{name} image {i}: only {pairs} of {n} detections matched"
        total += pairs
    assert total > 20
