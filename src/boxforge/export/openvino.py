"""`--format openvino`: the checked ONNX export converted to an OpenVINO IR (PATH.xml + PATH.bin), optionally INT8.

The optional extra `pip install 'boxforge[openvino]'` brings `openvino` (and `nncf` for INT8). The IR is
the ONNX graph as OpenVINO reads it: same inputs (images, and a detector's score_thresh, iou_thresh,
max_det: plain parameters here, fed by boxforge's backend from the export's settings when not asked
otherwise, since an IR has no input defaults), same outputs, the ONNX metadata as JSON in the IR's
rt_info (`boxforge_metadata`), which `predict` and `eval` read (inference/backends.py OpenVinoSession).

INT8 goes through NNCF's post-training quantization (`nncf.quantize`, its mixed preset) on the same
calibration images as `--int8` for ONNX; `exclude` names nodes for its ignored scope.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.errors import BoxforgeError, ExportError
from boxforge.files import fsync_dir
from boxforge.inference.backends import OPENVINO_METADATA, THRESHOLD_INPUTS, threshold_feeds


def require_openvino(int8: bool = False) -> None:
    """One line saying what to install when OpenVINO (or NNCF, for INT8) is missing."""
    try:
        import openvino  # noqa: F401
        if int8:
            import_nncf()
    except ImportError as exc:
        raise BoxforgeError(f"--format openvino needs {exc.name}: pip install 'boxforge[openvino]'") from exc


def import_nncf() -> Any:
    """nncf, imported without the warning its PyTorch backend's import prints on a CUDA build of torch with no GPU
    ("No CUDA runtime is found, using CUDA_HOME=..."): it probes for compiling CUDA extensions, which an OpenVINO
    model never uses, and the line reads like a fault of the export."""
    probe = logging.getLogger("torch.utils.cpp_extension")
    level = probe.level
    probe.setLevel(logging.ERROR)
    try:
        import nncf
    finally:
        probe.setLevel(level)
    return nncf


def ir_path(out: Path) -> Path:
    """Where the .xml goes: OUT itself when it ends in .xml, OUT/model.xml when OUT is a folder (existing, or
    written with a trailing slash), else OUT + .xml; the .bin is written beside it with the same stem."""
    if out.suffix.lower() == ".xml":
        return out
    if out.is_dir() or str(out).endswith(os.sep):
        return out / "model.xml"
    return out.with_name(out.name + ".xml")


def without_input_defaults(onnx_path: Path, into: Path) -> Path:
    """A copy of the ONNX file whose threshold inputs have no initializer behind them (OpenVINO would read those
    as constants; as parameters they stay settable at run time)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    kept = [t for t in proto.graph.initializer if t.name not in THRESHOLD_INPUTS]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    onnx.save(proto, str(into))
    return into


def write_openvino(onnx_path: Path, out: Path, props: dict[str, str], *, images: np.ndarray | None = None,
                   exclude: list[str] | None = None) -> Path:
    """Convert `onnx_path` (a checked boxforge export) to the IR at `ir_path(out)`, with `props` as its metadata;
    INT8 through NNCF when calibration `images` (N, 3, S, S) are given. Returns the .xml path.

    Both files are written in a temporary folder beside the target and renamed (.bin first), so a failure
    leaves neither."""
    import openvino as ov

    xml = ir_path(out)
    xml.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", dir=xml.parent))
    try:
        model = ov.convert_model(str(without_input_defaults(onnx_path, staging / "plain.onnx")))
        if images is not None:
            model = _quantize(model, images, props, exclude or [])
        model.set_rt_info(json.dumps(props), OPENVINO_METADATA)
        ov.save_model(model, str(staging / xml.name), compress_to_fp16=False)
        os.replace(staging / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(staging / xml.name, xml)
        fsync_dir(xml.parent)
    except BoxforgeError:
        raise
    except Exception as exc:  # openvino / nncf raise many types; one line is what the user needs
        raise ExportError(f"OpenVINO conversion failed: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return xml


def _quantize(model: object, images: np.ndarray, props: dict[str, str], exclude: list[str]) -> object:
    """NNCF post-training INT8 of the OpenVINO model, fed like the runtime feeds it (thresholds included)."""
    nncf = import_nncf()

    post = json.loads(props.get("postprocess", "{}"))
    extra = threshold_feeds(post["score_thresh"], post["nms_thresh"], post["detections_per_img"]) if post else {}
    names = [port.get_any_name() for port in model.inputs]
    feeds = {k: v for k, v in extra.items() if k in names}
    dataset = nncf.Dataset(list(images), lambda x: {names[0]: x[None], **feeds})
    scope = nncf.IgnoredScope(names=exclude) if exclude else None
    return nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=scope)
