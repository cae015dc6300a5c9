"""Load a trained detector (boxforge checkpoint or exported ONNX) and run it on batches of images.

Two backends with one interface, so `eval`, `predict` and the export parity check treat a
`.pt` and a `.onnx` alike:

    backend = load_backend("runs/train/best.pt", "cpu", score_thresh=0.5)
    detections = backend.run(batch)   # batch: (B, 3, S, S) float32 RGB in 0..1, S = backend.img_size

Each detection is `(boxes (N, 4) float32 xyxy in the S x S input's pixels, scores (N,) float32,
labels (N,) int64 0-based into backend.classes)`, sorted by score, highest first.

EMA: a checkpoint trained with `--ema` holds both the raw weights (`model`) and their moving
average (`ema`). `load_detector` uses the EMA weights by default, because they are what the
engine validated and what chose `best.pt`; `prefer_ema=False` gives the raw weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from boxforge.checkpoint import CheckpointError, load_checkpoint
from boxforge.errors import BoxforgeError
from boxforge.models import get_model

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]
EMA_PREFIX = "module."


@dataclass
class ModelMeta:
    """What a loaded model is: enough to preprocess its input and name its labels.

    source: the file; kind: "checkpoint" or "onnx"; weights: "ema" or "model" (checkpoints only);
    postprocess: score_thresh, nms_thresh, detections_per_img (and topk_candidates) in effect.
    """

    source: Path
    kind: str
    model_name: str
    class_names: list[str]
    img_size: int
    weights: str = ""
    postprocess: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def ema_state_dict(ema: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torch `AveragedModel` state dict (`module.` + keys, `n_averaged`) as the plain model's state dict."""
    return {k[len(EMA_PREFIX):]: v for k, v in ema.items() if k.startswith(EMA_PREFIX)}


def check_img_size(img_size: int | None) -> None:
    """--img-size to run at: None (the model's own) or an integer >= 32, as training allows."""
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 32):
        raise BoxforgeError(f"--img-size {img_size!r}: allowed an integer >= 32 (default: the model's own)")


def rebuild_checkpoint(path: str | Path, task: str, *, prefer_ema: bool = True,
                       img_size: int | None = None) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """`get_model(model_name, **build_args)` + the checkpoint's weights (EMA when kept and preferred).

    img_size: build for this input size instead of the checkpoint's (the weights do not depend on it;
    the input resize and the default boxes follow it). Returns (model, checkpoint dict, "ema" or
    "model"); the dict's "img_size" is the size built. Raises one-line errors for files that are not
    boxforge checkpoints of `task` ("detect" or "classify"): plain state dicts, ONNX files, anything unreadable.
    """
    check_img_size(img_size)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise BoxforgeError(f"{path}: is an ONNX model; use load_backend() to run it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip; very old files a pickle
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch file: starts with {head!r})")
    try:
        state = load_checkpoint(path)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a corrupt pickle inside a zip
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt: {type(exc).__name__} {exc})") from exc
    missing = [k for k in ("model_name", "build_args", "class_names", "model") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a boxforge checkpoint (no {', '.join(missing)}); a plain state dict "
                              f"can start training with `boxforge train --weights {path}`")
    found = state.get("task", "detect")
    if found != task:
        needs = "eval, predict and export need a detector" if task == "detect" else "not a classifier"
        raise CheckpointError(f"{path}: a {found} checkpoint; {needs}")
    build_args = dict(state["build_args"], **({"img_size": img_size} if img_size is not None else {}))
    try:
        model = get_model(state["model_name"], **build_args)
    except (ValueError, TypeError) as exc:
        at = f" at --img-size {img_size}" if img_size is not None else ""
        raise CheckpointError(f"{path}: cannot rebuild {state['model_name']!r}{at}: {exc}") from exc
    if img_size is not None:
        state = {**state, "img_size": img_size}
    weights, chosen = state["model"], "model"
    if prefer_ema and isinstance(state.get("ema"), dict) and state["ema"]:
        weights, chosen = ema_state_dict(state["ema"]), "ema"
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise CheckpointError(f"{path}: the {chosen} weights do not fit {state['model_name']}: {first}") from exc
    return model, state, chosen


