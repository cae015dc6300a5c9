"""The Python API: one function per CLI subcommand, each a short composition of the data layer."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxforge.config import TrainConfig
from boxforge.data.check import CheckReport, check_dataset
from boxforge.data.convert import ConvertReport, convert as _convert
from boxforge.data.formats.detect import load_dataset
from boxforge.data.index import DatasetIndex
from boxforge.data.splits import SplitPlan, plan_splits
from boxforge.errors import BoxforgeError

if TYPE_CHECKING:
    from boxforge.engine.fit import TrainResult
    from boxforge.inference.load import LoadedModel

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
          task: str = "detect", objects: tuple[int, int] | None = None,
          object_size: tuple[float, float] | None = None) -> DatasetIndex:
    """Write the deterministic synthetic dataset (VOC root, or ImageFolder for `task="classify"`).

    objects (min, max shapes per image), object_size (min, max fraction of the short side): detection only,
    for dense sets of small objects; None: the defaults (1 to 6 shapes, 0.08 to 0.6)."""
    from boxforge.data import synth as synth_mod

    out = Path(out)
    if task == "classify":
        if objects is not None or object_size is not None:
            raise BoxforgeError("--objects and --object-size are for detection sets (synth --task detect)")
        return synth_mod.synthesize_classification(out, images=images, classes=classes, seed=seed)
    if task != "detect":
        raise BoxforgeError(f"unknown task {task!r}; choose detect or classify")
    shape = {"objects": tuple(objects) if objects is not None else synth_mod.DEFAULT_OBJECTS,
             "object_size": tuple(object_size) if object_size is not None else synth_mod.DEFAULT_OBJECT_SIZE}
    if format == "voc":
        return synth_mod.synthesize_detection(out, images=images, classes=classes, seed=seed, **shape)
    with tempfile.TemporaryDirectory() as tmp:
        index = synth_mod.synthesize_detection(Path(tmp) / "voc", images=images, classes=classes, seed=seed,
                                               **shape)
        _convert(index, out, format)
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return load_dataset(out)


def train(config: TrainConfig | None = None, *, config_file: str | Path | None = None,
          local_rank: int | None = None, **settings: object) -> TrainResult:
    """Train a detector or a classifier. `settings` are TrainConfig fields (data=..., model=..., epochs=...);
    see `boxforge train -h`. Then (main rank, unless report=False) writes RUN_DIR/report.html.

    local_rank: what `python -m torch.distributed.launch` passes as `--local-rank`; used only where the
    environment has no LOCAL_RANK. Returns a TrainResult (run_dir, best_metric, last and best checkpoint paths).
    """
    from boxforge.config import make_config
    from boxforge.engine.fit import fit

    cfg = config if config is not None else make_config(dict(settings), config_file)
    cfg.validate()
    result = fit(cfg, local_rank=local_rank)
    if result.is_main and cfg.report:
        _write_report(result.run_dir, str(result.device or "auto"))
    return result


def train_plan(config: TrainConfig | None = None, *, config_file: str | Path | None = None,
               **settings: object) -> Any:
    """What `train` with these settings would do and cost, without training (engine/plan.py): the recipe with
    its reasons, img/s measured over a few real steps, the epochs that fit in `time`, peak memory, warnings.
    Returns a TrainPlan (`.to_json()`: model, img_size, batch_size, img_s, epochs, peak_memory_mb, reasons,
    warnings)."""
    from boxforge.config import make_config
    from boxforge.engine.plan import plan_training

    cfg = config if config is not None else make_config(dict(settings), config_file)
    cfg.validate()
    return plan_training(cfg)


def _write_report(run_dir: Path, device: str) -> None:
    """RUN_DIR/report.html once the checkpoints are safely written; any failure here is only a warning,
    because a finished run must never be lost to its report (`boxforge plot RUN_DIR --report` retries)."""
    from boxforge import run_report

    try:
        print(f"report written to {run_report.write_report(run_dir, device=device)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - deliberately broad: see the docstring
        print(f"warning: could not write {run_dir / 'report.html'}: {type(exc).__name__}: {exc}; "
              f"the checkpoints are intact; retry with: boxforge plot {run_dir} --report", file=sys.stderr, flush=True)


def _given(task: str, what: dict[str, object]) -> None:
    """An option the task cannot use is an error, not silently dropped (--score-thresh on a classifier)."""
    used = [name for name, value in what.items() if value not in (None, False)]
    if used:
        raise BoxforgeError(f"{', '.join(used)}: not options of a {task} model")


def evaluate(data: str | Path | list[str | Path] | DatasetIndex, *,
             weights: str | Path | list[str | Path] | None = None, predictions: str | Path | None = None,
             model: str | None = None, task: str | None = None, split: str | None = None,
             format: str | None = None, metrics: str | list[str] | None = None, iou_thresh: float | None = None,
             batch_size: int | None = None, device: str = "auto", workers: int = 0,
             save_predictions_to: str | Path | None = None, prefer_ema: bool = True, progress: bool = True,
             plots: str | Path | None = None, strict_classes: bool = False, errors: bool = False) -> Any:
    """mAP (VOC07, VOC12, COCO) of `weights` (checkpoint or .onnx, run on the images) or of a `predictions` file;
    Acc@1/Acc@5 for a classifier.

    weights: one file, several, or quoted globs (`runs/x/step-*.pt`): more than one gives a
    ComparisonReport (one row each, the best marked; inference/compare.py). model: a torchvision classifier
    (mobilenet_v2, ...) whose named weights `weights` are (IMAGENET1K_V1; from the local hub cache only).
    task: what the model must be (default: what the file holds). metrics ("all" or voc07/voc12/coco),
    iou_thresh, save_predictions_to, plots, strict_classes, errors (the TIDE breakdown): detectors only;
    batch_size: default 8 for detectors, 32 for classifiers. Returns an EvalReport (`.results`, `.to_json()`,
    `.plots`), a ClassifyEvalReport or a ComparisonReport.
    """
    from boxforge.inference.compare import compare_checkpoints, expand_weights
    from boxforge.inference.evaluate import evaluate as evaluate_detections

    if model is not None:
        _check_pretrained(model, weights, predictions, task)
    specs = expand_weights(weights, model=model) if weights is not None else []
    detector_options = {"--iou-thresh": iou_thresh, "--save-predictions": save_predictions_to, "--plots": plots,
                        "--errors": errors}
    if len(specs) > 1:
        if save_predictions_to is not None or plots is not None or errors:
            raise BoxforgeError("--save-predictions, --plots and --errors are about one model's output: give a "
                                "single --weights")
        return compare_checkpoints(data, specs, task=task, model=model, split=split, format=format,
                                   metrics=metrics or "all", iou_thresh=iou_thresh or 0.5, batch_size=batch_size or 8,
                                   device=device, workers=workers, prefer_ema=prefer_ema, progress=progress,
                                   strict_classes=strict_classes)
    loaded = None
    if specs:
        loaded = _open(specs[0], model=model, task=task, device=device, prefer_ema=prefer_ema)
    elif task == "classify":
        raise BoxforgeError("eval --task classify needs --weights (a checkpoint or .onnx classifier)")
    if loaded is not None and loaded.task == "classify":
        from boxforge.inference.classify import evaluate_classifier

        _given("classify", {**detector_options, "--metric": metrics, "--strict-classes": strict_classes})
        return evaluate_classifier(data, model=loaded, split=split, format=format, batch_size=batch_size or 32,
                                   workers=workers, progress=progress)
    return evaluate_detections(data, model=loaded, predictions=predictions, split=split, format=format,
                               metrics=metrics or "all", iou_thresh=0.5 if iou_thresh is None else iou_thresh,
                               batch_size=batch_size or 8, workers=workers, save_predictions_to=save_predictions_to,
                               progress=progress, plots=plots, strict_classes=strict_classes, errors=errors)


def _open(weights: str | Path, *, model: str | None = None, task: str | None = None, device: str = "auto",
          prefer_ema: bool = True, img_size: int | None = None) -> LoadedModel:
    """The one place a command opens its model: a file once, or torchvision's named classifier weights."""
    from boxforge.inference.load import load_model, load_pretrained_classifier

    if model is not None:
        return load_pretrained_classifier(model, str(weights), device)
    return load_model(weights, device, task=task, prefer_ema=prefer_ema, img_size=img_size)


