"""`boxforge export` for deployment: the checked fp32 ONNX first, then what the user asked of it.

    checkpoint --export_onnx (parity-checked, onnx.py)--> fp32 .onnx
        --int8 --calib DATA   -> INT8 .onnx (int8.py: onnxruntime static QDQ), then both APs on DATA's held-out split
        --half                -> fp16 .onnx (weights and compute in float16, inputs/outputs float32; for GPUs)
        --format openvino     -> PATH.xml + PATH.bin (openvino.py; with --int8 through NNCF)
        --bundle DIR          -> DIR/model.onnx + DIR/predict.py + DIR/README.md (bundle.py; needs no boxforge)

Every derived file carries the fp32 export's metadata plus `precision` (fp32, int8, fp16), so `predict`
and `eval` run it through the one inference layer like any export.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxforge.errors import BoxforgeError
from boxforge.export.int8 import DEFAULT_CALIB_IMAGES, Int8Report
from boxforge.export.onnx import ExportReport, export_onnx, save_with_metadata
from boxforge.files import atomic_path
from boxforge.inference.load import LoadedModel

FORMATS = ("onnx", "openvino")
# Kept in float32 by --half besides onnxruntime's default list (NMS, TopK, ...): box decoding and scoring.
HALF_KEEP_FLOAT = ("Exp", "Softmax", "Sigmoid", "ScatterElements", "ScatterND", "GatherElements", "Where")


@dataclass
class DeployReport:
    """The fp32 export's report (`base`), and where the asked-for file went."""

    base: ExportReport
    path: Path
    format: str = "onnx"
    precision: str = "fp32"
    int8: Int8Report | None = None
    bundle: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def parity(self) -> Any:
        return self.base.parity

    @property
    def postprocess(self) -> dict:
        return self.base.postprocess

    @property
    def weights(self) -> str:
        return self.base.weights

    def summary(self) -> str:
        lines = self.base.summary().splitlines()
        if self.path != self.base.path:
            size = sum(p.stat().st_size for p in (self.path, self.path.with_suffix(".bin")) if p.is_file())
            lines[0] = (f"checked the fp32 ONNX export ({self.base.size_bytes / 1e6:.1f} MB, opset {self.base.opset}, "
                        f"input (B, 3, {self.base.img_size}, {self.base.img_size}), {self.weights} weights)")
            lines.insert(0, f"exported {self.path} ({self.format}, {self.precision}, {size / 1e6:.1f} MB)")
        if self.int8 is not None:
            lines.append(self.int8.summary())
        if self.bundle is not None:
            lines.append(f"  bundle: {self.bundle}/ (model.onnx, predict.py, README.md; needs onnxruntime, numpy, "
                         "pillow)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_options(*, format: str, int8: bool, calib: Any, half: bool, bundle: Any, task: str) -> None:
    """Refuse combinations that cannot mean anything, each in one line, before any work."""
    if format not in FORMATS:
        raise BoxforgeError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if int8 and calib is None:
        raise BoxforgeError("--int8 needs --calib DATA (the images it calibrates on; its held-out split scores it)")
    if calib is not None and not int8:
        raise BoxforgeError("--calib is for --int8")
    if int8 and half:
        raise BoxforgeError("--int8 and --half: choose one precision")
    if half and format != "onnx":
        raise BoxforgeError("--half writes a float16 ONNX file (for GPU runtimes); OpenVINO chooses its own precision "
                            "per device")
    if bundle is not None and (format != "onnx" or half):
        raise BoxforgeError("--bundle holds an ONNX model for onnxruntime on a CPU: leave out --format openvino and "
                            "--half")
    if task != "detect" and (int8 or half or bundle is not None or format != "onnx"):
        raise BoxforgeError("--int8, --half, --format openvino and --bundle are for detectors; a classifier exports "
                            "to fp32 ONNX")


def export_model(loaded: LoadedModel, out: str | Path | None, *, format: str = "onnx", int8: bool = False,
                 calib: Any = None, calib_images: int = DEFAULT_CALIB_IMAGES, int8_max_drop: float = 1.0,
                 int8_exclude: list[str] | None = None, half: bool = False, bundle: str | Path | None = None,
                 **onnx_options: Any) -> DeployReport | ExportReport:
    """Export `loaded` (a detection checkpoint) as asked (see the module docstring); `onnx_options` go to
    onnx.export_onnx (opset, dynamic_batch, score_thresh, iou_thresh, max_det, check_images, check).
    A plain fp32 ONNX export returns its ExportReport."""
    check_options(format=format, int8=int8, calib=calib, half=half, bundle=bundle, task=loaded.task)
    _before_any_work(loaded, out, format=format, int8=int8, calib=calib, bundle=bundle)
    target = Path(bundle) / "model.onnx" if bundle is not None else Path(out)
    if format == "onnx" and not (int8 or half or bundle is not None):
        return export_onnx(loaded, target, **onnx_options)
    with tempfile.TemporaryDirectory(prefix="boxforge-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if (int8 or half or format == "openvino") else target
        base = export_onnx(loaded, fp32, **onnx_options)
        props = _props(fp32)
        images = None
        if int8:
            from boxforge.export.int8 import calibration_batch

            images = calibration_batch(calib, base.img_size, calib_images)
            props["calibration"] = json.dumps({"data": str(calib), "images": int(len(images)),
                                               "excluded": list(int8_exclude or [])})
        precision = "int8" if int8 else "fp16" if half else "fp32"
        props["precision"] = precision
        report = DeployReport(base, target, format, precision)
        if format == "openvino":
            from boxforge.export.openvino import write_openvino

            report.path = write_openvino(fp32, Path(out), props, images=images, exclude=int8_exclude)
        elif int8:
            from boxforge.export.int8 import quantize_file

            with atomic_path(target) as tmp_out:
                quantize_file(fp32, tmp_out, images, exclude=int8_exclude)
                _stamp(tmp_out, props)
        elif half:
            with atomic_path(target) as tmp_out:
                _to_half(fp32, tmp_out, props)
        if int8:
            report.int8 = _int8_report(loaded, fp32, report.path, images, calib, int8_max_drop, int8_exclude,
                                       per_layer=format == "onnx")
            report.int8.method = "NNCF post-training" if format == "openvino" else report.int8.method
            if format != "onnx" and report.int8.warning:
                report.notes.append("per-layer errors are measured on the ONNX INT8 graph: run the same export "
                                    "with --format onnx to see which layers to --int8-exclude")
        if bundle is not None:
            from boxforge.export.bundle import write_bundle

            report.bundle = write_bundle(Path(bundle), props)
    return report


def _before_any_work(loaded: LoadedModel, out: str | Path | None, *, format: str, int8: bool, calib: Any,
                     bundle: str | Path | None) -> None:
    """What can be refused from the arguments alone, refused before the export spends a minute: a missing
    --out, a missing OpenVINO, --calib data of other classes; and "--out DIR/" made a folder (openvino.ir_path)."""
    if out is None and bundle is None:
        raise BoxforgeError("export needs --out PATH (or --bundle DIR)")
    if format == "openvino":
        from boxforge.export.openvino import require_openvino

        require_openvino(int8)
        if str(out).endswith(("/", os.sep)):
            Path(out).mkdir(parents=True, exist_ok=True)
    if int8:
        from boxforge.export.int8 import check_calib_classes

        check_calib_classes(calib, list(loaded.meta.class_names))


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Give a derived ONNX file the export's metadata (the quantizer and converter drop it)."""
    import onnx

    proto = onnx.load(str(path))
    save_with_metadata(proto, path, props, f"boxforge {props.get('model_name')} detector, {props['precision']}. "
                       f"{props.get('input_format', '')}")


def _to_half(fp32: Path, out: Path, props: dict[str, str]) -> None:
    """float16 weights and compute, float32 inputs and outputs (so every feeder and reader stays the same);
    post-processing (HALF_KEEP_FLOAT and onnxruntime's default block list) stays float32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    import onnx_ir as ir

    proto = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *HALF_KEEP_FLOAT])
    model = ir.from_proto(proto)  # the converter appends its input casts at the end: sort the graph again
    model.graph.sort()
    onnx.save(ir.to_proto(model), str(out))
    _stamp(out, props)


def _int8_report(loaded: LoadedModel, fp32: Path, int8_path: Path, images: Any, calib: Any, max_drop: float,
                 exclude: list[str] | None, *, per_layer: bool) -> Int8Report:
    from boxforge.export.int8 import ERROR_IMAGES, accuracy, layer_errors

    aps, ev = accuracy(loaded, int8_path, calib)
    report = Int8Report(int8_path, len(images), list(exclude or []), ev.data, ev.split, ev.images, aps, max_drop)
    if report.warning and per_layer:
        report.worst = layer_errors(fp32, int8_path, images[:ERROR_IMAGES])
    return report
