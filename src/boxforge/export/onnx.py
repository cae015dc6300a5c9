"""`export_onnx`: a boxforge checkpoint -> one ONNX file with pre-processing metadata and NMS in the graph.

The graph (see graph.py) takes `images (B, 3, S, S)` float32 RGB in 0..1, resized to S x S (aspect
ratio not kept, no letterbox: what training did), and returns `boxes (B, K, 4)` xyxy in input pixels,
`scores (B, K)`, `labels (B, K)` int64 0-based, `num_detections (B,)`. Everything a runtime needs to
feed it and read it is in the model's metadata (`onnx.load(path).metadata_props`): img_size,
class_names (JSON), normalization (JSON: applied inside the graph, for information), postprocess (JSON),
boxforge_version, model_name.

Thresholds at run time: `score_thresh`, `iou_thresh` (0-d float32) and `max_det` (0-d int64) are graph
inputs too, each backed by an initializer of the same name holding the export's value. ONNX treats such
an initializer as the input's default: a program that feeds only `images` gets the export's settings
(onnxruntime lists the three under `get_overridable_initializers()`, not `get_inputs()`), and boxforge's
backend feeds `predict --score-thresh/--iou-thresh/--max-det` (K = min(max_det, C * A) rows come out).

Exported with torch's exporter (`torch.onnx.export(..., dynamo=True)`, export/trace.py), our NMS as the
standard ONNX NonMaxSuppression op (opset 18, or down to 15 converted), which every runtime implements.
After writing, the export runs both the checkpoint and the file on a few images and compares the
detections (parity.py); a mismatch is an error and leaves no file behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from boxforge.errors import ExportError
from boxforge.files import atomic_path
from boxforge.export.graph import ExportableDetector, WithRawOutputs
from boxforge.export.parity import ParityReport, check_parity
from boxforge.export.trace import MIN_OPSET, NATIVE_OPSET, to_onnx
from boxforge.inference.backends import THRESHOLD_INPUTS, ModelMeta
from boxforge.inference.load import LoadedModel

DEFAULT_OPSET = NATIVE_OPSET
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUT_NAMES = ("raw_boxes", "raw_scores")  # the network alone, for the parity check only
INPUT_FORMAT = ("images: (B, 3, S, S) float32 RGB in 0..1, the picture resized to S x S (aspect ratio not kept, "
                "no letterbox); mean/std normalisation happens inside the graph")
OUTPUT_FORMAT = ("boxes (B, K, 4) float32 xyxy in input pixels; scores (B, K) float32; labels (B, K) int64, "
                 "0-based into class_names; num_detections (B,) int64: rows past it are padding "
                 "(zero box and score, label -1); rows sorted by score")


@dataclass
class ExportReport:
    path: Path
    img_size: int
    opset: int
    dynamic_batch: bool
    postprocess: dict
    weights: str
    parity: ParityReport | None
    size_bytes: int

    def summary(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "batch 1"
        lines = [f"exported {self.path} ({self.size_bytes / 1e6:.1f} MB, opset {self.opset}, input (B, 3, "
                 f"{self.img_size}, {self.img_size}), {batch}, {self.weights} weights)",
                 "  post-processing in the graph, defaults of its run-time inputs: "
                 + ", ".join(f"{k} {v}" for k, v in self.postprocess.items())]
        if self.parity is not None:
            lines.append("  " + self.parity.summary())
        return "\n".join(lines)


def export_onnx(loaded: LoadedModel, out: str | Path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                score_thresh: float = 0.001, iou_thresh: float | None = None, max_det: int = 100,
                check_images: list[str | Path] | None = None, check: bool = True) -> ExportReport:
    """Export the loaded detection checkpoint to `out` (.onnx) and check it against the checkpoint.

    The input size and the weights (EMA or raw) are the ones `loaded` was opened with.

    score_thresh, iou_thresh (NMS; default: the model's), max_det: the defaults of the graph's threshold
    inputs (see the module docstring). These defaults suit evaluation (mAP wants low-score detections);
    `predict` feeds its own. check_images: image files for the parity check (default: 4 synthetic images).
    """
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: torch's exporter writes opset {NATIVE_OPSET}, and onnx converts it "
                          f"down to opset {MIN_OPSET} at the lowest")
    if not 0.0 <= score_thresh < 1.0 or max_det < 1:
        raise ExportError(f"score_thresh {score_thresh} must be in [0, 1) and max_det {max_det} >= 1")
    out = Path(out)
    model, meta = loaded.module, loaded.meta
    size = int(meta.img_size)
    settings = {"score_thresh": float(score_thresh), "nms_thresh": float(iou_thresh if iou_thresh is not None
                                                                           else model.model.nms_thresh),
                "detections_per_img": int(max_det), "topk_candidates": int(model.model.topk_candidates)}
    if not 0.0 < settings["nms_thresh"] <= 1.0:
        raise ExportError(f"iou_thresh {settings['nms_thresh']} must be in (0, 1]")
    model.set_postprocess(**settings)
    graph = ExportableDetector(model, score_thresh=settings["score_thresh"], iou_thresh=settings["nms_thresh"],
                          max_det=settings["detections_per_img"], topk_candidates=settings["topk_candidates"]).eval()
    with atomic_path(out) as tmp:  # a failed check leaves no file
        with_raw = _trace(graph, tmp, size, opset, dynamic_batch)
        _write_metadata(tmp, meta, model, size, settings)
        parity = None
        if check:
            parity = check_parity(model, graph, tmp, size, check_images, with_raw=with_raw)
            if not parity.ok:
                raise ExportError(f"{out}: parity check failed, the ONNX model does not reproduce the checkpoint: "
                                  f"{parity.summary()}")
    return ExportReport(out, size, opset, dynamic_batch, settings, meta.weights, parity, out.stat().st_size)


def _trace(graph: ExportableDetector, path: Path, size: int, opset: int, dynamic_batch: bool) -> bytes:
    """Export `graph` with its threshold inputs, give those inputs the export's values as defaults, and write
    the file with the four outputs of the module docstring.

    Traced once, as WithRawOutputs: returns that six-output model (serialised) for the parity check, whose
    first step compares the network's outputs; the file is the same graph without the two extra outputs."""
    import onnx

    example = torch.rand(2 if dynamic_batch else 1, 3, size, size)
    to_onnx(WithRawOutputs(graph), (example, *graph.thresholds()), path,
            input_names=["images", *THRESHOLD_INPUTS], output_names=[*OUTPUT_NAMES, *RAW_OUTPUT_NAMES],
            opset=opset, dynamic_batch=dynamic_batch)
    proto = onnx.load(str(path))
    defaults = dict(zip(THRESHOLD_INPUTS, (t.numpy() for t in graph.thresholds())))
    add_input_defaults(proto, defaults)
    for output in proto.graph.output[:3]:  # the data-dependent row count: name it for readers of the graph
        dim = output.type.tensor_type.shape.dim[1]
        if dim.HasField("dim_param"):
            dim.dim_param = "detections"
    with_raw = proto.SerializeToString()
    keep_outputs(proto, OUTPUT_NAMES)
    onnx.save(proto, str(path))
    return with_raw


def keep_outputs(proto: object, names: tuple[str, ...]) -> None:
    """Drop the graph outputs not in `names`, and the nodes only they needed (in place)."""
    outputs = [o for o in proto.graph.output if o.name in names]
    if [o.name for o in outputs] != list(names):
        raise ExportError(f"the exported graph's outputs are {[o.name for o in proto.graph.output]}, "
                          f"expected {list(names)} among them")
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    needed, kept = set(names), []
    for node in reversed(proto.graph.node):  # nodes are topologically sorted: walk back from the outputs
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # If/Loop bodies read outer values by name
                for sub in [attr.g, *attr.graphs]:
                    for inner in sub.node:
                        needed.update(inner.input)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(kept))