def _check_pretrained(model: str, weights: object, predictions: object, task: str | None) -> None:
    """`eval --model NAME --weights WEIGHT_NAME`: torchvision classifiers only, weights by name."""
    from boxforge.models import MODELS, models_for

    if model not in MODELS or MODELS[model].task != "classify":
        raise BoxforgeError(f"eval --model {model}: named torchvision weights are evaluated for classifiers only "
                            f"({', '.join(models_for('classify'))}); a detector is evaluated from its checkpoint")
    if task not in (None, "classify"):
        raise BoxforgeError(f"--task {task} with --model {model}, a classifier")
    if predictions is not None or weights is None:
        raise BoxforgeError(f"eval --model {model} needs --weights NAME (a torchvision weight name such as "
                            "IMAGENET1K_V1), not --predictions")


def predict(weights: str | Path, sources: str | Path | list[str | Path], *, out: str | Path = "runs/predict",
            score_thresh: float | None = None, iou_thresh: float | None = None, max_det: int | None = None,
            top_k: int | None = None, json_path: str | Path | None = None, per_class_json: bool = False,
            draw: bool = True, batch_size: int | None = None, device: str = "auto", workers: int = 0,
            prefer_ema: bool = True, progress: bool = True, img_size: int | None = None) -> Any:
    """Detect objects in image files, folders or globs; draw them and write the predictions file.
    A classifier checkpoint or .onnx gives the top_k (default 5) classes with probabilities instead.

    score_thresh (0.5), iou_thresh (NMS, 0.45), max_det (100), per_class_json, draw: detectors only; top_k:
    classifiers only. img_size: the input size to run at (classifiers: the crop size; default: the model's
    own). batch_size: default 8 for detectors, 32 for classifiers. Returns a PredictReport or a
    ClassifyPredictReport.
    """
    listed = [sources] if isinstance(sources, (str, Path)) else list(sources)
    loaded = _open(weights, device=device, prefer_ema=prefer_ema, img_size=img_size)
    if loaded.task == "classify":  # top-k classes with probabilities instead of boxes
        from boxforge.inference.classify import predict_classes

        _given("classify", {"--score-thresh": score_thresh, "--iou-thresh": iou_thresh, "--max-det": max_det,
                            "--per-class-json": per_class_json})
        return predict_classes(loaded, listed, out=out, top_k=5 if top_k is None else top_k, json_path=json_path,
                               batch_size=batch_size or 32, workers=workers, img_size=img_size, progress=progress)
    from boxforge.inference.predict import predict_detections

    _given("detect", {"--top-k": top_k})
    return predict_detections(loaded, listed, out=out, score_thresh=score_thresh, iou_thresh=iou_thresh,
                              max_det=max_det, json_path=json_path, per_class_json=per_class_json, draw=draw,
                              batch_size=batch_size or 8, workers=workers, progress=progress, img_size=img_size)


