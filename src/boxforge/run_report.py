"""RUN_DIR/report.html: what a training run did, in one file you can mail, archive or open offline.

Written by `api.train` when a run ends (main rank only) and again by `boxforge plot RUN_DIR --report`.
Sections, each with a fixed `id` so tools and tests can find them:

    settings     config.yaml as saved by the run
    dataset      images, boxes and boxes per class of the training and validation splits
    curves       loss, learning rate/throughput and validation mAP against steps (plots/curves.py)
    evaluation   the best checkpoint on the validation split: the per-class table `boxforge eval` prints
                 (VOC07, VOC12, COCO; evaluation/table.py) and the precision/recall curves (plots/evaluation.py)
    predictions  a few validation images with the best checkpoint's detections drawn (plots/draw.py)

Self-contained on purpose: every image is a base64 `data:` URI and the style is inline, with no script and
no external reference, so the page renders the same from an archive, a mail attachment or a sandbox with
no network. A section whose inputs are missing (no validation split, a dataset moved since training)
says why in place of its content; the rest of the report is still written.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image

from boxforge.errors import BoxforgeError
from boxforge.files import atomic_write

if TYPE_CHECKING:
    from boxforge.data.index import DatasetIndex
    from boxforge.evaluation.predictions import Predictions

REPORT_FILE = "report.html"
SHOWN_IMAGES = 6
DRAW_SCORE = 0.3  # detections drawn on the sample images: confident ones only (mAP keeps everything >= 0.001)
MAX_DRAWN = 25  # at most this many boxes per sample image (the most confident), so a weak model stays readable
IMAGE_SIDE = 480  # long side of a drawn sample image, in pixels
_MISSING = (BoxforgeError, OSError, ValueError, KeyError)  # what a moved dataset or partial run looks like

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #dde6f2; padding-bottom: .2em; margin-top: 1.6em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
pre.config { columns: 18em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccd; padding: .25em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #dde6f2; } tr.mean td { font-weight: bold; background: #f2f2f2; }
img { max-width: 100%; height: auto; }
figure { display: inline-block; margin: .4em; vertical-align: top; }
figcaption { font-size: .85em; color: #555; }
p.missing { color: #a33; font-style: italic; }
"""


@dataclass
class Section:
    id: str
    title: str
    body: str


def _png_uri(fig: Any) -> str:
    """A matplotlib Figure as a data URI (PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jpeg_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _table(headers: list[str], rows: list[list[str]], last_is_mean: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="mean"' if last_is_mean and i == len(rows) - 1 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _read_config(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, ""
    text = path.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    return (doc if isinstance(doc, dict) else None), text


def _load_splits(config: dict[str, Any] | None) -> tuple[DatasetIndex | None, DatasetIndex | None, str]:
    """(train index, val index or None, why not) from the run's saved settings, as `fit()` chose them."""
    if config is None:
        return None, None, "no config.yaml in the run directory: the dataset is unknown"
    from boxforge.config import make_config
    from boxforge.data.splits import load_train_val

    try:
        cfg = make_config(config)
        with contextlib.redirect_stdout(io.StringIO()):
            chosen = load_train_val(cfg.data if len(cfg.data) > 1 else cfg.data[0], split=cfg.split, val=cfg.val,
                                    format=cfg.format, allow_overlap=cfg.allow_overlap)
    except _MISSING as exc:
        return None, None, f"cannot read the run's dataset {config.get('data')}: {str(exc).splitlines()[0]}"
    return chosen.train, chosen.val, ""


def _sources(run_dir: Path) -> dict[str, list[str]]:
    """role -> where its images came from, as the run wrote them to RUN_DIR/splits.json."""
    try:
        doc = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {role: list(side.get("sources", [])) for role, side in doc.items() if isinstance(side, dict)}


def settings_section(config_text: str) -> Section:
    if not config_text:
        return Section("settings", "Settings (config.yaml)", _missing("no config.yaml in the run directory"))
    return Section("settings", "Settings (config.yaml)", f'<pre class="config">{html.escape(config_text)}</pre>')


