"""Export a classification checkpoint to ONNX: normalisation and softmax inside the graph.

The graph (`models.classification.ProbabilityModel`) takes `images (B, 3, S, S)` float32 RGB in 0..1 (the
picture's short side resized to S / 0.875, then centre-cropped to S: training's evaluation
transform) and returns `probabilities (B, C)`. Metadata (`onnx.load(path).metadata_props`): task
"classify", model_name, img_size, resize_size, class_names (JSON), normalization (JSON),
boxforge_version. After writing, the file and the checkpoint are run on the same images and must
agree (same top-1, probabilities within PARITY_ATOL); a mismatch is an error and leaves no file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from boxforge.data.images import read_image
from boxforge.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxforge.export.onnx import DEFAULT_OPSET, ExportError, save_with_metadata
from boxforge.export.trace import MIN_OPSET, to_onnx
from boxforge.files import atomic_path
from boxforge.inference.backends import ModelMeta, OnnxClassifier, OnnxSession
from boxforge.inference.batches import classifier_input
from boxforge.inference.load import LoadedModel
from boxforge.models.classification import ProbabilityModel

PARITY_ATOL = 1e-4
INPUT_FORMAT = ("images: (B, 3, S, S) float32 RGB in 0..1: short side resized to S / 0.875, centre crop S; "
                "mean/std normalisation happens inside the graph")
OUTPUT_FORMAT = "probabilities: (B, C) float32 softmax over class_names"


@dataclass
class ClassifierExportReport:
    path: Path
    img_size: int
    opset: int
    dynamic_batch: bool
    weights: str
    max_abs_diff: float | None
    size_bytes: int

    def summary(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "batch 1"
        parity = ("parity not checked" if self.max_abs_diff is None else
                  f"parity: same top-1, max probability difference {self.max_abs_diff:.2e} (limit {PARITY_ATOL:g})")
        return (f"exported {self.path} ({self.size_bytes / 1e6:.1f} MB, opset {self.opset}, input (B, 3, "
                f"{self.img_size}, {self.img_size}), {batch}, {self.weights} weights, softmax in the graph)\n"
                f"  {parity}")


def export_classifier(loaded: LoadedModel, out: str | Path, *, opset: int = DEFAULT_OPSET,
                      dynamic_batch: bool = False, check_images: list[str | Path] | None = None,
                      check: bool = True) -> ClassifierExportReport:
    """Write `out` (.onnx) from the loaded classification checkpoint and check it (see module docstring).

    The crop size is the one `loaded` was opened with (torchvision classifiers pool adaptively)."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: torch's exporter converts down to opset {MIN_OPSET} at the lowest")
    model, meta = loaded.module, loaded.meta
    size = int(meta.img_size)
    out = Path(out)
    with atomic_path(out) as tmp:  # a failed check leaves no file
        _trace(model, tmp, size, opset, dynamic_batch)
        _write_metadata(tmp, meta, size)
        diff = _check_parity(model, tmp, size, check_images) if check else None
    return ClassifierExportReport(out, size, opset, dynamic_batch, meta.weights, diff, out.stat().st_size)


def _trace(model: ProbabilityModel, path: Path, size: int, opset: int, dynamic_batch: bool) -> None:
    example = torch.rand(2 if dynamic_batch else 1, 3, size, size)
    to_onnx(model, (example,), path, input_names=["images"], output_names=["probabilities"], opset=opset,
            dynamic_batch=dynamic_batch)


def _write_metadata(path: Path, meta: ModelMeta, size: int) -> None:
    import onnx

    from boxforge import __version__

    proto = onnx.load(str(path))
    props = {
        "boxforge_version": __version__, "task": "classify", "model_name": meta.model_name, "img_size": str(size),
        "resize_size": str(round(size / 0.875)), "class_names": json.dumps(list(meta.class_names)),
        "num_classes": str(len(meta.class_names)), "input_format": INPUT_FORMAT, "output_format": OUTPUT_FORMAT,
        "normalization": json.dumps({"input_range": "0..1 RGB", "applied_in_graph": True,
                                     "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}),
        "weights": meta.weights, "source": meta.source.name,
    }
    save_with_metadata(proto, path, props,
                       f"boxforge {meta.model_name} classifier over {len(meta.class_names)} classes. {INPUT_FORMAT}")


def _check_parity(model: ProbabilityModel, path: Path, size: int, images: list[str | Path] | None) -> float:
    """Largest probability difference between checkpoint and file; raises ExportError past PARITY_ATOL."""
    if images:
        transform = classifier_input(size)
        batch = torch.stack([transform(read_image(Path(p))).as_subclass(torch.Tensor) for p in images])
    else:
        batch = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch)
    got = OnnxClassifier(OnnxSession(path, torch.device("cpu"))).run(batch)
    diff = float((got - expected).abs().max())
    if diff > PARITY_ATOL or not torch.equal(got.argmax(1), expected.argmax(1)):
        raise ExportError(f"{path}: parity check failed: probabilities differ by up to {diff:.2e} "
                          f"(limit {PARITY_ATOL:g}) or the top-1 class changed")
    return diff
