"""The ways a trained model runs: PyTorch or onnxruntime, detector or classifier, one interface each.

    backend.run(batch)   # batch: (B, 3, S, S) float32 RGB in 0..1, S = backend.img_size
    detector   -> [(boxes (N, 4) float32 xyxy in the S x S input's pixels, scores (N,), labels (N,) int64)]
                  per image, sorted by score, highest first; labels 0-based into backend.classes
    classifier -> (B, C) float32 probabilities

One ONNX session class (`OnnxSession`: providers, boxforge metadata, static-batch padding) serves
both tasks, so `eval`, `predict` and the export parity check treat a `.pt` and a `.onnx` alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from boxforge.errors import BoxforgeError, ModelError

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]
TASKS: tuple[str, ...] = ("detect", "classify")
# A detection graph's run-time post-processing inputs (export/onnx.py): 0-d float32, float32, int64.
THRESHOLD_INPUTS: tuple[str, ...] = ("score_thresh", "iou_thresh", "max_det")


@dataclass
class ModelMeta:
    """What a loaded model is: enough to preprocess its input and name its labels.

    source: the file; kind: "checkpoint", "onnx" or "torchvision weights"; weights: "ema" or "model"
    (checkpoints only); postprocess: score_thresh, nms_thresh, detections_per_img (and
    topk_candidates) in effect (detectors); extra: resize_size, weights_name, the ONNX metadata.
    """

    source: Path
    kind: str
    model_name: str
    class_names: list[str]
    img_size: int
    weights: str = ""
    postprocess: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """`best.pt (yolo_csp, checkpoint, ema weights)`: what the reports print as the model's source."""
        where = f"{self.kind}, {self.weights} weights" if self.weights else self.kind
        if "weights_name" in self.extra:  # torchvision's named weights: the name, and which file was read
            return f"{self.extra['weights_name']} ({self.model_name}, {self.kind} from {self.source})"
        return f"{self.source.name} ({self.model_name}, {where})"


def check_postprocess(score_thresh: float | None, iou_thresh: float | None, max_det: int | None) -> None:
    """Refuse settings that would silently give nothing or everything."""
    if score_thresh is not None and not 0.0 <= score_thresh < 1.0:
        raise BoxforgeError(f"score threshold {score_thresh}: allowed 0 <= score < 1")
    if iou_thresh is not None and not 0.0 < iou_thresh <= 1.0:
        raise BoxforgeError(f"NMS IoU threshold {iou_thresh}: allowed 0 < iou <= 1")
    if max_det is not None and (isinstance(max_det, bool) or int(max_det) != max_det or max_det < 1):
        raise BoxforgeError(f"max detections {max_det}: allowed an integer >= 1")


class Backend:
    """What every backend shares: `meta`, its class names and input size, and notes for the user."""

    meta: ModelMeta
    task: str
    notes: list[str]

    @property
    def classes(self) -> list[str]:
        return self.meta.class_names

    @property
    def img_size(self) -> int:
        return self.meta.img_size

    @property
    def resize_size(self) -> int | None:
        """Classifiers: the short side before the centre crop, where the weights name one (else S / 0.875)."""
        return self.meta.extra.get("resize_size")


