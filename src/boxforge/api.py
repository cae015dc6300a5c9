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
from boxforge.data.splits import SplitPlan, plan_splits
from boxforge.errors import BoxforgeError

__all__ = ["check", "convert", "load_dataset", "plan_splits", "synth", "train"]


def check(data: str | Path | list[str | Path] | DatasetIndex, *, split: str | None = None,
          format: str | None = None, deep: bool = False, plan: SplitPlan | None = None) -> CheckReport:
    """Find every problem in DATA that would crash or spoil training. See `CheckReport`.

    plan: the split policy's choice for DATA, reported as `splits` (computed here when DATA is a path).
    """
    index = data if isinstance(data, DatasetIndex) else load_dataset(data, split=split, format=format)
    if index.format == "pack":
        raise BoxforgeError(f"{index.root} is a boxforge pack: check the dataset it was packed from "
                            f"({index.meta.get('pack_source')}); a pack verifies each image's CRC-32 as it is read")
    if plan is None and not isinstance(data, DatasetIndex):
        plan = plan_splits(data, format=format)
    report = check_dataset(index, deep=deep)
    if plan is not None:
        report.splits = {"train": plan.train, "val": plan.val, "eval": plan.test}
    return report


def convert(data: str | Path | list[str | Path] | DatasetIndex, out: str | Path, *, to: str,
            split: str | None = None, format: str | None = None) -> ConvertReport:
    """Write DATA to the new folder OUT as `to` (voc, coco, yolo, txt)."""
    index = data if isinstance(data, DatasetIndex) else load_dataset(data, split=split, format=format)
    return _convert(index, Path(out), to)


def pack(data: str | Path | list[str | Path] | DatasetIndex, out: str | Path, *, max_side: int | None = None,
         split: str | None = None, format: str | None = None):
    """Decode DATA once into the pack folder OUT (memory-mapped pixels, CRC-32 per sample); returns a PackReport."""
    from boxforge.data.pack import write_pack

    index = data if isinstance(data, DatasetIndex) else load_dataset(data, split=split, format=format)
    return write_pack(index, out, max_side=max_side)


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


def train(config: TrainConfig | None = None, *, config_file: str | Path | None = None,
          local_rank: int | None = None, **settings: object):
    """Train a detector. `settings` are TrainConfig fields (data=..., model=..., epochs=...); see `boxforge train -h`.

    local_rank: what `python -m torch.distributed.launch` passes as `--local-rank`; used only where the
    environment has no LOCAL_RANK. Returns a TrainResult (run_dir, best_metric, last and best checkpoint paths).
    """
    from boxforge.config import make_config
    from boxforge.engine.fit import fit

    cfg = config if config is not None else make_config(dict(settings), config_file)
    cfg.validate()
    return fit(cfg, local_rank=local_rank)


def evaluate(data, *, weights: str | Path | list[str | Path] | None = None, predictions: str | Path | None = None,
             model: str | None = None, **options):
    """mAP (VOC07, VOC12, COCO) of `weights` (checkpoint or .onnx, run on the images) or of a `predictions` file;
    Acc@1/Acc@5 for a classifier.

    weights: one file, several, or quoted globs (`runs/x/step-*.pt`): more than one gives a
    ComparisonReport (one row each, the best marked; see comparing.py). model: a torchvision classifier
    (mobilenet_v2, ...) whose named weights `weights` are (IMAGENET1K_V1; from the local hub cache only).
    options: task, split, format, metrics ("all" or voc07/voc12/coco), iou_thresh, batch_size, device, workers,
    save_predictions_to, prefer_ema, progress, plots (a folder for PR curves and the table as PNG),
    strict_classes (detections of classes the dataset lacks are an error, not ignored with a note).
    Returns an EvalReport (`.results`, `.to_json()`, `.plots`), a ClassifyEvalReport or a ComparisonReport.
    """
    from boxforge.comparing import compare_checkpoints, expand_weights
    from boxforge.evaluating import evaluate as _evaluate

    task = options.pop("task", None)
    if model is not None:
        _check_pretrained(model, weights, predictions, task)
    specs = expand_weights(weights, model=model) if weights is not None else []
    if len(specs) > 1:
        return compare_checkpoints(data, specs, task=task, model=model, **options)
    weights = specs[0] if specs else None
    if model is not None or task == "classify" or (task is None and weights is not None
                                                   and _task_of(weights) == "classify"):
        from boxforge.classifying import evaluate_classifier

        if weights is None:
            raise BoxforgeError("eval --task classify needs --weights (a checkpoint or .onnx classifier)")
        keep = ("split", "format", "batch_size", "device", "workers", "prefer_ema", "progress")
        return evaluate_classifier(data, weights=weights, model=model,
                                   **{k: v for k, v in options.items() if k in keep})
    return _evaluate(data, weights=weights, predictions=predictions, **options)


