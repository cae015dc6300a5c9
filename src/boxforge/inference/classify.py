"""`eval` and `predict` for classifiers: Acc@1/Acc@5 on a dataset, top-k on image files.

Eval shows its progress through boxforge/progress.py: on a terminal a bar over the batches (running
loss, acc1, acc5 beside it); otherwise, every `print_every` batches and at the last, a line in the
torchvision references' format,
`Test: [ 100/1563] eta: 0:01:49 loss 1.1036 (0.8832) acc1 65.6 (77.3) acc5 90.6 (93.0) time 0.0459 data
0.0055 max mem 966` (last batch, then running average in brackets; seconds per batch; MB), and a final
` * Acc@1 71.878 Acc@5 90.286`. The model's classes are matched to the dataset's by name, so a model
trained on ImageNet's wnid folders evaluates on any tree with the same folder names.
"""

from __future__ import annotations

import datetime
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from boxforge.data.formats.detect import load_dataset
from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError
from boxforge.evaluation.predictions import class_mapping
from boxforge.evaluation.topk import TopKMeter
from boxforge.files import write_json
from boxforge.inference.batches import ImageSource, image_progress, iter_probabilities
from boxforge.inference.load import LoadedModel
from boxforge.inference.sources import resolve_sources
from boxforge.progress import progress as show_progress

def _max_mem_mb(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) / 2**20)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@dataclass
class ClassifyEvalReport:
    meter: TopKMeter
    data: str
    split: str | None
    source: str
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)  # none yet; the detection report's field, for the CLI
    task: str = "classify"

    @property
    def results(self) -> dict[str, Any]:
        return self.meter.to_json()

    def header(self) -> str:
        split = f" split {self.split}" if self.split else " (all images)"
        return f"{self.data}{split}: {self.meter.count} images, {len(self.meter.class_names)} classes; {self.source}"

    def table(self) -> str:
        worst = sorted((v["acc1"], k) for k, v in self.meter.per_class().items() if v["acc1"] is not None)[:3]
        lines = [f"loss {self.meter.loss:.4f}  Acc@1 {self.meter.acc1:.3f}  Acc@5 {self.meter.acc5:.3f}"]
        if worst:
            lines.append("lowest per-class Acc@1: " + ", ".join(f"{k} {a:.1f}" for a, k in worst))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"task": "classify", "data": self.data, "split": self.split, "model": self.source,
                **self.results, "skipped": self.skipped, "seconds": self.seconds}


def _label_map(index: DatasetIndex, classes: list[str], weights: str | Path, notes: list[str]) -> np.ndarray:
    """Dataset label -> model label (-1: the model does not know that class).

    By name when the two share any class name. When they share none but have as many classes, by
    position, as torchvision's ImageNet reference does: ImageFolder's sorted WordNet-id folders
    (n01440764, ...) are the order of the 1000 outputs, whose names are "tench", ... Otherwise an error.
    """
    mapping = class_mapping(index.classes, classes)
    if (mapping < 0).all():
        if len(index.classes) != len(classes):
            raise BoxforgeError(f"{weights}: the model's {len(classes)} classes ({', '.join(classes[:5])}, ...) share "
                                f"no name with the dataset's {len(index.classes)} ({', '.join(index.classes[:5])}, "
                                "...), and the counts differ, so they cannot be matched by position either")
        notes.append(f"the dataset's class names ({', '.join(index.classes[:2])}, ...) are not the model's "
                     f"({', '.join(classes[:2])}, ...); matched by position, as both have {len(classes)}: dataset "
                     "class i (sorted folder order for ImageFolder) is model output i")
        return np.arange(len(classes), dtype=np.int64)
    unknown = [c for c, m in zip(index.classes, mapping) if m < 0]
    if unknown:
        notes.append(f"{len(unknown)} dataset classes are unknown to the model ({', '.join(unknown[:5])}); "
                     "their images are left out")
    return mapping


def _test_line(i: int, total: int, last: dict[str, float], meter: TopKMeter, batch_s: float, data_s: float,
               elapsed: float, device: torch.device) -> str:
    eta = datetime.timedelta(seconds=int(elapsed / i * (total - i)))
    width = len(str(total))
    return (f"Test: [{i:{width}d}/{total}] eta: {eta} loss {last['loss']:.4f} ({meter.loss:.4f}) "
            f"acc1 {last['acc1']:.1f} ({meter.acc1:.1f}) acc5 {last['acc5']:.1f} ({meter.acc5:.1f}) "
            f"time {batch_s:.4f} data {data_s:.4f} max mem {_max_mem_mb(device)}")