class OnnxSession:
    """An onnxruntime session of a boxforge export: providers chosen for the device, the metadata read and
    checked, and `run` that pads the last chunk of a static-batch graph and drops the padding's outputs."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a detector's threshold inputs with defaults draw a warning
        if threads:
            options.intra_op_num_threads = threads
        self.notes: list[str] = []
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
        self.path = path
        self.props = dict(self.session.get_modelmeta().custom_metadata_map)
        if "class_names" not in self.props or ("boxforge_version" not in self.props
                                                and self.props.get("task") != "classify"):
            raise BoxforgeError(f"{path}: not an ONNX model exported by boxforge (no boxforge metadata)")
        self.task = self.props.get("task", "detect")
        if self.task not in TASKS:
            raise BoxforgeError(f"{path}: metadata names task {self.task!r}; boxforge knows: {', '.join(TASKS)}")
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self.input_dims = list(first.shape[2:])
        fed = [i.name for i in (*self.session.get_inputs(), *self.session.get_overridable_initializers())]
        self.optional_inputs = [name for name in fed if name != self.input_name]  # older exports: none

    kind = "onnx"

    def meta(self) -> ModelMeta:
        postprocess = json.loads(self.props.get("postprocess", "{}"))
        return ModelMeta(self.path, self.kind, self.props.get("model_name", "?"),
                         json.loads(self.props["class_names"]), int(self.props["img_size"]), "", dict(postprocess),
                         {"metadata": dict(self.props)})

    def check_size(self, img_size: int | None) -> None:
        """Refuse an --img-size that the graph's fixed (B, 3, S, S) input cannot take."""
        fixed = [d for d in self.input_dims if isinstance(d, int)]
        if img_size is not None and fixed and any(d != img_size for d in fixed):
            shown = " x ".join(map(str, self.input_dims))
            raise BoxforgeError(f"{self.path}: exported for a fixed {shown} input; --img-size {img_size} cannot run "
                                f"it (leave --img-size out, or export again with --img-size {img_size})")

    def run(self, array: np.ndarray, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Every output of the graph for `array` (B, 3, S, S) float32, B rows each, in the graph's order.

        feeds: values for other inputs (a detector's thresholds); those left out take their defaults."""
        step = self.fixed_batch or len(array)
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            real = len(chunk)
            if real < step:  # a static-batch graph: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            outputs = self.session.run(None, {self.input_name: chunk, **(feeds or {})})
            chunks.append([out[:real] for out in outputs])
        return [_concat_rows(parts) for parts in zip(*chunks)]


def _concat_rows(parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """Chunks of one output along the batch; a detector's (B, K, ...) with K data-dependent is padded to the
    largest K first (rows past num_detections are padding anyway: zero, label -1)."""
    if len(parts) == 1 or len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    k = max(p.shape[1] for p in parts)
    fill = -1 if parts[0].dtype == np.int64 else 0
    return np.concatenate([np.pad(p, [(0, 0), (0, k - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=fill)
                           for p in parts])


def threshold_feeds(score_thresh: float, iou_thresh: float, max_det: int) -> dict[str, np.ndarray]:
    """The run-time threshold inputs of a detection graph, as its inputs want them (0-d arrays)."""
    return {"score_thresh": np.array(score_thresh, np.float32), "iou_thresh": np.array(iou_thresh, np.float32),
            "max_det": np.array(max_det, np.int64)}


class OpenVinoSession:
    """An OpenVINO IR (.xml + .bin) written by `boxforge export --format openvino`: the same interface as
    `OnnxSession` (props, task, meta, check_size, run), so the exported-graph backends run it unchanged.

    The IR has no input defaults, so the detector's threshold inputs are always fed: what `run` is not given
    comes from the export's settings (the `postprocess` metadata)."""

    kind = "openvino"

    def __init__(self, path: Path, device: torch.device, threads: int | None = None) -> None:
        core, model = read_openvino(path)
        self.path, self.notes = path, []
        if device.type == "cuda":
            self.notes.append("OpenVINO runs this model on the CPU (its GPU plugin is for Intel GPUs)")
        if not model.has_rt_info(OPENVINO_METADATA):
            raise BoxforgeError(f"{path}: not an OpenVINO model exported by boxforge (no boxforge metadata)")
        self.props = json.loads(model.get_rt_info(OPENVINO_METADATA).astype(str))
        self.task = self.props.get("task", "detect")
        # f32: OpenVINO's CPU plugin otherwise runs bf16 wherever the CPU has bf16 instructions, a silent change
        # of numerics (scores moved by 1e-4 on an AVX512-BF16 Xeon); the INT8 layers of an INT8 IR stay INT8
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        names = [port.get_any_name() for port in model.inputs]
        self.input_name, self.optional_inputs = names[0], names[1:]
        shape = model.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        self.input_dims = [d.get_length() if d.is_static else "?" for d in list(shape)[2:]]
        post = json.loads(self.props.get("postprocess", "{}"))
        self.defaults = threshold_feeds(post["score_thresh"], post["nms_thresh"], post["detections_per_img"]) \
            if post else {}

    meta = OnnxSession.meta
    check_size = OnnxSession.check_size

    def run(self, array: np.ndarray, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """As `OnnxSession.run`: every output for `array` (B, 3, S, S), the static batch padded."""
        step = self.fixed_batch or len(array)
        values = {k: v for k, v in {**self.defaults, **(feeds or {})}.items() if k in self.optional_inputs}
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            real = len(chunk)
            if real < step:
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            result = self.compiled({self.input_name: chunk, **values})
            chunks.append([np.asarray(result[port])[:real] for port in self.compiled.outputs])
        return [_concat_rows(parts) for parts in zip(*chunks)]


OPENVINO_METADATA = "boxforge_metadata"  # the IR's rt_info key holding the ONNX export's metadata, as JSON


def read_openvino(path: Path) -> tuple[Any, Any]:
    """(openvino Core, the model read from `path`), or one line saying what to install / what is wrong."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise BoxforgeError(f"{path}: an OpenVINO model; running it needs OpenVINO: pip install "
                            "'boxforge[openvino]'") from exc
    core = ov.Core()
    try:
        return core, core.read_model(str(path))
    except Exception as exc:  # openvino raises its own untyped errors
        raise BoxforgeError(f"{path}: not a loadable OpenVINO model (is its .bin beside it?): "
                            f"{str(exc).strip().splitlines()[0]}") from exc


class TorchDetector(Backend):
    """A `Detector` in eval mode (a checkpoint's, or the live model under training for validation).

    Post-processing is the Detector's own (see `configure`); amp_dtype: run under autocast (validation
    of a run trained with --amp).
    """

    task = "detect"

    def __init__(self, model: nn.Module, meta: ModelMeta, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.model, self.meta, self.device, self.amp_dtype = model, meta, device, amp_dtype
        self.notes: list[str] = []

    def configure(self, *, score_thresh: float | None = None, iou_thresh: float | None = None,
                  max_det: int | None = None) -> None:
        check_postprocess(score_thresh, iou_thresh, max_det)
        settings = {"score_thresh": score_thresh, "nms_thresh": iou_thresh, "detections_per_img": max_det}
        self.model.set_postprocess(**{k: v for k, v in settings.items() if v is not None})
        self.meta.postprocess = self.model.postprocess_settings()

    @torch.no_grad()
    def run(self, batch: Tensor) -> list[Detection]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs = self.model(batch.to(self.device))
        finally:
            self.model.train(was_training)
        return [(d["boxes"].float().cpu().numpy(), d["scores"].float().cpu().numpy(),
                 d["labels"].cpu().numpy().astype(np.int64)) for d in outputs]


class OnnxDetector(Backend):
    """An exported detector (an OnnxSession, or an OpenVinoSession of the IR converted from it), NMS inside
    the graph. An export with threshold inputs (score_thresh, iou_thresh,
    max_det; export/onnx.py) takes whatever `configure` asks, exactly as a checkpoint does. An older export
    has them baked in: `configure` can then only tighten them (higher score threshold, fewer detections,
    filtered after the graph) and says so in `notes` when asked for more."""

    task = "detect"

    def __init__(self, session: OnnxSession | OpenVinoSession) -> None:
        self.session, self.meta, self.notes = session, session.meta(), list(session.notes)
        self.baked = dict(self.meta.postprocess)
        self.runtime = set(THRESHOLD_INPUTS) <= set(session.optional_inputs)
        self.score_thresh = float(self.baked.get("score_thresh", 0.0))
        self.max_det = int(self.baked.get("detections_per_img", 10**9))
        self.feeds: dict[str, np.ndarray] = {}

    def configure(self, *, score_thresh: float | None = None, iou_thresh: float | None = None,
                  max_det: int | None = None) -> None:
        check_postprocess(score_thresh, iou_thresh, max_det)
        if self.runtime:
            current = self.meta.postprocess
            settings = {"score_thresh": current["score_thresh"] if score_thresh is None else float(score_thresh),
                        "nms_thresh": current["nms_thresh"] if iou_thresh is None else float(iou_thresh),
                        "detections_per_img": current["detections_per_img"] if max_det is None else int(max_det)}
            self.meta.postprocess = {**current, **settings}
            self.score_thresh, self.max_det = settings["score_thresh"], settings["detections_per_img"]
            self.feeds = threshold_feeds(*settings.values())
            return
        self._configure_baked(score_thresh, iou_thresh, max_det)

    def _configure_baked(self, score_thresh: float | None, iou_thresh: float | None, max_det: int | None) -> None:
        """An export without threshold inputs: filter after the graph, note what it cannot give."""
        where, baked = self.meta.source, self.baked
        if score_thresh is not None:
            if score_thresh < baked.get("score_thresh", 0.0) - 1e-12:
                self.notes.append(f"{where}: exported with score threshold {baked['score_thresh']}; detections "
                                  f"between {score_thresh} and that are not in the graph's output (re-export with "
                                  "a lower --score-thresh; a file exported now takes thresholds at run time)")
            self.score_thresh = max(score_thresh, float(baked.get("score_thresh", 0.0)))
        if iou_thresh is not None and abs(iou_thresh - baked.get("nms_thresh", iou_thresh)) > 1e-9:
            self.notes.append(f"{where}: NMS IoU threshold {baked['nms_thresh']} is fixed in this older export; "
                              f"{iou_thresh} is ignored (export again for run-time thresholds)")
        if max_det is not None:
            if max_det > baked.get("detections_per_img", max_det):
                self.notes.append(f"{where}: exported with at most {baked['detections_per_img']} detections "
                                  f"per image; {max_det} cannot be given (export again for run-time thresholds)")
            self.max_det = min(max_det, int(baked.get("detections_per_img", max_det)))
        self.meta.postprocess = {**baked, "score_thresh": self.score_thresh, "detections_per_img": self.max_det}

    def run(self, batch: Tensor) -> list[Detection]:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return split_detections(*self.session.run(array, self.feeds)[:4], self.score_thresh, self.max_det)


def split_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, count: np.ndarray,
                     score_thresh: float, max_det: int) -> list[Detection]:
    """A detection graph's padded outputs (B, K, 4), (B, K), (B, K), (B,) -> one Detection per image, keeping
    scores > score_thresh and at most max_det (a no-op for a graph fed those thresholds)."""
    results: list[Detection] = []
    for i in range(len(count)):
        n = int(count[i])
        keep = scores[i, :n] > score_thresh
        keep[max_det:] = False
        results.append((boxes[i, :n][keep].astype(np.float32), scores[i, :n][keep].astype(np.float32),
                        labels[i, :n][keep].astype(np.int64)))
    return results


class TorchClassifier(Backend):
    """A `ProbabilityModel` (normalise, classify, softmax) in eval mode."""

    task = "classify"

    def __init__(self, model: nn.Module, meta: ModelMeta, device: torch.device) -> None:
        self.model, self.meta, self.device = model, meta, device
        self.notes: list[str] = []

    @torch.no_grad()
    def run(self, batch: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(batch.to(self.device)).float().cpu()
        finally:
            self.model.train(was_training)


class OnnxClassifier(Backend):
    """An exported classifier (softmax inside the graph): an OnnxSession or an OpenVinoSession."""

    task = "classify"

    def __init__(self, session: OnnxSession | OpenVinoSession) -> None:
        self.session, self.meta, self.notes = session, session.meta(), list(session.notes)

    def run(self, batch: Tensor) -> Tensor:
        probs = self.session.run(batch.detach().cpu().numpy().astype(np.float32, copy=False))[0]
        return torch.from_numpy(probs).float()


DetectorBackend = TorchDetector | OnnxDetector
ClassifierBackend = TorchClassifier | OnnxClassifier


def require_task(backend: Backend, task: str, what: str) -> None:
    """A one-line error when `backend` is not a `task` model (e.g. --score-thresh given to a classifier)."""
    if backend.task != task:
        raise ModelError(f"{backend.meta.source}: a {backend.task} model; {what}")