def dataset_section(train: DatasetIndex | None, val: DatasetIndex | None, why: str,
                    sources: dict[str, list[str]] | None = None) -> Section:
    if train is None:
        return Section("dataset", "Dataset", _missing(why))
    splits = [("train", train)] + ([("validation", val)] if val is not None else [])
    classes = list(train.classes)
    boxes = train.task == "detect"  # per class: boxes of a detection set, images of a classification set
    headers = ["split", "sources", "images"] + (["boxes"] if boxes else []) + classes
    rows = []
    for role, index in splits:
        counts = index.class_counts()
        where = "; ".join((sources or {}).get("val" if role == "validation" else role, [])) or index.split or "(all)"
        rows.append([role, where, len(index)] + ([index.num_objects] if boxes else [])
                    + [counts.get(c, 0) for c in classes])
    note = "" if val is not None else _missing("no validation set: best.pt is the last weights, no evaluation")
    return Section("dataset", "Dataset", f"<p>{len(classes)} classes: {html.escape(', '.join(classes))}</p>"
                   + _table(headers, rows) + note)


def curves_section(run_dir: Path) -> tuple[Section, str]:
    """The three figures of `boxforge plot RUN_DIR`, and a one-line summary of the run for the header."""
    from boxforge.plots.curves import loss_figure, lr_figure, read_metrics, val_figure

    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return Section("curves", "Curves", _missing("no metrics.jsonl in the run directory")), ""
    series = read_metrics(metrics)
    title = run_dir.name
    figures = []
    if series.train["step"].size:
        figures += [_img(_png_uri(loss_figure(series, 20, title)), "loss"),
                    _img(_png_uri(lr_figure(series, 20, title)), "learning rate and throughput")]
    if series.val["step"].size:
        figures.append(_img(_png_uri(val_figure(series, title)), "validation mAP"))
    summary = ""
    if series.train["step"].size:
        summary = f"{int(np.nanmax(series.train['step']))} steps"
    if series.best is not None:
        b = series.best
        summary += (f"; best.pt at step {series.val['step'][b]:.0f} with {series.best_key} "
                    f"{series.val[series.best_key][b]:.4f}")
    body = "".join(f"<figure>{f}</figure>" for f in figures) or _missing("metrics.jsonl holds no train or val record")
    return Section("curves", "Curves", body), summary