def export_onnx(weights: str | Path, out: str | Path | None = None, *, img_size: int | None = None,
                opset: int = 18, dynamic_batch: bool = False, score_thresh: float | None = None,
                iou_thresh: float | None = None, max_det: int | None = None,
                check_images: list[str | Path] | None = None, check: bool = True, prefer_ema: bool = True,
                format: str = "onnx", int8: bool = False, calib: str | Path | list[str | Path] | None = None,
                calib_images: int = 100, int8_max_drop: float = 1.0, int8_exclude: list[str] | None = None,
                half: bool = False, bundle: str | Path | None = None) -> Any:
    """Export a checkpoint (detectors: NMS in the graph with run-time thresholds, pre-processing in its metadata;
    classifiers: softmax in the graph) and check parity with the checkpoint. (Not called `export`: that is
    the boxforge.export package.)

    score_thresh (0.001), iou_thresh (NMS, default the model's), max_det (100): detectors only; the defaults of
    the graph's threshold inputs. Detectors also: format ("onnx" or "openvino": OUT.xml + OUT.bin), int8 with
    calib (DATA: calibration images from its train split, the INT8 file and the checkpoint scored on its
    held-out split; calib_images, int8_max_drop in COCO AP points, int8_exclude node names), half (fp16 ONNX),
    bundle (a folder with the model, a standalone predict.py and a README). See export/deploy.py.
    Returns an ExportReport, a DeployReport (int8, half, openvino, bundle) or a ClassifierExportReport.
    """
    loaded = _open(weights, device="cpu", prefer_ema=prefer_ema, img_size=img_size)
    if loaded.meta.kind != "checkpoint":
        raise BoxforgeError(f"{weights}: already an exported {loaded.meta.kind} model; export takes the .pt "
                            "checkpoint it came from")
    from boxforge.export.deploy import check_options, export_model

    check_options(format=format, int8=int8, calib=calib, half=half, bundle=bundle, task=loaded.task)
    if loaded.task == "classify":  # softmax in the graph instead of NMS
        from boxforge.export.classifier import export_classifier

        _given("classify", {"--score-thresh": score_thresh, "--iou-thresh": iou_thresh, "--max-det": max_det})
        if out is None:
            raise BoxforgeError("export needs --out MODEL.onnx")
        return export_classifier(loaded, out, opset=opset, dynamic_batch=dynamic_batch, check_images=check_images,
                                 check=check)
    return export_model(loaded, out, format=format, int8=int8, calib=calib, calib_images=calib_images,
                        int8_max_drop=int8_max_drop, int8_exclude=int8_exclude, half=half, bundle=bundle,
                        opset=opset, dynamic_batch=dynamic_batch,
                        score_thresh=0.001 if score_thresh is None else score_thresh, iou_thresh=iou_thresh,
                        max_det=100 if max_det is None else max_det, check_images=check_images, check=check)



