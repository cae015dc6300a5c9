"""load_model / load_detector: rebuilding checkpoints, EMA weights, clear errors for foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from boxforge.checkpoint import save_checkpoint
from boxforge.errors import BoxforgeError
from boxforge.inference.backends import OnnxDetector, TorchDetector
from boxforge.inference.load import ema_state_dict, load_detector, load_model
from tests.inference.conftest import checkpoint_dict, untrained


def test_load_detector_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = untrained(img_size=96)
    path = save_checkpoint(checkpoint_dict(model), tmp_path / "m.pt")
    loaded, meta = load_detector(path)
    assert meta.model_name == "ssd_tiny" and meta.img_size == 96 and meta.weights == "model"
    assert meta.class_names == ["circle", "square", "triangle"] and not loaded.training
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref, got = model(x), loaded(x)
    for a, b in zip(ref, got):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_ema_weights_are_preferred_and_can_be_declined(tmp_path: Path) -> None:
    model = untrained(img_size=96)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the raw weights move on; the average stays behind
    state = ema.state_dict()
    assert "n_averaged" in state and all(k.startswith("module.") for k in state if k != "n_averaged")
    path = save_checkpoint(checkpoint_dict(model, ema=state), tmp_path / "ema.pt")
    with_ema, meta = load_detector(path)
    raw, raw_meta = load_detector(path, prefer_ema=False)
    assert (meta.weights, raw_meta.weights) == ("ema", "model")
    key = "model.head.classification_head.module_list.0.bias"
    assert torch.equal(with_ema.state_dict()[key], ema_state_dict(state)[key])
    assert torch.equal(raw.state_dict()[key], model.state_dict()[key])
    assert not torch.equal(with_ema.state_dict()[key], raw.state_dict()[key])


@pytest.mark.parametrize("kind", ["text", "state_dict", "classifier", "missing"])
def test_foreign_files_give_one_line_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "state_dict":
        torch.save(untrained().state_dict(), path)
    elif kind == "classifier":
        save_checkpoint(checkpoint_dict(untrained(), task="classify"), path)
    with pytest.raises(BoxforgeError) as info:
        load_detector(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    expected = {"text": "not a readable checkpoint", "state_dict": "not a boxforge checkpoint",
                "classifier": "classify checkpoint", "missing": "no such"}[kind]
    assert expected in message


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    state = checkpoint_dict(untrained())
    state["build_args"] = {**state["build_args"], "num_classes": 5, "class_names": list("abcde")}
    path = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(BoxforgeError, match="do not fit ssd_tiny"):
        load_detector(path)


def test_backend_is_chosen_by_content_and_settings_apply(untrained_ckpt: Path, exported: Path,
                                                          tmp_path: Path) -> None:
    backend = load_model(untrained_ckpt, "cpu").backend
    backend.configure(score_thresh=0.3, iou_thresh=0.5, max_det=7)
    assert isinstance(backend, TorchDetector)
    assert backend.meta.postprocess["detections_per_img"] == 7 and backend.meta.postprocess["nms_thresh"] == 0.5
    renamed = tmp_path / "model.bin"  # an ONNX file without its suffix is still recognised
    renamed.write_bytes(exported.read_bytes())
    onnx_backend = load_model(renamed, "cpu").backend
    onnx_backend.configure(score_thresh=0.0001, iou_thresh=0.6)
    assert isinstance(onnx_backend, OnnxDetector) and onnx_backend.runtime and not onnx_backend.notes
    assert onnx_backend.meta.postprocess["nms_thresh"] == 0.6 and onnx_backend.meta.postprocess["score_thresh"] == 1e-4
    with pytest.raises(BoxforgeError, match="ONNX"):
        load_detector(exported)
