"""The one call to torch's ONNX exporter: `torch.onnx.export(..., dynamo=True)`, quiet, errors as one line.

Every export (detectors, their network alone for the parity check, classifiers) goes through `to_onnx`,
so the exporter's settings live in one place. torch.export traces the module (no TorchScript); our NMS,
the custom op `boxforge::multiclass_nms` (graph.py), is translated to the standard ONNX
NonMaxSuppression by `nms_to_onnx`, which every runtime implements. The exporter writes opset
NATIVE_OPSET and converts down for an older `opset` (MIN_OPSET at the lowest) with onnx's version converter.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from boxforge.errors import ExportError

NATIVE_OPSET = 18  # the opset torch's exporter builds; lower ones are converted
MIN_OPSET = 15  # onnx's version converter has no adapter below this for the exporter's Shape nodes


def nms_to_onnx(boxes, scores, max_per_class, iou_thresh, score_thresh):  # noqa: ANN001, ANN201 - onnxscript values
    """`boxforge::multiclass_nms` in ONNX: one NonMaxSuppression node (same semantics, see graph.py)."""
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(boxes, scores, max_per_class, iou_thresh, score_thresh, center_point_box=0)


def to_onnx(module: nn.Module, args: tuple[Tensor, ...], path: Path, *, input_names: list[str],
            output_names: list[str], opset: int, dynamic_batch: bool = False) -> None:
    """Export `module` called on `args` to `path` (ONNX, weights inside the file).

    dynamic_batch: the first input's dimension 0 becomes the symbol "batch" (every output follows it).
    The exporter's progress lines and warnings are swallowed; a failure is an ExportError of one line.
    """
    from boxforge.export import graph  # noqa: F401 - registers boxforge::multiclass_nms before tracing

    names = list(_argument_names(module, len(args)))
    shapes = {name: None for name in names}
    if dynamic_batch:
        shapes[names[0]] = {0: torch.export.Dim("batch", min=1, max=4096)}
    table = {torch.ops.boxforge.multiclass_nms.default: nms_to_onnx}
    quiet = io.StringIO()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=max(opset, NATIVE_OPSET),
                                        input_names=input_names, output_names=output_names, dynamic_shapes=shapes,
                                        custom_translation_table=table, optimize=True, verbose=False,
                                        external_data=False)
            model = program.model_proto
            if opset < NATIVE_OPSET:
                import onnx.version_converter

                model = onnx.version_converter.convert_version(model, opset)
        except Exception as exc:  # the exporter raises many types; one line is what the user needs
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ExportError(f"ONNX export failed (opset {opset}): {first}") from exc
    import onnx

    onnx.save(model, str(path))


def _argument_names(module: nn.Module, count: int) -> list[str]:
    """The names of forward's first `count` parameters (what `dynamic_shapes` is keyed by)."""
    import inspect

    return list(inspect.signature(module.forward).parameters)[:count]