def audit(data: str | Path | list[str | Path], *, out: str | Path, time: float | None = None,
          folds: int | None = None, predictions: str | Path | None = None, split: str | None = None,
          format: str | None = None, model: str | None = None, img_size: int | str | None = None,
          batch_size: int | None = None, workers: int | None = None, threads: int | str | None = None,
          device: str | None = None, seed: int = 0, weights_backbone: str | None = None) -> Any:
    """Suspected label mistakes in DATA (see audit/rank.py), from out-of-fold predictions: K fold models trained
    within `time` minutes (audit/folds.py), or the user's own out-of-fold `predictions` file. Writes
    OUT/issues.json and OUT/review.html (and OUT/folds/ with each fold's run). model, img_size, batch_size,
    workers, threads, device, seed, weights_backbone (a pretrained backbone: stronger fold models in the same
    time): the fold models' training settings (default: yolo_efficientnet_lite0 on ImageNet backbone weights
    where the optional package is installed, else `train`'s; audit/run.py). Returns an AuditReport."""
    from boxforge.audit.run import run_audit

    index = load_dataset(data, split=split, format=format)
    name = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    settings = {"model": model, "img_size": img_size, "batch_size": batch_size, "workers": workers,
                "threads": threads, "device": device, "seed": seed, "weights_backbone": weights_backbone}
    return run_audit(index, name=name, out=Path(out), time=time, folds=folds, predictions=predictions, seed=seed,
                     settings={k: v for k, v in settings.items() if v is not None})


def apply_audit(decisions: str | Path, *, data: str | Path | list[str | Path], out: str | Path,
                split: str | None = None, format: str | None = None) -> Any:
    """Write DATA with the accepted decisions of review.html's decisions.json applied, as a new copy in OUT (the
    original is never touched; OUT/audit-manifest.json lists every change). Returns an ApplyReport."""
    from boxforge.audit.apply import apply_decisions

    index = load_dataset(data, split=split, format=format)
    name = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    return apply_decisions(Path(decisions), index, Path(out), source=name)


def report(run_dir: str | Path, *, device: str = "auto", images: int = 6) -> Path:
    """(Re)write RUN_DIR/report.html, the self-contained page `train` writes at the end of a run: settings,
    dataset, curves, the best checkpoint's evaluation table and PR curves, drawn validation images.

    Returns its path. See boxforge/run_report.py.
    """
    from boxforge import run_report

    return run_report.write_report(run_dir, device=device, images=images)


__all__ += ["apply_audit", "audit", "evaluate", "export_onnx", "pack", "predict", "report", "train_plan"]
