"""INT8: static quantization of an exported detector, calibrated on the user's images, and its cost in mAP.

    fp32 .onnx --quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax)--> int8 .onnx

Activations are asymmetric uint8 with int8 weights (U8S8), the pair onnxruntime's x86 kernels are fast
for: on this machine's CPU (AVX-512 VNNI) the same model with int8 activations (S8S8, same accuracy:
an asymmetric grid is the same grid shifted) ran 2x slower than fp32, U8S8 2-4x faster.

Calibration: `calib_images` images of DATA's training split (the split policy's, data/splits.py; every
image when DATA has no splits), spread evenly over it, preprocessed exactly as `predict` does
(inference/batches.py). Only Conv nodes are quantized (OP_TYPES): they are nearly all of the compute,
while box decoding, softmax and NMS stay in float32, where int8 would move boxes by whole pixels and
reorder scores. `exclude` keeps further Conv nodes (by ONNX node name) in float.

The accuracy check runs the checkpoint and the INT8 file through the one inference layer
(inference/evaluate.py) on DATA's held-out split (`eval_split`, what `eval` scores by default) and
reports both COCO APs and VOC12 mAPs. A drop above `max_drop` points of COCO AP is a warning that
names the layers most affected: per Conv output, the signal-to-quantization-noise ratio (dB, lower is
worse) between the fp32 graph and the int8 graph on calibration images
(onnxruntime.quantization.qdq_loss_debug), so the user knows what to pass to `--int8-exclude`.

Why onnxruntime's quantizer for ONNX, and NNCF only for OpenVINO (export/openvino.py): measured on
yolo_csp at 256 px trained 1.5 minutes on raccoon, 100 calibration images of its train split, scored on its
40 test images, onnxruntime 1.32, nncf 3.4, batch 1 on 2 threads (ms under the load of two other
engineers' jobs on 2 shared cores: indicative only, repeated runs moved the medians by 2x):

    fp32 ONNX                               COCO AP 0.140  VOC12 0.421  17.0 ms (min 13.6)
    onnxruntime quantize_static, Conv, U8S8 COCO AP 0.129  VOC12 0.373  14.6 ms (min 10.7; 6.2 in a quieter run)
    NNCF on the ONNX graph (MatMul ignored) COCO AP 0.150  VOC12 0.414  30.8 ms (min 26.5)

NNCF keeps more accuracy (its bias correction), but the graph it writes runs slower in onnxruntime than
fp32 (its Q/DQ pairs are placed for OpenVINO's fusions, not onnxruntime's), and INT8 exists for speed.
Quantizing every op type instead of Conv only failed to run: onnxruntime has no kernel for the quantized
MatMul of yolo_csp's distance decoding (MatMulIntegerToFloat: "b zero point is not valid"); NNCF's
default quantized it too, so it needs MatMul ignored as above.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.errors import BoxforgeError, ExportError

OP_TYPES = ("Conv",)
DEFAULT_CALIB_IMAGES = 100
ERROR_IMAGES = 8  # calibration images the per-layer error is measured on
WORST_LAYERS = 5


@dataclass
class Int8Report:
    """What quantization cost. aps: {"checkpoint"|"int8": {"coco_AP": .., "voc12_map": ..}}; worst: per-layer
    [(node, SQNR dB of its own quantization, SQNR dB at that point of the whole int8 graph)], lowest first."""

    path: Path
    calib_images: int
    excluded: list[str]
    eval_data: str
    eval_split: str | None
    eval_images: int
    aps: dict[str, dict[str, float]]
    max_drop: float
    worst: list[tuple[str, float, float]] = field(default_factory=list)
    method: str = "onnxruntime static QDQ"

    @property
    def drop(self) -> float:
        """COCO AP points lost (checkpoint - int8), x100."""
        return 100 * (self.aps["checkpoint"]["coco_AP"] - self.aps["int8"]["coco_AP"])

    @property
    def warning(self) -> str | None:
        if self.drop <= self.max_drop:
            return None
        layers = ", ".join(f"{name} ({own:.1f} dB)" for name, own, _ in self.worst[:WORST_LAYERS])
        return (f"INT8 loses {self.drop:.1f} points of COCO AP (more than --int8-max-drop {self.max_drop:g}); "
                f"layers with the most quantization noise (lowest SQNR): {layers}; keep some in float with "
                "--int8-exclude NODE ...")

    def summary(self) -> str:
        where = f"{self.eval_data} split {self.eval_split}" if self.eval_split else f"{self.eval_data} (all images)"
        lines = [f"  INT8 ({self.method}, {self.calib_images} calibration images"
                 + (f", {len(self.excluded)} nodes kept in float" if self.excluded else "") + f"), on {where}, "
                 f"{self.eval_images} images:"]
        for who in ("checkpoint", "int8"):
            ap = self.aps[who]
            lines.append(f"    {who:<10}  COCO AP {ap['coco_AP']:.4f}  VOC12 mAP {ap['voc12_map']:.4f}")
        lines.append(f"    drop: {self.drop:.2f} COCO AP points (limit {self.max_drop:g})")
        if self.warning:
            lines.append(f"warning: {self.warning}")
        return "\n".join(lines)


def check_calib_classes(data: Any, classes: list[str], *, format: str | None = None) -> None:
    """Before any export: --calib DATA must share class names with the model, since its held-out split scores
    the INT8 file (the same rule, and message, as eval's: inference/evaluate.py)."""
    from boxforge.data.formats.detect import load_dataset
    from boxforge.evaluation.predictions import class_mapping

    names = load_dataset(data, format=format).classes
    if (class_mapping(list(classes), names) < 0).all():
        raise BoxforgeError(f"--calib {data}: the model's classes ({', '.join(classes)}) share no name with the "
                            f"dataset's ({', '.join(names)}); --int8 scores the INT8 file on this dataset's "
                            "held-out split, so it needs the model's own classes")


def calibration_batch(data: Any, size: int, count: int, *, format: str | None = None) -> np.ndarray:
    """(N, 3, size, size) float32 in 0..1: `count` images of DATA's training split, spread evenly, preprocessed as
    predict does. An image that cannot be read is skipped; none readable is an error."""
    import torch

    from boxforge.data.formats.detect import load_dataset
    from boxforge.data.splits import plan_splits
    from boxforge.inference.batches import ImageSource, detection_input, iter_batches

    if count < 1:
        raise BoxforgeError(f"--calib-images {count}: allowed an integer >= 1")
    plan = plan_splits(data, format=format)
    index = load_dataset(data, split=plan.train, format=format)
    if not len(index):
        raise BoxforgeError(f"--calib {data}: no images in split {plan.train or '(all)'}")
    picks = sorted(set(np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(int).tolist()))
    source = ImageSource.index(index)
    chosen = ImageSource([source.ids[i] for i in picks], [source.path(i) for i in picks])
    images = [item[1] for batch in iter_batches(chosen, detection_input(size), batch_size=16)
              for item in batch if item[1] is not None]
    if not images:
        raise BoxforgeError(f"--calib {data}: none of the {len(picks)} calibration images could be read")
    return torch.stack(images).numpy().astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader over a batch: one image per call, then None."""

    def __init__(self, images: np.ndarray, name: str = "images") -> None:
        self.images, self.name, self.i = images, name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0

    def __iter__(self):  # noqa: ANN204 - qdq_loss_debug iterates where quantize_static calls get_next
        self.rewind()
        return iter(self.get_next, None)


def quantize_file(fp32: Path, out: Path, images: np.ndarray, *, exclude: list[str] | None = None) -> None:
    """Write the INT8 (QDQ) model of `fp32` to `out`, calibrated on `images` (N, 3, S, S)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # the calibration sessions warn about the threshold inputs' defaults

    nodes = {n.name for n in onnx.load(str(fp32)).graph.node}
    unknown = [name for name in exclude or [] if name not in nodes]
    if unknown:
        convs = sorted(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in OP_TYPES)
        raise BoxforgeError(f"--int8-exclude {unknown[0]}: no such node; the graph's Conv nodes are "
                            f"{', '.join(convs[:6])}, ... ({len(convs)} in all)")
    reader = _Reader(images)
    CalibrationDataReader.register(_Reader)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # fold BatchNorm into Conv first, so the int8 weights are the ones that run
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - the optimiser is an improvement, not a requirement
            prepared = fp32
            _ = exc
        try:
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(OP_TYPES), nodes_to_exclude=list(exclude or []),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:  # onnxruntime raises many types; one line is what the user needs
            raise ExportError(f"INT8 quantization failed: {str(exc).splitlines()[0]}") from exc


def layer_errors(fp32: Path, int8: Path, images: np.ndarray) -> list[tuple[str, float, float]]:
    """Per quantized Conv: (node name, SQNR dB of quantizing its output alone, SQNR dB of the int8 graph's value
    against the fp32 graph's there), lowest own SQNR first. Both graphs are run on `images`."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory() as tmp:
        activations = []
        for path, name in ((fp32, "fp32"), (int8, "int8")):
            augmented = Path(tmp) / f"{name}.onnx"
            debug.modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations.append(debug.collect_activations(str(augmented), _Reader(images)))
    producer = {out: node.name for node in onnx.load(str(int8)).graph.node if node.op_type in OP_TYPES
                for out in node.output}
    matched = debug.create_activation_matching(activations[1], activations[0])
    errors = debug.compute_activation_error(matched)
    rows = [(producer[tensor], float(e.get("qdq_err", np.inf)), float(e.get("xmodel_err", np.inf)))
            for tensor, e in errors.items() if tensor in producer]
    return sorted(rows, key=lambda r: r[1])


def accuracy(loaded: Any, int8: Path, data: Any, *, format: str | None = None,
             batch_size: int = 8) -> tuple[dict[str, dict[str, float]], Any]:
    """COCO AP and VOC12 mAP of the checkpoint and of the INT8 file on DATA's held-out split, both through
    inference/evaluate.py (the split policy's `eval_split`). Returns (aps, the int8 EvalReport)."""
    from boxforge.inference.evaluate import evaluate
    from boxforge.inference.load import load_model

    aps, report = {}, None
    for who, model in (("checkpoint", loaded), ("int8", load_model(int8, "cpu", task="detect"))):
        report = evaluate(data, model=model, format=format, metrics=["voc12", "coco"], batch_size=batch_size,
                          progress=False)
        aps[who] = {"coco_AP": float(report.results["coco"]["AP"]), "voc12_map": float(report.results["voc12"]["map"])}
    return aps, report
