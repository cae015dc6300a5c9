"""Export a trained detector: ONNX with pre-processing metadata and NMS inside the graph (see onnx.py)."""

from boxforge.export.onnx import ExportError, ExportReport, export_onnx

__all__ = ["ExportError", "ExportReport", "export_onnx"]