def add_input_defaults(proto: object, values: dict[str, np.ndarray]) -> None:
    """Back each named graph input by an initializer of the same name and value: the input's default."""
    from onnx import numpy_helper

    inputs = {i.name for i in proto.graph.input}
    missing = sorted(set(values) - inputs)
    if missing:
        raise ExportError(f"the exported graph has no input {', '.join(missing)}")
    kept = [t for t in proto.graph.initializer if t.name not in values]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for name, value in values.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def _write_metadata(path: Path, meta: ModelMeta, model: torch.nn.Module, size: int, settings: dict) -> None:
    import onnx

    from boxforge import __version__

    proto = onnx.load(str(path))
    transform = model.model.transform
    props = {
        "boxforge_version": __version__, "model_name": meta.model_name, "img_size": str(size),
        "class_names": json.dumps(list(meta.class_names)), "num_classes": str(len(meta.class_names)),
        "input_format": INPUT_FORMAT, "output_format": OUTPUT_FORMAT,
        "normalization": json.dumps({"input_range": "0..1 RGB", "applied_in_graph": True,
                                     "mean": [float(v) for v in transform.image_mean],
                                     "std": [float(v) for v in transform.image_std]}),
        "postprocess": json.dumps(settings), "weights": meta.weights, "source": meta.source.name,
    }
    save_with_metadata(proto, path, props,
                       f"boxforge {meta.model_name} detector, classes {', '.join(meta.class_names)}. {INPUT_FORMAT}")


def save_with_metadata(proto: object, path: Path, props: dict[str, str], doc: str) -> None:
    """Replace the model's metadata by `props` (what loaders read back), sign it as boxforge's, check and save."""
    import onnx

    from boxforge import __version__

    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "boxforge", __version__
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
