"""The `boxforge` command: argument parsing only; each subcommand calls one public function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from boxforge import api
from boxforge.data.convert import TARGETS
from boxforge.data.formats.detect import FORMATS
from boxforge.errors import BoxforgeError
from boxforge.files import write_json
from boxforge.progress import progress_setting

EXIT_OK, EXIT_PROBLEMS, EXIT_FAILED = 0, 1, 2


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", help="split name (train, test, ...) or a txt file of image ids; default: all images")
    p.add_argument("--format", choices=FORMATS, help="force the dataset format instead of detecting it")


def _size_or_auto(text: str) -> int | str:
    """--img-size: pixels, or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of pixels or auto") from None


def _count_or_auto(text: str) -> int | str:
    """--threads: a count, or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of threads or auto") from None


def _scale_range(text: str) -> list[float]:
    """--multi-scale MIN:MAX, fractions of the input size (checked by TrainConfig.validate)."""
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give MIN:MAX, fractions of the input size, e.g. 0.5:1.5") from None
    return [low, high]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxforge", description="Datasets in, detectors out. "
                                     "Run `boxforge COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version="boxforge 0.1.0")
    _local_rank_arg(parser)  # where torch.distributed.launch puts it: before the subcommand
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="find every problem that would crash or spoil training",
                       description="Check a dataset. Exit status: 0 no errors, 1 errors found, 2 could not run.")
    p.add_argument("data", nargs="*", metavar="DATA", help="dataset folder or file (several VOC roots are merged)")
    _data_args(p)
    p.add_argument("--json", type=Path, metavar="REPORT", help="also write the report as JSON")
    p.add_argument("--deep", action="store_true", help="decode every pixel (slower; finds truncated images)")
    p.add_argument("--fix", action="store_true", help="move files with errors into --quarantine (never deletes)")
    p.add_argument("--quarantine", type=Path, metavar="DIR", help="where --fix moves files; a manifest.json is written there")
    p.add_argument("--undo", type=Path, metavar="MANIFEST", help="put back every file a --fix moved")
    p.add_argument("--plots", type=Path, metavar="DIR", help="also draw class, box-size and sample-image PNGs into DIR")

    p = sub.add_parser("convert", help="write a dataset as voc, coco, yolo or txt",
                       description="Convert DATA into the new folder OUT. Invalid boxes are reported and left out.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--to", required=True, choices=TARGETS)
    _data_args(p)

    p = sub.add_parser("synth", help="write the deterministic synthetic dataset",
                       description="Synthesize coloured shapes on textured backgrounds: a VOC root with "
                                   "train/test splits (or an ImageFolder with --task classify).")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--classes", type=int, default=3, help="1 to 8 shape classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=TARGETS, default="voc")
    p.add_argument("--task", choices=("detect", "classify"), default="detect")
    p.add_argument("--objects", type=_int_range, metavar="MIN:MAX", help="detection: shapes per image, e.g. 20:40 "
                   "for a dense set (default 1:6; fewer are placed where they would hide earlier ones)")
    p.add_argument("--object-size", type=_float_range, metavar="MIN:MAX", help="detection: shape size as a "
                   "fraction of the image's short side, e.g. 0.03:0.1 for small objects (default 0.08:0.6)")
    p = sub.add_parser("pack", help="decode a detection dataset once into a memory-mapped, checksummed cache",
                       description="Write DATA's decoded (optionally pre-resized) images and index into the new "
                                   "folder OUT; `train --data OUT` then reads it without decoding any JPEG.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--max-side", type=int, metavar="PX", help="pre-resize so the longer side is at most PX "
                   "(boxes scaled to match); default: keep the decoded size")
    _data_args(p)
    _train_parser(sub)
    _plot_parser(sub)
    _inference_parsers(sub)
    _prepare_parser(sub)
    _audit_parser(sub)
    return parser


def _local_rank_arg(p: argparse.ArgumentParser, shown: bool = False) -> None:
    """`--local-rank=N` / `--local_rank=N`, as `python -m torch.distributed.launch` passes them (train only)."""
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=argparse.SUPPRESS,
                   metavar="N", help="accepted from python -m torch.distributed.launch (without --use-env); "
                   "used as LOCAL_RANK when the environment has none" if shown else argparse.SUPPRESS)


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    from boxforge.models import models_for

    p = sub.add_parser("audit", help="find suspected label mistakes (missing, spurious, loose, wrongly named boxes)",
                       description="Train K fold models within --time minutes, predict each image with the model that "
                                   "did not see it, and rank where predictions and labels disagree; writes "
                                   "OUT/issues.json and OUT/review.html (accept/reject in the browser, save "
                                   "decisions.json). With --apply DECISIONS.json --data DATA --out NEW: copy DATA's folder "
                                   "to NEW and edit only the accepted labels in the copy's annotation files (the "
                                   "original is not touched; NEW/audit-manifest.json lists every change).")
    p.add_argument("data", nargs="*", metavar="DATA", help="dataset folder or file (or give --data)")
    p.add_argument("--data", dest="data_option", nargs="+", metavar="DATA", help="the dataset (with --apply)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where issues.json and review.html go "
                   "(with --apply: the new folder for the corrected copy)")
    p.add_argument("--time", type=float, metavar="MINUTES", help="budget for the fold models (training and "
                   "prediction)")
    p.add_argument("--folds", type=int, metavar="K", help="number of folds (default: 3 below 20 minutes, 4 below "
                   "40, else 5; fewer for small sets)")
    p.add_argument("--predictions", type=Path, metavar="FILE", help="your own out-of-fold predictions (a boxforge "
                   "predictions file or COCO results list) instead of training")
    p.add_argument("--apply", type=Path, metavar="DECISIONS", help="decisions.json saved from review.html")
    _data_args(p)
    p.add_argument("--model", choices=models_for("detect"), help="the fold models' architecture (default: "
                   "yolo_efficientnet_lite0 on ImageNet weights where boxforge[pretrained] is installed, else train's)")
    p.add_argument("--img-size", type=_size_or_auto, metavar="PX|auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=_count_or_auto, metavar="N|auto")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0, help="fold assignment and training seed (default 0)")
    p.add_argument("--weights-backbone", metavar="NAME|FILE", help="the fold models' pretrained backbone, as for "
                   "train (e.g. --model yolo_efficientnet_lite0 --weights-backbone IMAGENET1K)")


def _run_audit(args: argparse.Namespace) -> int:
    data = args.data or args.data_option
    if not data:
        raise BoxforgeError("audit needs DATA (or --data DATA)")
    data = data if len(data) > 1 else data[0]
    if args.apply:
        print(api.apply_audit(args.apply, data=data, out=args.out, split=args.split, format=args.format).summary())
        return EXIT_OK
    report = api.audit(data, out=args.out, time=args.time, folds=args.folds, predictions=args.predictions,
                       split=args.split, format=args.format, model=args.model, img_size=args.img_size,
                       batch_size=args.batch_size, workers=args.workers, threads=args.threads, device=args.device,
                       seed=args.seed, weights_backbone=args.weights_backbone)
    print(report.summary())
    return EXIT_OK


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="turn a downloaded dataset's layout into one boxforge reads (imagenet)",
                       description="prepare imagenet: sort the ILSVRC2012 validation images into one folder per "
                                   "WordNet id (moves, never copies or deletes; a manifest allows --undo) and "
                                   "unpack the per-class train tars. A second run changes nothing.")
    p.add_argument("dataset", choices=("imagenet",))
    p.add_argument("--devkit", type=Path, metavar="DEVKIT", help="ILSVRC2012_devkit_t12 folder or its .tar.gz")
    p.add_argument("--val", type=Path, metavar="VAL_DIR", help="folder of the 50,000 flat validation JPEGs")
    p.add_argument("--train", type=Path, metavar="TRAIN_DIR", help="folder of the <wnid>.tar class archives")
    p.add_argument("--undo", type=Path, metavar="MANIFEST", help="move the validation images back (VAL_DIR/"
                   "boxforge-prepare-manifest.json)")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from boxforge.config import MULTI_SCALE_DEFAULT, OPTIMIZERS, SCHEDULES
    from boxforge.models import MODELS, models_for
    from boxforge.models.registry import DEFAULT_MODEL

    p = sub.add_parser("train", help="train a detector (CPU, one GPU, or torchrun for many)",
                       description="Train a detector. Settings not given come from --config FILE.yaml, then the "
                                   "defaults; the resolved settings are saved as OUT/config.yaml. Exit status 75: "
                                   "stopped by the stall watchdog (restart with --resume auto).")
    p.add_argument("--data", nargs="+", metavar="DATA", help="dataset folder/file (several VOC roots are merged)")
    p.add_argument("--split", help="training split; `+` joins several, `VOC2007/trainval` names one year of a "
                   "VOCdevkit (default: the split policy: train with val, else trainval or train with test; "
                   "every year's trainval for a VOCdevkit; see README \"Splits\")")
    p.add_argument("--val", help="validation split of DATA, or another dataset (default: the split policy: "
                   "val, else test; VOC2007/test for a VOCdevkit)")
    p.add_argument("--allow-overlap", action="store_true", default=None,
                   help="train even when the validation set shares images (same file or same bytes) with the "
                        "training set; best.pt is then chosen partly on training images")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--model", choices=sorted(MODELS), help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--task", choices=("detect", "classify"), help="default: the model's (classifiers: "
                   f"{', '.join(models_for('classify'))})")
    p.add_argument("--out", help="run directory (default: runs/train)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--iterations", type=int, help="optimizer steps")
    budget.add_argument("--time", type=float, metavar="MINUTES", help="wall-clock budget; the LR schedule fits it")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.02 SGD / 0.002 AdamW per 16 images)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: sgd (yolo_csp: adamw)")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=float, help="fraction of the run in linear warm-up")
    p.add_argument("--img-size", type=_size_or_auto, metavar="PX|auto",
                   help="input size (default: the model's; yolo_csp: auto, from the training boxes' sizes, "
                   "never past the images' own size)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=_count_or_auto, metavar="N|auto",
                   help="torch intra-op threads (default: the cores / local ranks, so a seeded run repeats "
                   "bit-identically whatever the load; auto: less the cores other processes keep busy as the run "
                   "starts, faster on a busy machine but not repeatable; a resumed run keeps its checkpoint's)")
    p.add_argument("--anchors", choices=("default", "auto"),
                   help="auto: default boxes fitted to the training boxes by k-means (ssd_tiny, ssd_mobilenet_fpn)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels and no cuDNN autotuning, for bit-identical resume on a GPU "
                        "(not yet verified there); some speed lost (CPU runs are deterministic without it)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="detectors: weights in channels-last memory, 1.1-1.7x faster steps on CPU (default: on)")
    p.add_argument("--keep-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU: malloc keeps freed memory instead of returning it to the system, so steps do not "
                   "page-fault their activations afresh (1.4x img/s for ssdlite320 on 2 cores); the process keeps "
                   "its peak memory (default: on)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="torchrun: BatchNorm over the whole global batch, so N ranks train as one process")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="float16 on CUDA, bfloat16 on CPU (default: off; yolo_csp: on with CUDA or a CPU with AMX, where "
                   "it pays; AVX512-BF16 alone measured slower than float32)")
    p.add_argument("--mosaic", type=float, metavar="P", help="detectors: probability that a training sample is "
                   "a mosaic of 4 images, before the usual augmentations (default 0: off)")
    p.add_argument("--multi-scale", type=_scale_range, nargs="?", const=True, default=None, metavar="MIN:MAX",
                   help="detectors: each batch at its own input size, a multiple of 32 from MIN to MAX times the "
                   "input size, drawn per batch from (seed, epoch, iteration); validation, checkpoints and export "
                   f"stay at the input size (no value: {MULTI_SCALE_DEFAULT[0]}:{MULTI_SCALE_DEFAULT[1]}, about darknet's "
                   "random=1; default: off)")
    p.add_argument("--gpu-augment", choices=("auto", "on", "off"), help="detectors: run the SSD augmentation "
                   "(zoom out, IoU crop, flip, resize, colour) on the training device, the data workers only "
                   "drawing its random parameters and sending uint8 images; the same draws as the worker path, pixels "
                   "within 1 of 255 on CPU (auto, the default: on with CUDA and no --mosaic, off on CPU; on refuses "
                   "--mosaic; GPU speed not yet measured)")
    p.add_argument("--cache", choices=("auto", "ram", "off"), help="keep each decoded training image in memory "
                   "(longer side at most 2 x img size), in every worker: ram (refused above 25%% of physical RAM), "
                   "auto (default: ram when it fits in 10%% of RAM), off")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the weights for validation and export (default: off; yolo_csp: on)")
    p.add_argument("--accumulate", type=int, help="batches per optimizer step")
    p.add_argument("--clip-grad", type=float, help="max gradient norm (default 10; 0 turns clipping off)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--milestones", type=float, nargs="+", metavar="FRACTION",
                   help="multistep schedule: fractions of the run where the LR drops (default 0.67 0.89)")
    p.add_argument("--gamma", type=float, help="multistep schedule: LR factor at each milestone (default 0.1)")
    p.add_argument("--ema-decay", type=float, help="EMA decay per step (default 0.999, reached after a "
                   "warm-up: min(decay, (1 + n) / (10 + n)) after n steps)")
    p.add_argument("--max-nonfinite", type=int, metavar="N",
                   help="stop after N non-finite losses in a row (default 5); single ones skip the step")
    p.add_argument("--strict-data", action="store_true", default=None,
                   help="stop at the first unreadable sample instead of skipping it with a warning")
    p.add_argument("--weights", help="torchvision weight name (COCO_V1), a .pt/.pth file or a boxforge checkpoint")
    p.add_argument("--weights-backbone", help="torchvision weight name (IMAGENET1K_V1) or a file")
    p.add_argument("--freeze", choices=("backbone",))
    p.add_argument("--resume", metavar="auto|PATH", help="continue from the newest good checkpoint in OUT, or PATH")
    p.add_argument("--save-every", type=int, metavar="N", help="also save last.pt every N steps")
    p.add_argument("--snapshot-every", type=int, metavar="N", help="keep step-N.pt snapshots every N steps")
    p.add_argument("--snapshot-every-epochs", type=int, metavar="N", help="keep epoch-N.pt snapshots every N "
                   "epochs (compare them with eval --weights 'OUT/epoch-*.pt')")
    p.add_argument("--keep", type=int, metavar="K", help="snapshots of each kind (step-, epoch-) to keep (default 3)")
    p.add_argument("--best-metric", choices=("voc12", "coco", "fitness"), help="detectors: what chooses best.pt: "
                   "voc12 (VOC12 mAP@0.5, the default), coco (COCO AP .50:.95) or fitness (0.1 AP50 + 0.9 AP, "
                   "Ultralytics' choice; rewards tight boxes)")
    p.add_argument("--val-every", type=int, metavar="N",
                   help="validate every N epochs (default: at epoch ends, about every 5%% of the run)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS", help="watchdog limit (default 300)")
    p.add_argument("--on-disk-full", choices=("stop", "continue"),
                   help="when a checkpoint cannot be saved for lack of space: stop (default; exit status 2) or "
                        "continue training without that save; the previous checkpoint stays intact either way")
    p.add_argument("--log-every", type=int, metavar="N",
                   help="when the output is not a terminal, print a progress line every N steps (default 10); "
                        "a terminal shows a bar per epoch instead (BOXFORGE_PROGRESS=bar|lines|off chooses)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log the metrics.jsonl scalars "
                   "to OUT/tensorboard (needs: pip install 'boxforge[tensorboard]')")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="do not write OUT/report.html at the end (settings, data, curves, evaluation, predictions)")
    cls = p.add_argument_group("classification recipe (torchvision references; classifiers only)")
    cls.add_argument("--label-smoothing", type=float, metavar="EPS", help="e.g. 0.1 (default 0)")
    cls.add_argument("--mixup-alpha", type=float, metavar="A", help="MixUp on batches, e.g. 0.2 (default off)")
    cls.add_argument("--cutmix-alpha", type=float, metavar="A", help="CutMix on batches, e.g. 1.0 (default off)")
    cls.add_argument("--auto-augment", choices=("autoaugment", "randaugment", "trivialaugment", "augmix"))
    cls.add_argument("--random-erase", type=float, metavar="P", help="RandomErasing probability (default 0)")
    cls.add_argument("--crop-scale", type=float, metavar="S", help="smallest area fraction RandomResizedCrop "
                     "keeps (default 0.08; raise it for small images)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="defaults for any of these settings")
    p.add_argument("--plan", action="store_true", help="do not train: print what the run would do (the recipe and why) "
                   "and cost (img/s measured over a few real steps, epochs that fit in --time, peak memory), with "
                   "warnings where the budget or the data is short")
    p.add_argument("--json", type=Path, metavar="FILE", help="with --plan: also write the plan as JSON")
    _local_rank_arg(p, shown=True)


def _plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw training curves from a boxforge run or a darknet log",
                       description="PNG curves and CSV series from a boxforge run (RUN_DIR or its metrics.jsonl) "
                                   "or a darknet training log (pjreddie or AlexeyAB); the kind is detected.")
    p.add_argument("source", type=Path, metavar="RUN_DIR_OR_LOG")
    p.add_argument("--out", type=Path, metavar="DIR", help="default: RUN_DIR/plots, or LOGNAME-plots beside a log")
    p.add_argument("--smooth", type=int, default=20, metavar="N", help="running-mean window in points (default 20)")
    p.add_argument("--from-step", type=int, metavar="A", help="first step (darknet: iteration) to plot")
    p.add_argument("--to-step", type=int, metavar="B", help="last step (darknet: iteration) to plot")
    p.add_argument("--report", action="store_true", help="a boxforge run only: also (re)write RUN_DIR/report.html "
                   "(settings, dataset, curves, best.pt's evaluation table and PR curves, drawn validation images; "
                   "one self-contained file)")


def _run_plot(args: argparse.Namespace) -> int:
    from boxforge.plots import plot_log

    report = plot_log(args.source, args.out, smooth=args.smooth, from_step=args.from_step, to_step=args.to_step)
    print(report.summary())
    if args.report:
        if report.kind != "boxforge":
            raise BoxforgeError(f"--report: {args.source} is a {report.kind} log; a report needs a boxforge run "
                                "directory")
        print(f"report written to {api.report(report.source.parent)}")
    return EXIT_OK


def _inference_parsers(sub: argparse._SubParsersAction) -> None:
    """eval, predict, export: the commands that use a trained model (checkpoint or exported ONNX)."""
    from boxforge.models import models_for

    p = sub.add_parser("eval", help="mAP (VOC07, VOC12, COCO) of a model or a predictions file on a dataset",
                       description="Evaluate --weights (a boxforge checkpoint or exported .onnx, run on the images "
                                   "with score threshold 0.001 and 100 detections per image) or --predictions (a "
                                   "boxforge predictions file, or a COCO results list for COCO data; no image files "
                                   "needed). On COCO data the ground truth is the annotation file itself, so the COCO "
                                   "numbers (and the 12-line block printed after the table) are pycocotools' own. "
                                   "Several --weights (or quoted globs) are evaluated on the same images and printed "
                                   "as one table, the best marked. Default split: test, else val (VOC2007/test for a "
                                   "VOCdevkit), else every image.")
    p.add_argument("--data", nargs="+", required=True, metavar="DATA", help="dataset folder or file")
    p.add_argument("--split", help="split name (`VOC2007/test`, `val2017`, `a+b` for several) or a txt file of "
                   "image ids (default: the split policy's: test, else val; VOC2007/test for a VOCdevkit)")
    p.add_argument("--format", choices=FORMATS, help="force the dataset format instead of detecting it")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", nargs="+", metavar="CKPT_OR_ONNX", help="one file, several, or quoted globs "
                        "('runs/x/step-*.pt', sorted with numbers by value): several give one row each, the best "
                        "marked (VOC12 mAP for detectors, Acc@1 for classifiers, as best.pt is chosen); with "
                        "--model, torchvision weight names (IMAGENET1K_V1)")
    source.add_argument("--predictions", type=Path, metavar="FILE")
    p.add_argument("--model", choices=models_for("classify"), help="evaluate torchvision's pretrained classifier "
                   "without training: --weights is then a weight name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT) read "
                   "from the local torch hub cache only, never downloaded; classes by name, or by position when the "
                   "dataset has as many (ImageNet's sorted WordNet-id folders)")
    p.add_argument("--metric", nargs="+", choices=("voc07", "voc12", "coco", "all"),
                   help="detectors: which mAPs (default: all)")
    p.add_argument("--task", choices=("detect", "classify"), help="default: what --weights holds; classify "
                   "reports loss, Acc@1, Acc@5 (per-class accuracy and the confusion matrix in --json)")
    p.add_argument("--iou-thresh", type=float, help="detectors: VOC match IoU (default 0.5; COCO uses .50:.95)")
    p.add_argument("--strict-classes", action="store_true", help="stop with an error when the predictions file "
                   "or the model has classes the dataset does not have (default: ignore their detections, as "
                   "pycocotools and the VOC devkit do, with a note naming them and counting the detections)")
    p.add_argument("--errors", action="store_true", help="detectors: break the lost AP down by error type (TIDE: "
                   "classification, localisation, both, duplicate, background, missed; the AP each would gain if "
                   "fixed, at IoU .50 and .50:.95), per-class FP/FN counts and the images that lose the most")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    p.add_argument("--save-predictions", type=Path, metavar="FILE", help="with --weights: keep the predictions")
    p.add_argument("--plots", type=Path, metavar="DIR", help="also draw per-class precision/recall curves "
                   "(pr_voc.png, pr_coco.png at IoU .50 and .50:.95, with CSVs) and the table as table.png into DIR")
    _model_run_args(p)

    p = sub.add_parser("predict", help="detect objects in images; draw them and write a predictions file",
                       description="Run --weights (checkpoint or .onnx) on SOURCE images (files, folders searched "
                                   "recursively, or quoted globs). Unreadable images are reported and skipped.")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--weights", type=Path, required=True, metavar="CKPT_OR_ONNX")
    p.add_argument("--out", type=Path, default=Path("runs/predict"), metavar="DIR",
                   help="drawn images, predictions.json, per_class/ (default runs/predict)")
    p.add_argument("--score-thresh", type=float, help="detectors: lowest score kept (default 0.5)")
    p.add_argument("--iou-thresh", type=float, help="detectors: NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, help="detectors: detections per image at most (default 100)")
    p.add_argument("--json", type=Path, metavar="FILE", help="predictions file (default OUT/predictions.json)")
    p.add_argument("--per-class-json", action="store_true", help="also OUT/per_class/<class>.json")
    p.add_argument("--top-k", type=int, help="classifiers: classes per image, with probabilities (default 5)")
    p.add_argument("--img-size", type=int, metavar="PX", help="input size to run at (default: the model's own; "
                   "classifiers: the centre-crop size; an .onnx export only runs at the size it was exported at)")
    p.add_argument("--no-draw", action="store_true", help="do not write drawn images")
    _model_run_args(p)

    p = sub.add_parser("export", help="export a checkpoint to ONNX or OpenVINO (NMS inside the graph, thresholds "
                       "at run time), parity-checked; INT8, fp16, a standalone bundle",
                       description="Write an ONNX model (or, with --format openvino, an OpenVINO IR of it): input "
                                   "images (B, 3, S, S) float RGB 0..1, and for detectors "
                                   "score_thresh, iou_thresh, max_det (optional inputs with the export's values as "
                                   "defaults, so predict/eval set them at run time); outputs boxes (B, K, 4) in input "
                                   "pixels, scores, labels (0-based), num_detections. Metadata holds img_size, "
                                   "class_names, normalization, postprocess. The export is checked against the "
                                   "checkpoint; a mismatch is an error (exit status 2).")
    p.add_argument("--weights", type=Path, required=True, metavar="CKPT")
    p.add_argument("--out", metavar="PATH", help="MODEL.onnx; with --format openvino PATH.xml + PATH.bin "
                   "(into PATH/model.xml when PATH is a folder); required unless --bundle")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx", help="detectors: onnx (default) or an "
                   "OpenVINO IR (pip install 'boxforge[openvino]')")
    p.add_argument("--int8", action="store_true", help="detectors: INT8 static quantization calibrated on --calib "
                   "(ONNX: onnxruntime QDQ; OpenVINO: NNCF); then the INT8 file and the checkpoint are scored on "
                   "DATA's held-out split (COCO AP and VOC12 mAP printed)")
    p.add_argument("--calib", nargs="+", metavar="DATA", help="dataset for --int8: calibration images from its "
                   "train split, scoring on its held-out split (the split policy's, as eval)")
    p.add_argument("--calib-images", type=int, default=100, metavar="N", help="calibration images (default 100)")
    p.add_argument("--int8-max-drop", type=float, default=1.0, metavar="POINTS", help="warn, naming the layers "
                   "with the most quantization noise, when INT8 loses more COCO AP points than this (default 1)")
    p.add_argument("--int8-exclude", nargs="+", metavar="NODE", help="ONNX node names to keep in float")
    p.add_argument("--half", action="store_true", help="detectors: float16 ONNX for GPU runtimes (inputs and "
                   "outputs stay float32; runs on CPU too, not faster)")
    p.add_argument("--bundle", type=Path, metavar="DIR", help="detectors: write DIR/model.onnx, a standalone "
                   "DIR/predict.py (needs only onnxruntime, numpy, pillow), DIR/README.md and DIR/requirements.txt")
    p.add_argument("--img-size", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 15 to 18 (default 18, what torch's exporter "
                   "writes; lower ones are converted down)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    p.add_argument("--score-thresh", type=float, help="detectors: default of the graph's score_thresh input "
                   "(default 0.001, right for mAP; predict feeds its own)")
    p.add_argument("--iou-thresh", type=float, help="detectors: default of the graph's NMS iou_thresh input "
                   "(default: the model's, usually 0.45)")
    p.add_argument("--max-det", type=int, help="detectors: default of the graph's max_det input (default 100)")
    p.add_argument("--check-images", nargs="+", type=Path, metavar="IMAGE", help="parity check images "
                   "(default: 4 synthetic ones)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA weights")


def _model_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, help="images per batch (default 8 for detectors, 32 for classifiers)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default 0)")
    p.add_argument("--no-ema", action="store_true", help="use a checkpoint's raw weights, not its EMA weights")


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _run_eval(args: argparse.Namespace) -> int:
    from boxforge.evaluation import format_table

    data = args.data if len(args.data) > 1 else args.data[0]
    weights = args.weights if args.weights is None or len(args.weights) > 1 else args.weights[0]
    report = api.evaluate(data, weights=weights, predictions=args.predictions, model=args.model, split=args.split,
                          format=args.format, metrics=args.metric, iou_thresh=args.iou_thresh,
                          batch_size=args.batch_size, device=args.device, workers=args.workers,
                          save_predictions_to=args.save_predictions, prefer_ema=not args.no_ema,
                          plots=args.plots, task=args.task, strict_classes=args.strict_classes, errors=args.errors)
    _print_notes(report.notes)
    for reason in report.skipped[:10]:
        print(f"skipped: {reason}", file=sys.stderr)
    print(report.header())
    if hasattr(report, "table"):  # a classifier's report, or several checkpoints compared
        print(report.table())
    else:
        print(format_table(report.results))
        if "coco" in report.results:
            from boxforge.evaluation.coco import summary_lines

            print("\n" + "\n".join(summary_lines(report.results["coco"]["stats"])))  # pycocotools' own text
        if "errors" in report.results:
            from boxforge.evaluation.errors import format_errors

            print("\n" + format_errors(report.results["errors"]))
    if args.json:
        write_json(args.json, report.to_json(), indent=2)
        print(f"results written to {args.json}")
    for path in report.plots:
        print(f"plot written to {path}")
    return EXIT_OK


def _run_predict(args: argparse.Namespace) -> int:
    report = api.predict(args.weights, args.sources, out=args.out, score_thresh=args.score_thresh,
                         iou_thresh=args.iou_thresh, max_det=args.max_det, json_path=args.json,
                         per_class_json=args.per_class_json, draw=not args.no_draw, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, prefer_ema=not args.no_ema, top_k=args.top_k,
                         img_size=args.img_size)
    print(report.summary())
    return EXIT_PROBLEMS if report.skipped and not report.images else EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    calib = args.calib if args.calib is None or len(args.calib) > 1 else args.calib[0]
    report = api.export_onnx(args.weights, args.out, img_size=args.img_size, opset=args.opset,
                             dynamic_batch=args.dynamic_batch, score_thresh=args.score_thresh,
                             iou_thresh=args.iou_thresh, max_det=args.max_det, check_images=args.check_images,
                             check=not args.no_check, prefer_ema=not args.no_ema, format=args.format, int8=args.int8,
                             calib=calib, calib_images=args.calib_images, int8_max_drop=args.int8_max_drop,
                             int8_exclude=args.int8_exclude, half=args.half, bundle=args.bundle)
    print(report.summary())
    return EXIT_OK


def _run_train(args: argparse.Namespace) -> int:
    from boxforge.config import make_config

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "config", "local_rank", "plan", "json")}
    cfg = make_config(settings, args.config)
    if args.plan:
        plan = api.train_plan(cfg)
        print("\n".join(plan.lines()))
        if args.json:
            write_json(args.json, plan.to_json(), indent=2)
            print(f"plan written to {args.json}")
        return EXIT_OK
    if args.json:
        raise BoxforgeError("--json writes the plan: give it with --plan")
    result = api.train(cfg, local_rank=getattr(args, "local_rank", None))
    best = (f", best {result.best_label} {result.best_metric:.4f} ({result.best})"
            if result.best_metric is not None else "")
    print(f"done: {result.global_step} steps, {result.epochs_done} epochs; last checkpoint {result.last}{best}")
    return EXIT_OK


def _run_check(args: argparse.Namespace) -> int:
    from boxforge.data.quarantine import quarantine, undo
    from boxforge.data.report import format_report

    if args.undo:
        result = undo(args.undo)
        print(f"restored {result.restored} files ({result.already_in_place} were already in place)")
        return EXIT_OK
    if not args.data:
        raise BoxforgeError("check needs DATA (or --undo MANIFEST)")
    if args.fix and not args.quarantine:
        raise BoxforgeError("--fix needs --quarantine DIR: files are moved there, never deleted")
    data = args.data if len(args.data) > 1 else args.data[0]
    index = api.load_dataset(data, split=args.split, format=args.format)
    report = api.check(index, deep=args.deep, plan=api.plan_splits(data, format=args.format))
    print(format_report(report, " ".join(args.data)))
    if args.json:
        write_json(args.json, report.to_dict(), indent=2)
        print(f"report written to {args.json}")
    if args.plots:
        from boxforge.plots import plot_dataset

        for path in plot_dataset(index, args.plots):
            print(f"plot written to {path}")
    if args.fix and report.errors:
        manifest = quarantine(index, report.errors, args.quarantine)
        moved = len(json.loads(manifest.read_text())["moves"])
        print(f"moved {moved} files to {args.quarantine}; undo with: boxforge check --undo {manifest}")
    return EXIT_PROBLEMS if report.errors else EXIT_OK


def _run_convert(args: argparse.Namespace) -> int:
    report = api.convert(args.data, args.out, to=args.to, split=args.split, format=args.format)
    print(report.summary())
    return EXIT_OK


def _run_pack(args: argparse.Namespace) -> int:
    report = api.pack(args.data, args.out, max_side=args.max_side, split=args.split, format=args.format)
    print(report.summary())
    return EXIT_OK


def _pair(text: str, kind: type) -> tuple:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return kind(low), kind(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN:MAX ({kind.__name__}s)") from None


def _int_range(text: str) -> tuple[int, int]:
    return _pair(text, int)


def _float_range(text: str) -> tuple[float, float]:
    return _pair(text, float)


def _run_synth(args: argparse.Namespace) -> int:
    index = api.synth(args.out, images=args.images, classes=args.classes, seed=args.seed, format=args.format,
                      task=args.task, objects=args.objects, object_size=args.object_size)
    what = f"{index.num_objects} objects" if index.task == "detect" else "class folders"
    print(f"synthesized {len(index)} images, {what}, classes {', '.join(index.classes)} -> {args.out}")
    return EXIT_OK


COMMANDS = {"check": _run_check, "convert": _run_convert, "synth": _run_synth, "train": _run_train,
            "plot": _run_plot}
COMMANDS.update({"eval": _run_eval, "predict": _run_predict, "export": _run_export})
COMMANDS["pack"] = _run_pack


def _run_prepare(args: argparse.Namespace) -> int:
    from boxforge.prepare import prepare_imagenet, undo_imagenet

    if args.undo:
        restored, already = undo_imagenet(args.undo)
        print(f"restored {restored} validation images to the flat folder ({already} were already there)")
        return EXIT_OK
    if args.devkit is None:
        raise BoxforgeError("prepare imagenet needs --devkit DEVKIT (or --undo MANIFEST)")
    print(prepare_imagenet(args.devkit, val=args.val, train=args.train).summary())
    return EXIT_OK


COMMANDS["prepare"] = _run_prepare
COMMANDS["audit"] = _run_audit


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "train" and hasattr(args, "local_rank"):
            raise BoxforgeError("--local-rank is for train (as torch.distributed.launch passes it)")
        progress_setting()  # a bad BOXFORGE_PROGRESS fails now, not after the data is loaded
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader gone by now (`| head`) is caught below, not at exit
        return code
    except BrokenPipeError:
        # `boxforge predict ... | head`: the reader has what it wanted. End quietly, as Unix tools do, instead of
        # a traceback; stdout goes to devnull so the interpreter's own flush at exit cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE's exit status, what a shell reports for a tool killed by it
    except BoxforgeError as exc:
        print(f"boxforge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"boxforge {args.command}: interrupted", file=sys.stderr)
        return 130
