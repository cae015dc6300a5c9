"""Open a trained model once: one file check, one `torch.load` (or one ONNX session) -> `LoadedModel`.

    loaded = load_model("runs/train/best.pt", "cpu")    # or an exported .onnx, or an OpenVINO .xml
    loaded.task          # "detect" or "classify", read from the file itself
    loaded.backend.run(batch)

The task, class names and input size come from what was opened, so `eval`, `predict` and `export`
route on `loaded.task` and pass `loaded` on; nothing reads the file a second time.

EMA: a checkpoint trained with `--ema` holds both the raw weights (`model`) and their moving
average (`ema`). The EMA weights are used by default, because they are what the engine validated
and what chose `best.pt`; `prefer_ema=False` gives the raw weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from boxforge.checkpoint import load_checkpoint
from boxforge.devices import resolve_device
from boxforge.errors import BoxforgeError, CheckpointError
from boxforge.inference.backends import (TASKS, Backend, ModelMeta, OnnxClassifier, OnnxDetector, OnnxSession,
                                         OpenVinoSession, TorchClassifier, TorchDetector)
from boxforge.models import get_model
from boxforge.models.classification import ProbabilityModel

EMA_PREFIX = "module."
ONNX_MAGIC = b"\x08"  # an ONNX protobuf starts with field 1 (ir_version)
XML_MAGIC = (b"<?xm", b"<net")  # an OpenVINO IR's .xml
TORCH_MAGIC = (b"PK", b"\x80")  # torch.save writes a zip; very old files a pickle


@dataclass
class LoadedModel:
    """A model opened once. state: the checkpoint dict (None for ONNX files and named torchvision weights)."""

    backend: Backend
    state: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        return self.backend.task

    @property
    def meta(self) -> ModelMeta:
        return self.backend.meta

    @property
    def module(self) -> nn.Module:
        """The PyTorch model (a Detector, or a classifier wrapped to give probabilities); not for ONNX files."""
        model = getattr(self.backend, "model", None)
        if model is None:
            raise BoxforgeError(f"{self.meta.source}: an exported ONNX file, not a checkpoint; give the .pt it "
                                "was exported from")
        return model


def file_kind(path: str | Path) -> str:
    """"onnx", "openvino" or "checkpoint", from the file's first bytes (and its suffix); one error for anything
    else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.suffix.lower() == ".onnx" or head[:1] == ONNX_MAGIC:
        return "onnx"
    if path.suffix.lower() == ".xml" or head in XML_MAGIC:
        return "openvino"
    if head[:2] == TORCH_MAGIC[0] or head[:1] == TORCH_MAGIC[1]:
        return "checkpoint"
    raise CheckpointError(f"{path}: not a readable checkpoint (not a torch file: starts with {head!r}) nor an "
                          "exported .onnx or OpenVINO .xml model")


def peek_task(path: str | Path) -> str:
    """"detect" or "classify": what a file holds, read cheaply (tensors memory-mapped, ONNX data not loaded),
    for a command that must refuse a mixture before it spends minutes on the first file."""
    path = Path(path)
    if file_kind(path) == "onnx":
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # onnx raises its own untyped errors
            raise BoxforgeError(f"{path}: not a loadable ONNX model: {str(exc).splitlines()[0]}") from exc
        return props.get("task", "detect")
    if file_kind(path) == "openvino":
        return OpenVinoSession(path, torch.device("cpu")).task
    return str(load_checkpoint(path, mmap=True).get("task", "detect"))


def check_img_size(img_size: int | None) -> None:
    """--img-size to run at: None (the model's own) or an integer >= 32, as training allows."""
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 32):
        raise BoxforgeError(f"--img-size {img_size!r}: allowed an integer >= 32 (default: the model's own)")


