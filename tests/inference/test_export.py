"""`boxforge export`: ONNX with NMS in the graph, metadata, parity with PyTorch, static and dynamic batch."""

from __future__ import annotations

import json
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
from boxforge.export.graph import ExportableSSD
from boxforge.export.parity import BOX_TOL, SCORE_TOL, ParityReport, compare_detections, synthetic_batch
from boxforge.predictor import load_detector
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
    assert [i.name for i in model.graph.input] == ["images"]
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
    code = main(["export", "--weights", str(trained), "--out", str(out), "--img-size", "160", "--opset", "11",
                 "--score-thresh", "0.2", "--max-det", "20", "--iou-thresh", "0.5"])
    text = capsys.readouterr().out
    assert code == 0 and "parity with PyTorch" in text and ": OK" in text and "batch 1" in text
    session = _session(out)
    assert session.get_inputs()[0].shape == [1, 3, 160, 160]
    boxes, scores, labels, count = session.run(None, {"images": synthetic_batch(160)[:1].numpy()})
    assert boxes.shape == (1, 20, 4) and int(count[0]) <= 20 and (scores[0, :int(count[0])] > 0.2).all()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["postprocess"])["nms_thresh"] == 0.5 and props["img_size"] == "160"


def test_a_wrong_graph_fails_the_parity_check(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    class Unnormalised(ExportableSSD):  # forgets the model's image_std: the classic export bug
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.std.fill_(1.0)

    monkeypatch.setattr("boxforge.export.onnx.ExportableSSD", Unnormalised)
    out = tmp_path / "bad.onnx"
    code = main(["export", "--weights", str(trained), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "parity check failed" in err and not out.exists()
    assert not list(tmp_path.glob(".bad.onnx*"))  # no temporary left behind


def test_eager_graph_equals_the_detector_on_an_untrained_model() -> None:
    """The export-friendly forward itself (before any ONNX) reproduces torchvision's post-processing."""
    model = untrained(img_size=96)
    model.set_postprocess(score_thresh=0.05, nms_thresh=0.45, detections_per_img=50)
    graph = ExportableSSD(model, score_thresh=0.05, iou_thresh=0.45, max_det=50).eval()
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
    selected = graph_mod.MultiClassNMS.apply(boxes, scores, 10, 0.5, 0.07)
    assert selected.tolist() == [[0, 0, 3], [0, 0, 2], [0, 1, 1], [0, 2, 2], [0, 2, 0]]

    class Wrapper(torch.nn.Module):
        def forward(self, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return graph_mod.MultiClassNMS.apply(b, s, 10, 0.5, 0.07)

    path = tmp_path / "nms.onnx"
    torch.onnx.export(Wrapper(), (boxes, scores), str(path), dynamo=False, opset_version=17,
                      input_names=["b", "s"], output_names=["selected"])
    (got,) = _session(path).run(None, {"b": boxes.numpy(), "s": scores.numpy()})
    assert got.tolist() == selected.tolist()


@pytest.mark.parametrize("opset", [9])
def test_too_old_opset_is_refused(trained: Path, tmp_path: Path, opset: int, capsys) -> None:
    assert main(["export", "--weights", str(trained), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)]) == 2
    assert "opset >= 11" in capsys.readouterr().err
