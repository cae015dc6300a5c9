"""Load a trained classifier (boxforge checkpoint or exported ONNX) and run it on batches of images.

The twin of predictor.py for task "classify". Both backends take the same input and give the same
output, so `eval`, `predict` and the export parity check treat a `.pt` and a `.onnx` alike:

    backend = load_classifier_backend("runs/train/best.pt", "cpu")
    probs = backend.run(batch)   # batch (B, 3, S, S) float32 RGB in 0..1 -> (B, C) float32 probabilities

Pre-processing is the evaluation recipe of training (`preprocess(S)`: resize the short side to
S / 0.875, centre crop S, scale to 0..1); the ImageNet mean/std normalisation and the softmax live
in the model (`ProbabilityModel`), which is also exactly the graph that `export` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from boxforge.checkpoint import load_checkpoint
from boxforge.data.transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transforms
from boxforge.errors import BoxforgeError
from boxforge.predictor import (ModelBackend, ModelMeta, check_img_size, check_onnx_size, rebuild_checkpoint,
                                resolve_device)


class ProbabilityModel(nn.Module):
    """(B, 3, S, S) float RGB in 0..1 -> (B, C) softmax probabilities: normalise, classify, softmax."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std).float().softmax(dim=1)


def preprocess(img_size: int, resize_size: int | None = None) -> Any:
    """uint8 (3, H, W) -> float32 (3, S, S) in 0..1: training's evaluation transform minus the normalisation.

    resize_size: the short side before the centre crop (default S / 0.875, e.g. 256 for 224).
    """
    return classification_transforms(False, img_size, resize_size=resize_size,
                                     mean=None, std=None)  # type: ignore[arg-type]


def model_task(path: str | Path) -> str:
    """"classify" or "detect" for a checkpoint (its "task" key) or an exported ONNX file (its metadata)."""
    path = Path(path)
    if not path.is_file():
        raise BoxforgeError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(1)
    if path.suffix.lower() == ".onnx" or head == b"\x08":
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # onnx raises its own untyped errors
            raise BoxforgeError(f"{path}: not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
        return props.get("task", "detect")
    return str(load_checkpoint(path).get("task", "detect"))


def load_classifier(path: str | Path, device: str | torch.device = "cpu", *, prefer_ema: bool = True,
                    img_size: int | None = None) -> tuple[ProbabilityModel, ModelMeta]:
    """Rebuild a classification checkpoint (EMA weights by default, as validation used) in eval mode.

    img_size: the centre-crop size to run at (default: the checkpoint's); the model pools adaptively.
    """
    path = Path(path)
    model, state, chosen = rebuild_checkpoint(path, "classify", prefer_ema=prefer_ema, img_size=img_size)
    wrapped = ProbabilityModel(model).to(resolve_device(device)).eval()
    meta = ModelMeta(path, "checkpoint", state["model_name"], list(state["class_names"]),
                     int(state.get("img_size", model.img_size)), chosen)
    return wrapped, meta


def load_pretrained_classifier(model_name: str, weights: str, device: str | torch.device | None = "cpu"
                               ) -> TorchClassifier:
    """torchvision's named ImageNet weights (`IMAGENET1K_V1`, ...) for `model_name`, as the reference's
    `--weights NAME --test-only` evaluates them: read from the local torch hub cache only (never downloaded),
    every tensor loaded, class names `weights.meta["categories"]` (1000, in sorted-WordNet-id order), and
    the weights' own pre-processing (crop 224 after a resize to 256 for V1, 232 for V2 recipes)."""
    from boxforge.models.classification import TORCHVISION_CLASSIFIERS, build_classifier
    from boxforge.models.weights import named_weights_file

    if model_name not in TORCHVISION_CLASSIFIERS:
        raise BoxforgeError(f"--model {model_name!r} has no torchvision weights to evaluate; choose one of: "
                            f"{', '.join(TORCHVISION_CLASSIFIERS)}")
    enum = TORCHVISION_CLASSIFIERS[model_name][1]
    file = named_weights_file(weights, enum=enum, model_name=model_name)  # the offline error lives there
    member = enum[weights]
    categories = list(member.meta["categories"])
    net = build_classifier(model_name, num_classes=len(categories), weights=file, class_names=categories)
    if net.transfer_report.reinitialised:
        raise BoxforgeError(f"{file}: not the {model_name} {weights} weights: {net.transfer_report}")
    transform = member.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    net.img_size = crop
    dev = resolve_device(device)
    meta = ModelMeta(file, "torchvision weights", model_name, categories, crop, "",
                     extra={"resize_size": resize, "weights_name": weights})
    return TorchClassifier(ProbabilityModel(net).to(dev).eval(), meta, dev)


class TorchClassifier(ModelBackend):
    def __init__(self, model: ProbabilityModel, meta: ModelMeta, device: torch.device) -> None:
        self.model, self.meta, self.device = model, meta, device
        self.notes: list[str] = []

    @property
    def resize_size(self) -> int | None:
        """The short side before the centre crop, where the weights name one (else S / 0.875)."""
        return self.meta.extra.get("resize_size")

    @torch.no_grad()
    def run(self, batch: Tensor) -> Tensor:
        return self.model(batch.to(self.device)).float().cpu()


class OnnxClassifier(TorchClassifier):
    """An exported classifier run with onnxruntime (softmax inside the graph)."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.notes = []
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BoxforgeError(f"{path}: not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("task") != "classify" or "class_names" not in props:
            raise BoxforgeError(f"{path}: not a classifier exported by boxforge (no task=classify metadata)")
        self.meta = ModelMeta(path, "onnx", props.get("model_name", "?"), json.loads(props["class_names"]),
                              int(props["img_size"]), "", {}, {"metadata": dict(props)})
        self.input_name = self.session.get_inputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = dim if isinstance(dim, int) else None

    def run(self, batch: Tensor) -> Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        step = self.fixed_batch or len(array)
        out = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            real = len(chunk)
            if real < step:  # a static-batch graph: pad, then drop the padding's rows
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run(None, {self.input_name: chunk})[0][:real])
        return torch.from_numpy(np.concatenate(out)).float()


ClassifierBackend = TorchClassifier | OnnxClassifier


def load_classifier_backend(path: str | Path, device: str | torch.device | None = "cpu", *,
                            prefer_ema: bool = True, threads: int | None = None,
                            img_size: int | None = None) -> ClassifierBackend:
    """A `.onnx` file runs with onnxruntime, anything else must be a boxforge classification checkpoint.

    img_size: the centre-crop size (default: the model's); an ONNX file runs only at its export's size.
    """
    path = Path(path)
    if not path.is_file():
        raise BoxforgeError(f"{path}: no such file")
    check_img_size(img_size)
    dev = resolve_device(device)
    with open(path, "rb") as fh:
        onnx_file = path.suffix.lower() == ".onnx" or fh.read(1) == b"\x08"
    if onnx_file:
        backend = OnnxClassifier(path, dev, threads)
        check_onnx_size(backend.session, path, img_size)
        return backend
    model, meta = load_classifier(path, dev, prefer_ema=prefer_ema, img_size=img_size)
    return TorchClassifier(model, meta, dev)