def _check_pretrained(model: str, weights: object, predictions: object, task: str | None) -> None:
    """`eval --model NAME --weights WEIGHT_NAME`: torchvision classifiers only, weights by name."""
    from boxforge.models import MODEL_TASKS, models_for

    if MODEL_TASKS.get(model) != "classify":
        raise BoxforgeError(f"eval --model {model}: named torchvision weights are evaluated for classifiers only "
                            f"({', '.join(models_for('classify'))}); a detector is evaluated from its checkpoint")
    if task not in (None, "classify"):
        raise BoxforgeError(f"--task {task} with --model {model}, a classifier")
    if predictions is not None or weights is None:
        raise BoxforgeError(f"eval --model {model} needs --weights NAME (a torchvision weight name such as "
                            "IMAGENET1K_V1), not --predictions")


def _task_of(weights: str | Path) -> str:
    """"classify" or "detect": what a checkpoint or exported ONNX file holds (eval/predict/export route on it)."""
    from boxforge.classifier import model_task

    return model_task(weights)


def predict(weights: str | Path, sources, **options):
    """Detect objects in image files, folders or globs; draw them and write the predictions file.
    A classifier checkpoint or .onnx gives the top_k (default 5) classes with probabilities instead.

    options: out, score_thresh, iou_thresh, max_det, json_path, per_class_json, draw, batch_size, device,
    workers, prefer_ema, progress, img_size (the input size to run at; classifiers: the crop size; default:
    the model's own). Returns a PredictReport.
    """
    from boxforge.predicting import predict_sources

    if _task_of(weights) == "classify":  # top-k classes with probabilities instead of boxes
        from boxforge.classifying import predict_classes

        keep = ("out", "top_k", "json_path", "batch_size", "device", "workers", "prefer_ema", "img_size")
        return predict_classes(weights, [sources] if isinstance(sources, (str, Path)) else list(sources),
                               **{k: v for k, v in options.items() if k in keep})
    options.pop("top_k", None)
    return predict_sources(weights, [sources] if isinstance(sources, (str, Path)) else list(sources), **options)


def export_onnx(weights: str | Path, out: str | Path, **options):
    """Export a checkpoint to ONNX (NMS in the graph, pre-processing in its metadata) and check parity.

    options: img_size, opset, dynamic_batch, score_thresh, iou_thresh, max_det, check_images, check, prefer_ema.
    Returns an ExportReport.
    """
    from boxforge.export import export_onnx as _export_onnx

    if _task_of(weights) == "classify":  # softmax in the graph instead of NMS
        from boxforge.export.classifier import export_classifier

        keep = ("img_size", "opset", "dynamic_batch", "check_images", "check", "prefer_ema")
        return export_classifier(weights, out, **{k: v for k, v in options.items() if k in keep})
    return _export_onnx(weights, out, **options)


def report(run_dir: str | Path, *, device: str = "auto", images: int = 6) -> Path:
    """(Re)write RUN_DIR/report.html, the self-contained page `train` writes at the end of a run: settings,
    dataset, curves, the best checkpoint's evaluation table and PR curves, drawn validation images.

    Returns its path. See boxforge/report.py.
    """
    from boxforge.report import write_report

    return write_report(run_dir, device=device, images=images)


__all__ += ["evaluate", "export_onnx", "predict"]
__all__ += ["report"]
__all__ += ["pack"]
