"""`eval --weights A.pt B.pt ...`: several checkpoints on one split, one table, the best marked.

Darknet users keep the 40k and 50k weights and ask which is better; a boxforge run keeps step-N.pt
and epoch-N.pt snapshots. The dataset is loaded once and every checkpoint is evaluated on the same
images exactly as a single `eval` would; the best is chosen by the metric that chooses a run's
best.pt (VOC12 mAP for detectors, Acc@1 for classifiers: `engine.tasks`), so `eval` and training agree.

`expand_weights` is also where a `--weights` value is told apart: a file, a quoted glob (expanded
here, sorted with numbers by value: step-900.pt before step-1000.pt), or a torchvision weight name,
which only `--model` gives a meaning.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError
from boxforge.evaluation import BEST_METRIC, summary_metrics
from boxforge.inference.load import LoadedModel, load_model, load_pretrained_classifier, peek_task

_GLOB_CHARS = re.compile(r"[*?\[]")
# (row key, column title) per task; the keys are validation's (metrics.jsonl) names.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "detect": (("voc07_map", "VOC07 mAP"), ("voc12_map", "VOC12 mAP"), ("coco_AP", "COCO AP"),
               ("coco_AP50", "COCO AP50")),
    "classify": (("acc1", "Acc@1"), ("acc5", "Acc@5"), ("loss", "loss")),
}


def _natural(path: str) -> list[Any]:
    """Sort key: digit runs by value, so step-900.pt comes before step-1000.pt."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def expand_weights(weights: str | Path | Sequence[str | Path], *, model: str | None = None) -> list[str]:
    """The checkpoints (or, with `model`, torchvision weight names) that `--weights` names, in order.

    Without `model`: a quoted glob becomes its matches, sorted; an existing file stays as given; a
    value that is neither a file nor path-like (IMAGENET1K_V1) is an error saying to add --model.
    With `model`: every value must be a weight name; a file (a boxforge checkpoint or export names
    its own model) is an error.
    """
    from boxforge.models.weights import looks_like_file

    specs = [str(w) for w in ([weights] if isinstance(weights, (str, Path)) else list(weights))]
    if not specs:
        raise BoxforgeError("--weights names nothing")
    if model is not None:
        for spec in specs:
            if looks_like_file(spec):
                raise BoxforgeError(f"--model {model} evaluates torchvision's named weights (--weights "
                                    f"IMAGENET1K_V1, ...); {spec} is a file: a boxforge checkpoint or .onnx names its "
                                    "own model, so drop --model")
        return specs
    found: list[str] = []
    for spec in specs:
        if Path(spec).is_file() or not _GLOB_CHARS.search(spec):
            if not looks_like_file(spec):
                raise BoxforgeError(f"--weights {spec}: no such file; a torchvision weight name such as "
                                    "IMAGENET1K_V1 needs --model (e.g. --model mobilenet_v2)")
            matches = [spec]
        else:
            matches = sorted(glob.glob(spec, recursive=True), key=_natural)
            matches = [m for m in matches if Path(m).is_file()]
            if not matches:
                raise BoxforgeError(f"--weights {spec!r}: the pattern matches no file")
        found.extend(m for m in matches if m not in found)
    return found


@dataclass
class Row:
    weights: str
    source: str  # the report's description of the model
    metrics: dict[str, float | None]
    report: Any  # the EvalReport or ClassifyEvalReport of this checkpoint


@dataclass
class ComparisonReport:
    """One row per checkpoint; `best` indexes `rows` (None when no row has a finite best metric)."""

    task: str
    data: str
    split: str | None
    images: int
    rows: list[Row]
    best_key: str
    best_label: str
    best: int | None = None
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)  # none: the single-checkpoint report's field, for the CLI

    def header(self) -> str:
        split = f" split {self.split}" if self.split else " (all images)"
        return f"{self.data}{split}: {self.images} images; {len(self.rows)} checkpoints"

    def table(self) -> str:
        columns = COLUMNS[self.task]
        cells = [["checkpoint", *(title for _, title in columns), "best"]]
        for i, row in enumerate(self.rows):
            values = [_cell(row.metrics.get(key), self.task) for key, _ in columns]
            cells.append([row.weights, *values, "*" if i == self.best else ""])
        widths = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.best is None:
            lines.append(f"no checkpoint has a {self.best_label}: none marked best")
        else:
            lines.append(f"* best by {self.best_label}: {self.rows[self.best].weights}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        best = None if self.best is None else {"weights": self.rows[self.best].weights, "metric": self.best_key,
                                               "label": self.best_label,
                                               "value": self.rows[self.best].metrics[self.best_key]}
        return {"task": self.task, "data": self.data, "split": self.split, "images": self.images, "best": best,
                "checkpoints": [{"weights": r.weights, "model": r.source, "metrics": r.metrics,
                                 "results": r.report.to_json()} for r in self.rows]}