def load_detector(path: str | Path, device: str | torch.device = "cpu", *, prefer_ema: bool = True,
                  img_size: int | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    """Rebuild a boxforge detection checkpoint in eval mode (see `rebuild_checkpoint`).

    device: "cpu", "cuda", "auto", ... img_size: run at this input size (default: the checkpoint's).
    Returns (Detector on `device`, ModelMeta).
    """
    path = Path(path)
    model, state, chosen = rebuild_checkpoint(path, "detect", prefer_ema=prefer_ema, img_size=img_size)
    model.to(resolve_device(device)).eval()
    meta = ModelMeta(path, "checkpoint", state["model_name"], list(state["class_names"]),
                     int(state.get("img_size", model.img_size)), chosen, model.postprocess_settings())
    return model, meta


class ModelBackend:
    """What both backends share: class names and input size come from their `meta`."""

    meta: ModelMeta

    @property
    def classes(self) -> list[str]:
        return self.meta.class_names

    @property
    def img_size(self) -> int:
        return self.meta.img_size


class TorchBackend(ModelBackend):
    """A Detector in eval mode. Post-processing settings are the Detector's (see `configure`)."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: torch.device) -> None:
        self.model, self.meta, self.device = model, meta, device
        self.notes: list[str] = []  # what the user should know about the settings in effect

    def configure(self, *, score_thresh: float | None = None, iou_thresh: float | None = None,
                  max_det: int | None = None) -> None:
        settings = {"score_thresh": score_thresh, "nms_thresh": iou_thresh, "detections_per_img": max_det}
        self.model.set_postprocess(**{k: v for k, v in settings.items() if v is not None})
        self.meta.postprocess = self.model.postprocess_settings()

    @torch.no_grad()
    def run(self, batch: Tensor) -> list[Detection]:
        outputs = self.model(batch.to(self.device))
        return [(d["boxes"].float().cpu().numpy(), d["scores"].float().cpu().numpy(),
                 d["labels"].cpu().numpy().astype(np.int64)) for d in outputs]


class OnnxBackend(ModelBackend):
    """An exported `.onnx` run with onnxruntime. NMS is inside the graph with the thresholds baked in
    at export; `configure` can only tighten them (higher score threshold, fewer detections) and says so in
    `notes` when asked for more."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.notes: list[str] = []  # settings the graph cannot honour (its NMS is baked in), providers missing
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                self.notes.append("this onnxruntime has no CUDA provider (install onnxruntime-gpu); running on CPU")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BoxforgeError(f"{path}: not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if "boxforge_version" not in props or "class_names" not in props:
            raise BoxforgeError(f"{path}: not an ONNX model exported by boxforge (no boxforge metadata)")
        if props.get("task", "detect") != "detect":
            raise BoxforgeError(f"{path}: an exported {props['task']} model, not a detector; "
                                "run it with boxforge.classifier.load_classifier_backend")
        baked = json.loads(props.get("postprocess", "{}"))
        self.meta = ModelMeta(path, "onnx", props.get("model_name", "?"), json.loads(props["class_names"]),
                              int(props["img_size"]), "", dict(baked), {"metadata": dict(props)})
        self.baked = baked
        self.input_name = self.session.get_inputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = dim if isinstance(dim, int) else None
        self.score_thresh = float(baked.get("score_thresh", 0.0))
        self.max_det = int(baked.get("detections_per_img", 10**9))

    def configure(self, *, score_thresh: float | None = None, iou_thresh: float | None = None,
                  max_det: int | None = None) -> None:
        where = f"{self.meta.source}"
        if score_thresh is not None:
            if score_thresh < self.baked.get("score_thresh", 0.0) - 1e-12:
                self.notes.append(f"{where}: exported with score threshold {self.baked['score_thresh']}; "
                              f"detections between {score_thresh} and that are not in the graph's output "
                              "(re-export with a lower --score-thresh)")
            self.score_thresh = max(score_thresh, float(self.baked.get("score_thresh", 0.0)))
        if iou_thresh is not None and abs(iou_thresh - self.baked.get("nms_thresh", iou_thresh)) > 1e-9:
            self.notes.append(f"{where}: NMS IoU threshold {self.baked['nms_thresh']} is fixed in the graph; "
                          f"{iou_thresh} is ignored (re-export with --iou-thresh {iou_thresh})")
        if max_det is not None:
            if max_det > self.baked.get("detections_per_img", max_det):
                self.notes.append(f"{where}: exported with at most {self.baked['detections_per_img']} detections "
                              f"per image; {max_det} cannot be given")
            self.max_det = min(max_det, int(self.baked.get("detections_per_img", max_det)))
        self.meta.postprocess = {**self.baked, "score_thresh": self.score_thresh, "detections_per_img": self.max_det}

    def run(self, batch: Tensor) -> list[Detection]:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        step = self.fixed_batch or len(array)
        results: list[Detection] = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            real = len(chunk)
            if real < step:  # a static-batch graph: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            boxes, scores, labels, count = self.session.run(None, {self.input_name: chunk})
            for i in range(real):
                n = int(count[i])
                keep = scores[i, :n] > self.score_thresh
                keep[self.max_det:] = False
                results.append((boxes[i, :n][keep].astype(np.float32), scores[i, :n][keep].astype(np.float32),
                                labels[i, :n][keep].astype(np.int64)))
        return results


Backend = TorchBackend | OnnxBackend


def resolve_device(name: str | torch.device | None) -> torch.device:
    """"auto" (or None): CUDA when available, else CPU; "cpu", "cuda", "cuda:1" as given."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoxforgeError(f"--device {name}: CUDA is not available on this machine; use cpu or auto")
    return device


def load_backend(path: str | Path, device: str | torch.device | None = "cpu", *, score_thresh: float | None = None,
                 iou_thresh: float | None = None, max_det: int | None = None, prefer_ema: bool = True,
                 threads: int | None = None, img_size: int | None = None) -> Backend:
    """A `.onnx` file runs with onnxruntime, anything else must be a boxforge checkpoint (run with PyTorch).

    score_thresh, iou_thresh (NMS), max_det: post-processing; None keeps the model's own.
    img_size: the input size to run at (default: the model's own); an ONNX file runs only at its export's size.
    """
    path = Path(path)
    if not path.is_file():
        raise BoxforgeError(f"{path}: no such file")
    check_postprocess(score_thresh, iou_thresh, max_det)
    check_img_size(img_size)
    dev = resolve_device(device)
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(path):
        backend: Backend = OnnxBackend(path, dev, threads)
        check_onnx_size(backend.session, path, img_size)
    else:
        model, meta = load_detector(path, dev, prefer_ema=prefer_ema, img_size=img_size)
        backend = TorchBackend(model, meta, dev)
    backend.configure(score_thresh=score_thresh, iou_thresh=iou_thresh, max_det=max_det)
    return backend


def check_onnx_size(session: Any, path: Path, img_size: int | None) -> None:
    """Refuse an --img-size that an exported graph's fixed (B, 3, S, S) input cannot take."""
    if img_size is None:
        return
    dims = session.get_inputs()[0].shape[2:]
    fixed = [d for d in dims if isinstance(d, int)]
    if fixed and any(d != img_size for d in fixed):
        shown = " x ".join(map(str, dims))
        raise BoxforgeError(f"{path}: exported for a fixed {shown} input; --img-size {img_size} cannot run it "
                            f"(leave --img-size out, or export again with --img-size {img_size})")


def check_postprocess(score_thresh: float | None, iou_thresh: float | None, max_det: int | None) -> None:
    """Refuse settings that would silently give nothing or everything."""
    if score_thresh is not None and not 0.0 <= score_thresh < 1.0:
        raise BoxforgeError(f"score threshold {score_thresh}: allowed 0 <= score < 1")
    if iou_thresh is not None and not 0.0 < iou_thresh <= 1.0:
        raise BoxforgeError(f"NMS IoU threshold {iou_thresh}: allowed 0 < iou <= 1")
    if max_det is not None and (isinstance(max_det, bool) or int(max_det) != max_det or max_det < 1):
        raise BoxforgeError(f"max detections {max_det}: allowed an integer >= 1")


def _looks_like_onnx(path: Path) -> bool:
    """A torch checkpoint is a zip ("PK") or a legacy pickle (0x80); an ONNX protobuf starts with field 1 (0x08)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head[:1] == b"\x08"
