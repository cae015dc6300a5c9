"""The Python API: one function per CLI subcommand, each a short composition of the data layer."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from boxforge.config import TrainConfig
from boxforge.data.check import CheckReport, check_dataset
from boxforge.data.convert import ConvertReport, convert as _convert
from boxforge.data.formats.detect import load_dataset
from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError

__all__ = ["check", "convert", "load_dataset", "synth", "train"]


def check(data: str | Path | list[str | Path] | DatasetIndex, *, split: str | None = None,
          format: str | None = None, deep: bool = False) -> CheckReport:
    """Find every problem in DATA that would crash or spoil training. See `CheckReport`."""
    index = data if isinstance(data, DatasetIndex) else load_dataset(data, split=split, format=format)
    return check_dataset(index, deep=deep)


def convert(data: str | Path | list[str | Path] | DatasetIndex, out: str | Path, *, to: str,
            split: str | None = None, format: str | None = None) -> ConvertReport:
    """Write DATA to the new folder OUT as `to` (voc, coco, yolo, txt)."""
    index = data if isinstance(data, DatasetIndex) else load_dataset(data, split=split, format=format)
    return _convert(index, Path(out), to)


def synth(out: str | Path, *, images: int = 200, classes: int = 3, seed: int = 0, format: str = "voc",
          task: str = "detect") -> DatasetIndex:
    """Write the deterministic synthetic dataset (VOC root, or ImageFolder for `task="classify"`)."""
    from boxforge.data import synth as synth_mod

    out = Path(out)
    if task == "classify":
        return synth_mod.synthesize_classification(out, images=images, classes=classes, seed=seed)
    if task != "detect":
        raise BoxforgeError(f"unknown task {task!r}; choose detect or classify")
    if format == "voc":
        return synth_mod.synthesize_detection(out, images=images, classes=classes, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        index = synth_mod.synthesize_detection(Path(tmp) / "voc", images=images, classes=classes, seed=seed)
        _convert(index, out, format)
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return load_dataset(out)


def train(config: TrainConfig | None = None, *, config_file: str | Path | None = None, **settings: object):
    """Train a detector. `settings` are TrainConfig fields (data=..., model=..., epochs=...); see `boxforge train -h`.

    Returns a TrainResult (run_dir, best_metric, last and best checkpoint paths).
    """
    from boxforge.config import make_config
    from boxforge.engine.fit import fit

    cfg = config if config is not None else make_config(dict(settings), config_file)
    cfg.validate()
    return fit(cfg)


def evaluate(data, *, weights: str | Path | None = None, predictions: str | Path | None = None, **options):
    """mAP (VOC07, VOC12, COCO) of `weights` (checkpoint or .onnx, run on the images) or of a `predictions` file.

    options: split, format, metrics ("all" or voc07/voc12/coco), iou_thresh, batch_size, device, workers,
    save_predictions_to, prefer_ema, progress. Returns an EvalReport (`.results`, `.to_json()`).
    """
    from boxforge.evaluating import evaluate as _evaluate

    return _evaluate(data, weights=weights, predictions=predictions, **options)


def predict(weights: str | Path, sources, **options):
    """Detect objects in image files, folders or globs; draw them and write the predictions file.

    options: out, score_thresh, iou_thresh, max_det, json_path, per_class_json, draw, batch_size, device,
    workers, prefer_ema, progress. Returns a PredictReport.
    """
    from boxforge.predicting import predict_sources

    return predict_sources(weights, [sources] if isinstance(sources, (str, Path)) else list(sources), **options)


def export_onnx(weights: str | Path, out: str | Path, **options):
    """Export a checkpoint to ONNX (NMS in the graph, pre-processing in its metadata) and check parity.

    options: img_size, opset, dynamic_batch, score_thresh, iou_thresh, max_det, check_images, check, prefer_ema.
    Returns an ExportReport.
    """
    from boxforge.export import export_onnx as _export_onnx

    return _export_onnx(weights, out, **options)


__all__ += ["evaluate", "export_onnx", "predict"]