def ema_state_dict(ema: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torch `AveragedModel` state dict (`module.` + keys, `n_averaged`) as the plain model's state dict."""
    return {k[len(EMA_PREFIX):]: v for k, v in ema.items() if k.startswith(EMA_PREFIX)}


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint dict (weights_only), refused with one line when it is not a boxforge checkpoint."""
    try:
        state = load_checkpoint(path)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a corrupt pickle inside a zip
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt: {type(exc).__name__} {exc})") from exc
    missing = [k for k in ("model_name", "build_args", "class_names", "model") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a boxforge checkpoint (no {', '.join(missing)}); a plain state dict "
                              f"can start training with `boxforge train --weights {path}`")
    return state


def rebuild(state: dict[str, Any], path: Path, *, prefer_ema: bool = True,
            img_size: int | None = None) -> tuple[nn.Module, str]:
    """`get_model(model_name, **build_args)` + the checkpoint's weights (EMA when kept and preferred).

    img_size: build for this input size instead of the checkpoint's (the weights do not depend on it;
    the input resize and the default boxes follow it). Returns (model, "ema" or "model").
    """
    build_args = dict(state["build_args"], **({"img_size": img_size} if img_size is not None else {}))
    try:
        model = get_model(state["model_name"], **build_args)
    except (ValueError, TypeError) as exc:
        at = f" at --img-size {img_size}" if img_size is not None else ""
        raise CheckpointError(f"{path}: cannot rebuild {state['model_name']!r}{at}: {exc}") from exc
    weights, chosen = state["model"], "model"
    if prefer_ema and isinstance(state.get("ema"), dict) and state["ema"]:
        weights, chosen = ema_state_dict(state["ema"]), "ema"
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise CheckpointError(f"{path}: the {chosen} weights do not fit {state['model_name']}: {first}") from exc
    return model, chosen


def _expect(found: str, task: str | None, path: Path, kind: str) -> None:
    if task is None or found == task:
        return
    if kind == "onnx":
        wanted = "detector" if task == "detect" else "classifier"
        raise CheckpointError(f"{path}: an exported {found} model, not a {wanted}")
    needs = "eval, predict and export need a detector" if task == "detect" else "not a classifier"
    raise CheckpointError(f"{path}: a {found} checkpoint; {needs}")


def load_model(path: str | Path, device: str | torch.device | None = "cpu", *, task: str | None = None,
               prefer_ema: bool = True, img_size: int | None = None, threads: int | None = None) -> LoadedModel:
    """Open a boxforge checkpoint (run with PyTorch), an exported `.onnx` (onnxruntime) or an OpenVINO `.xml`
    (OpenVINO, the optional extra `boxforge[openvino]`), once.

    task: the task the caller needs ("detect" or "classify"; None: whatever the file holds).
    img_size: the input (classifiers: centre-crop) size to run at; an ONNX file runs only at its export's.
    threads: onnxruntime's intra-op threads (PyTorch's are the process's).
    """
    path = Path(path)
    if task is not None and task not in TASKS:
        raise BoxforgeError(f"task {task!r}; choose one of: {', '.join(TASKS)}")
    check_img_size(img_size)
    kind = file_kind(path)
    dev = resolve_device(device)
    if kind in ("onnx", "openvino"):
        session = (OnnxSession if kind == "onnx" else OpenVinoSession)(path, dev, threads)
        _expect(session.task, task, path, "onnx")
        session.check_size(img_size)
        return LoadedModel(OnnxDetector(session) if session.task == "detect" else OnnxClassifier(session))
    state = read_state(path)
    found = state.get("task", "detect")
    _expect(found, task, path, kind)
    model, chosen = rebuild(state, path, prefer_ema=prefer_ema, img_size=img_size)
    size = int(img_size if img_size is not None else state.get("img_size", model.img_size))
    meta = ModelMeta(path, "checkpoint", state["model_name"], list(state["class_names"]), size, chosen)
    if found == "classify":
        return LoadedModel(TorchClassifier(ProbabilityModel(model).to(dev).eval(), meta, dev), state)
    model.to(dev).eval()
    meta.postprocess = model.postprocess_settings()
    return LoadedModel(TorchDetector(model, meta, dev), state)


def load_detector(path: str | Path, device: str | torch.device = "cpu", *, prefer_ema: bool = True,
                  img_size: int | None = None) -> tuple[nn.Module, ModelMeta]:
    """(Detector in eval mode, ModelMeta) of a detection checkpoint: what export and scripts need."""
    loaded = load_model(path, device, task="detect", prefer_ema=prefer_ema, img_size=img_size)
    return loaded.module, loaded.meta


def load_pretrained_classifier(model_name: str, weights: str,
                               device: str | torch.device | None = "cpu") -> LoadedModel:
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
    return LoadedModel(TorchClassifier(ProbabilityModel(net).to(dev).eval(), meta, dev))