def evaluate_classifier(data: str | Path | Sequence[str | Path] | DatasetIndex, *, model: LoadedModel,
                        split: str | None = None, format: str | None = None, batch_size: int = 32, workers: int = 0,
                        progress: bool = True, print_every: int = 100,
                        stream: TextIO | None = None) -> ClassifyEvalReport:
    """Loss, Acc@1, Acc@5, per-class accuracy and the confusion matrix of the loaded classifier on DATA's split."""
    from boxforge.inference.evaluate import default_split

    stream = stream or sys.stdout  # looked up now: a default of sys.stdout would keep the one of import time
    start = time.perf_counter()
    if isinstance(data, DatasetIndex):
        index, name = data, str(data.root)
    else:
        split = split if split is not None else default_split(data, format)
        index = load_dataset(data if not isinstance(data, (list, tuple)) or len(data) > 1 else data[0],
                             split=split, format=format)
        name = " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    if index.task != "classify":
        raise BoxforgeError(f"{name}: a {index.task} dataset; eval --task classify needs class folders or an "
                            "imagenet_txt list")
    backend = model.backend
    notes = list(backend.notes)
    mapping = _label_map(index, backend.classes, backend.meta.source, notes)
    kept = [s for s in index.samples if s.image_path and mapping[s.label] >= 0]
    labels = torch.tensor([int(mapping[s.label]) for s in kept], dtype=torch.int64)
    source = ImageSource([s.image_id for s in kept], [s.image_path for s in kept])
    meter = TopKMeter(backend.classes)
    report = ClassifyEvalReport(meter, name, index.split, model.meta.describe(), notes=notes)
    total = -(-len(source) // batch_size)
    tick = began = time.perf_counter()
    dev = getattr(backend, "device", torch.device("cpu"))
    batches = iter_probabilities(backend, source, batch_size=batch_size, workers=workers)
    with show_progress(total, label="Test", unit="batches", stream=stream, every=None, enabled=progress) as shown:
        for i, (good, probs, errors) in enumerate(batches, start=1):
            loaded = time.perf_counter()
            report.skipped.extend(e for _, e in errors)
            last = meter.update(probs, labels[good]) if probs is not None else meter.last
            now = time.perf_counter()
            line = (_test_line(i, total, last, meter, now - tick, loaded - tick, now - began, dev)
                    if last and (i % print_every == 0 or i == total) else None)
            running = {"loss": f"{meter.loss:.4f}", "acc1": f"{meter.acc1:.1f}", "acc5": f"{meter.acc5:.1f}"}
            shown.update(1, line=line, **(running if last else {}))
            tick = now
    if progress:
        print(f" * Acc@1 {meter.acc1:.3f} Acc@5 {meter.acc5:.3f}", file=stream, flush=True)
    if report.skipped:
        notes.append(f"{len(report.skipped)} images could not be read and are left out")
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class ClassifyPredictReport:
    out: Path
    model: str
    top_k: int
    images: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # images per top-1 class
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    predictions_file: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        lines = [f"note: {note}" for note in self.notes]
        lines.append(f"{self.images} images classified ({rate:.1f} img/s) with {self.model}; top-1 counts:")
        width = max((len(n) for n in self.counts), default=5)
        lines += [f"  {name.ljust(width)}  {count}" for name, count in self.counts.items() if count]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable images:")
            lines += [f"  {reason}" for _, reason in self.skipped[:10]]
        if self.predictions_file:
            lines.append(f"predictions (top {self.top_k} with probabilities): {self.predictions_file}")
        return "\n".join(lines)


def predict_classes(model: LoadedModel, sources: Sequence[str | Path], *, out: str | Path = "runs/predict",
                    top_k: int = 5, json_path: str | Path | None = None, batch_size: int = 32, workers: int = 0,
                    img_size: int | None = None, progress: bool = True) -> ClassifyPredictReport:
    """Top-k classes with probabilities for every image SOURCES name; written to OUT/predictions.json as
    {"task": "classify", "classes", "top_k", "predictions": [{"image", "path", "top": [{"label", "score"}]}]}.

    img_size: the centre-crop size `model` was opened at, when --img-size chose it (named in a note).
    progress: show it on stderr (a bar on a terminal; plain lines from 50 images), as detection predict does."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise BoxforgeError(f"--top-k {top_k!r}: allowed an integer >= 1")
    out = Path(out)
    items = resolve_sources(sources, exclude=out)
    backend = model.backend
    classes = list(backend.classes)
    k = min(top_k, len(classes))
    report = ClassifyPredictReport(out, model.meta.describe(), k, counts={c: 0 for c in classes},
                                   notes=list(backend.notes))
    if img_size is not None:
        report.notes.append(f"centre crop {backend.img_size} px (--img-size)")
    entries: list[dict[str, Any]] = []
    start = time.perf_counter()
    batches = iter_probabilities(backend, ImageSource.files(items), batch_size=batch_size, workers=workers)
    with image_progress(len(items), "predict", enabled=progress) as shown:
        for good, probs, errors in batches:
            shown.update(len(good) + len(errors))
            report.skipped.extend((items[i][1], e) for i, e in errors)
            if probs is None:
                continue
            scores, labels = probs.topk(k, dim=1)
            for row, i in enumerate(good):
                top = [{"label": classes[int(c)], "score": round(float(s), 6)}
                       for s, c in zip(scores[row], labels[row])]
                entries.append({"image": items[i][0], "path": str(items[i][1]), "top": top})
                report.counts[top[0]["label"]] += 1
                report.images += 1
    report.seconds = time.perf_counter() - start
    report.predictions_file = write_json(Path(json_path) if json_path else out / "predictions.json",
                                         {"task": "classify", "classes": classes, "top_k": k,
                                          "predictions": entries, "model": str(model.meta.source)})
    return report