def _checkpoint(run_dir: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def evaluate_checkpoint(val: DatasetIndex, checkpoint: Path,
                        device: str) -> tuple[Predictions, dict[str, Any], list[str]]:
    """(Predictions, `evaluate_detections` results, notes) of `checkpoint` on `val`, as `boxforge eval` runs it."""
    from boxforge.evaluation import evaluate_detections
    from boxforge.evaluation.errors import analyse_errors
    from boxforge.inference.evaluate import model_predictions
    from boxforge.inference.load import load_model

    preds, notes, skipped = model_predictions(val, load_model(checkpoint, device, task="detect").backend)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_detections(val, preds)
    results["errors"] = analyse_errors(val, preds).to_json()
    if skipped:
        notes.append(f"{len(skipped)} images could not be read; their objects count as missed")
    return preds, results, notes


def evaluation_section(val: DatasetIndex, checkpoint: Path, preds: Predictions, results: dict[str, Any],
                       notes: list[str]) -> Section:
    from boxforge.evaluation.errors import error_rows
    from boxforge.evaluation.table import coco_lines, table_rows
    from boxforge.plots.evaluation import coco_curves, coco_figure, errors_figure, voc_curves, voc_figure

    headers, rows = table_rows(results)
    iou = results["voc12"]["iou_thresh"]
    recall, coco = coco_curves(val, preds)
    figures = [_img(_png_uri(voc_figure(voc_curves(val, preds, iou), iou)), "VOC precision/recall"),
               _img(_png_uri(coco_figure(recall, coco)), "COCO precision/recall")]
    errors = ""
    if "errors" in results:  # where the AP goes: TIDE's breakdown (evaluation/errors.py), as `eval --errors`
        figures.append(_img(_png_uri(errors_figure(results["errors"])), "AP lost by error type"))
        errors = ("<p>Where the AP goes: points of AP each error type would gain if fixed (TIDE), at IoU .50 and "
                  "averaged over .50:.95.</p>"
                  + _table(["error type", "count", "dAP50", "dAP"], error_rows(results["errors"])))
    body = (f"<p>{html.escape(checkpoint.name)} on the validation split {html.escape(str(val.split or '(all)'))}: "
            f"{len(val)} images, {val.num_objects} objects, {len(preds)} detections "
            f"(score threshold 0.001, as training validated).</p>"
            + "".join(f"<p>note: {html.escape(n)}</p>" for n in notes)
            + _table(headers, rows, last_is_mean=True)
            + f"<pre>{html.escape(chr(10).join(coco_lines(results)))}</pre>" + errors
            + "".join(f"<figure>{f}</figure>" for f in figures))
    return Section("evaluation", f"Evaluation of {checkpoint.name}", body)


def predictions_section(val: DatasetIndex, preds: Predictions, checkpoint: Path, count: int) -> Section:
    """Evenly spaced validation images (plots/dataset.pick_samples) with their (at most MAX_DRAWN) detections
    scoring >= DRAW_SCORE."""
    from boxforge.data.images import ImageReadError, load_rgb
    from boxforge.plots.draw import draw_detections
    from boxforge.plots.dataset import pick_samples

    figures = []
    for sample in pick_samples(val, count):
        try:
            image = Image.fromarray(load_rgb(sample.image_path))
        except (ImageReadError, BoxforgeError, OSError) as exc:
            figures.append(f"<figcaption>{html.escape(sample.image_id)}: cannot read ({html.escape(str(exc))})"
                           "</figcaption>")
            continue
        scale = min(1.0, IMAGE_SIDE / max(image.size))
        if scale < 1.0:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        found = preds.images.get(sample.image_id)
        if found is not None and len(found):
            keep = np.flatnonzero(found.scores >= DRAW_SCORE)
            keep = keep[np.argsort(-found.scores[keep], kind="stable")][:MAX_DRAWN]
            boxes, scores, labels = found.boxes[keep] * scale, found.scores[keep], found.labels[keep]
        else:
            boxes, scores, labels = np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
        drawn = draw_detections(image, boxes, scores, labels, val.classes)
        caption = f"{sample.image_id}: {len(scores)} detections drawn, {sample.num_objects} objects annotated"
        figures.append(f"<figure>{_img(_jpeg_uri(drawn), sample.image_id)}"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    body = "".join(figures) or _missing("the validation split has no image file to draw on")
    return Section("predictions", f"Predictions of {checkpoint.name} (score >= {DRAW_SCORE})", body)


def _model_sections(run_dir: Path, val: DatasetIndex | None, device: str, images: int) -> list[Section]:
    """evaluation and predictions: both need the checkpoint run on the validation split, done once here."""
    checkpoint = _checkpoint(run_dir)
    why = ""
    if val is None:
        why = "no validation split to evaluate on"
    elif checkpoint is None:
        why = "no best.pt or last.pt in the run directory"
    elif val.task != "detect":
        why = f"a {val.task} run: the detection table and drawings do not apply"
    else:
        try:
            preds, results, notes = evaluate_checkpoint(val, checkpoint, device)
        except _MISSING as exc:
            why = f"cannot evaluate {checkpoint.name}: {str(exc).splitlines()[0]}"
    if why:
        return [Section("evaluation", "Evaluation", _missing(why)),
                Section("predictions", "Predictions", _missing(why))]
    if checkpoint.name != "best.pt":
        notes.append("no best.pt (no validation gave a finite mAP): showing last.pt")
    return [evaluation_section(val, checkpoint, preds, results, notes),
            predictions_section(val, preds, checkpoint, images)]


def render(title: str, summary: str, sections: list[Section]) -> str:
    nav = " | ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections]
    written = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)} (report written {written})</p>"
            f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n")


def write_report(run_dir: str | Path, *, device: str = "auto", images: int = SHOWN_IMAGES,
                 out: str | Path | None = None) -> Path:
    """Write the run report (default RUN_DIR/report.html, atomically) and return its path.

    device: where the checkpoint runs for the evaluation ("auto", "cpu", "cuda").
    images: how many validation images to draw. Raises BoxforgeError only when RUN_DIR is not a run.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "config.yaml").is_file():
        raise BoxforgeError(f"{run_dir}: not a boxforge run directory (no metrics.jsonl or config.yaml)")
    config, config_text = _read_config(run_dir)
    train, val, why = _load_splits(config)
    curves, summary = curves_section(run_dir)
    sections = [settings_section(config_text), dataset_section(train, val, why, _sources(run_dir)), curves]
    sections += _model_sections(run_dir, val, device, images)
    model = f"{config.get('model')} on {', '.join(map(str, config.get('data') or []))}: " if config else ""
    page = render(f"boxforge run {run_dir.name}", model + (summary or "no training steps logged"), sections)
    return atomic_write(Path(out) if out is not None else run_dir / REPORT_FILE, page)