def _cell(value: float | None, task: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}" if task == "classify" else f"{value:.4f}"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _best(rows: list[Row], key: str) -> int | None:
    scored = [(row.metrics.get(key), -i) for i, row in enumerate(rows) if row.metrics.get(key) is not None]
    return -max(scored)[1] if scored else None  # the first of equals wins


def _common_task(weights: list[str], task: str | None, model: str | None) -> str:
    """The one task every file holds ("detect" or "classify"), agreeing with --task if given; checked before
    the first evaluation (each file's task is peeked at, not loaded)."""
    if model is not None:
        return "classify"
    tasks = {w: peek_task(w) for w in weights}
    found = sorted(set(tasks.values()))
    if len(found) > 1:
        shown = ", ".join(f"{w} ({t})" for w, t in tasks.items())
        raise BoxforgeError(f"--weights mixes detectors and classifiers ({shown}); compare one kind at a time")
    if task is not None and task != found[0]:
        raise BoxforgeError(f"--task {task}, but the checkpoints hold {found[0]} models ({weights[0]}, ...)")
    return found[0]


def _open(spec: str, model: str | None, device: str, prefer_ema: bool) -> LoadedModel:
    return load_pretrained_classifier(model, spec, device) if model is not None else load_model(
        spec, device, prefer_ema=prefer_ema)


def compare_checkpoints(data: Any, weights: list[str], *, task: str | None = None, model: str | None = None,
                        split: str | None = None, format: str | None = None, metrics: Any = "all",
                        iou_thresh: float = 0.5, batch_size: int = 8, device: str = "auto", workers: int = 0,
                        prefer_ema: bool = True, progress: bool = True,
                        strict_classes: bool = False) -> ComparisonReport:
    """Evaluate each of `weights` (checkpoints, .onnx, or with `model` torchvision weight names) on the same
    split of DATA, loaded once; each file opened once, one at a time; rows in the order given, the best
    marked. Options as `api.evaluate`."""
    from boxforge.data.formats.detect import load_dataset
    from boxforge.inference.classify import evaluate_classifier
    from boxforge.inference.evaluate import default_split, evaluate, resolve_metrics

    chosen = resolve_metrics(metrics)
    notes: list[str] = []
    if isinstance(data, DatasetIndex):
        index, name = data, str(data.root)
    else:
        many = isinstance(data, (list, tuple)) and len(data) > 1
        one = data[0] if isinstance(data, (list, tuple)) and not many else data
        index = load_dataset(one, split=split if split is not None else default_split(one, format), format=format)
        name = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    kind = _common_task(weights, task, model)
    rows: list[Row] = []
    for spec in weights:
        loaded = _open(spec, model, device, prefer_ema)
        if kind == "classify":
            report = evaluate_classifier(index, model=loaded, batch_size=batch_size, workers=workers,
                                         progress=progress)
            values = {"acc1": _finite(report.meter.acc1), "acc5": _finite(report.meter.acc5),
                      "loss": _finite(report.meter.loss)}
        else:
            if "voc12" not in chosen:
                chosen = resolve_metrics([*chosen, "voc12"])
                notes.append("VOC12 mAP is computed too: it picks the best checkpoint, as it picks a run's best.pt")
            report = evaluate(index, model=loaded, metrics=chosen, iou_thresh=iou_thresh, batch_size=batch_size,
                              workers=workers, progress=progress, strict_classes=strict_classes)
            values = {k: _finite(v) for k, v in summary_metrics(report.results).items()}
        notes.extend(f"{spec}: {note}" for note in report.notes)
        rows.append(Row(spec, report.source, values, report))
        del loaded
    best_key, best_label = BEST_METRIC[kind]
    return ComparisonReport(kind, name, index.split, len(index), rows, best_key, best_label, _best(rows, best_key),
                            notes, list(rows[0].report.skipped) if rows else [])
