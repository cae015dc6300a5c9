"""`boxforge audit --apply DECISIONS.json --data DATA --out NEW`: a corrected copy, the original untouched.

Only accepted decisions change anything: a missing box is added, a spurious label removed, a bad box
replaced by the suggested one, a wrong class changed to the suggested class. The copy is written by
`convert` in the dataset's own format (VOC, COCO, YOLO, txt) into the new folder NEW, with
NEW/audit-manifest.json listing every change (image, kind, label, before, after): what was changed can
be read, checked and undone by hand. The original files are only read. A decisions file that does not
fit the dataset (an unknown image, a label that is not there or has moved since the audit, an unknown
class) is refused with one line naming the decision.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.audit.rank import KINDS
from boxforge.audit.review import DECISIONS_FORMAT
from boxforge.data.convert import TARGETS, convert
from boxforge.data.formats.coco import load_json
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError
from boxforge.files import write_json

MANIFEST = "audit-manifest.json"
BOX_TOLERANCE = 1e-3  # px: a label box must still be where the audit saw it


@dataclass
class ApplyReport:
    out: Path
    accepted: int
    rejected: int
    changes: list[dict[str, Any]]
    manifest: Path
    convert_summary: str

    def summary(self) -> str:
        return (f"applied {self.accepted} accepted changes ({self.rejected} rejected left as they were) to a copy "
                f"in {self.out}; every change is listed in {self.manifest}\n{self.convert_summary}")


def _box(value: Any, where: str) -> list[float]:
    ok = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise BoxforgeError(f"{where}: expected a box [x1, y1, x2, y2], found {value!r:.60}")
    return [float(v) for v in value]


def read_decisions(path: Path, index: DatasetIndex) -> list[dict[str, Any]]:
    """The decisions of `path`, each checked against `index` (see the module docstring)."""
    doc = load_json(path)
    if not isinstance(doc, dict) or doc.get("format") != DECISIONS_FORMAT or not isinstance(doc.get("decisions"), list):
        raise BoxforgeError(f"{path}: not a boxforge audit decisions file (format {DECISIONS_FORMAT}, written by "
                            "review.html's Save button)")
    samples = index.by_id()
    checked = []
    for n, d in enumerate(doc["decisions"]):
        where = f"{path}: decisions[{n}]"
        if not isinstance(d, dict) or d.get("decision") not in ("accept", "reject") or d.get("kind") not in KINDS:
            raise BoxforgeError(f"{where}: needs a decision (accept or reject) and a kind ({', '.join(KINDS)})")
        sample = samples.get(d.get("image"))
        if sample is None:
            raise BoxforgeError(f"{where}: image {d.get('image')!r} is not in {index.root}; is this the dataset "
                                "that was audited?")
        if d["kind"] != "missing_box":
            _check_label(d, sample, index.classes, where)
        if d["kind"] in ("missing_box", "wrong_class") and d.get("suggested_class") not in index.classes:
            raise BoxforgeError(f"{where}: suggested class {d.get('suggested_class')!r} is not one of "
                                f"{', '.join(index.classes)}")
        if d["kind"] in ("missing_box", "bad_box"):
            _box(d.get("suggested_box"), f"{where} suggested_box")
        checked.append(d)
    return checked


def _check_label(d: dict[str, Any], sample: Sample, classes: list[str], where: str) -> None:
    label = d.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < sample.num_objects:
        raise BoxforgeError(f"{where}: label {label!r} of {sample.image_id}, which has {sample.num_objects} labels")
    box = _box(d.get("label_box"), f"{where} label_box")
    if np.abs(sample.boxes[label] - np.array(box)).max() > BOX_TOLERANCE or \
            classes[int(sample.labels[label])] != d.get("label_class"):
        raise BoxforgeError(f"{where}: label {label} of {sample.image_id} is not the {d.get('label_class')} at {box} "
                            "the audit saw: the dataset changed since; audit it again")


def _apply_to_sample(sample: Sample, accepted: list[dict[str, Any]], classes: list[str],
                     changes: list[dict[str, Any]]) -> Sample:
    out = copy.deepcopy(sample)
    boxes, labels = out.boxes.copy(), out.labels.copy()
    keep = np.ones(len(boxes), dtype=bool)
    added_boxes, added_labels = [], []
    for d in accepted:
        g = d.get("label")
        before = {"box": boxes[g].tolist(), "class": classes[int(labels[g])]} if g is not None else None
        if d["kind"] == "spurious_box":
            keep[g] = False
        elif d["kind"] == "bad_box":
            boxes[g] = d["suggested_box"]
        elif d["kind"] == "wrong_class":
            labels[g] = classes.index(d["suggested_class"])
        else:
            added_boxes.append(d["suggested_box"])
            added_labels.append(classes.index(d["suggested_class"]))
        after = None if d["kind"] == "spurious_box" else {
            "box": d["suggested_box"] if d["kind"] in ("bad_box", "missing_box") else boxes[g].tolist(),
            "class": d["suggested_class"] if d["kind"] in ("wrong_class", "missing_box") else classes[int(labels[g])]}
        changes.append({"image": sample.image_id, "kind": d["kind"], "label": g, "before": before, "after": after})
    out.boxes = np.concatenate([boxes[keep], np.array(added_boxes, dtype=np.float64).reshape(-1, 4)])
    out.labels = np.concatenate([labels[keep], np.array(added_labels, dtype=np.int64)])
    out.difficult = np.concatenate([out.difficult[keep], np.zeros(len(added_boxes), bool)])
    out.truncated = np.concatenate([out.truncated[keep], np.zeros(len(added_boxes), bool)])
    out.__post_init__()
    return out


def apply_decisions(decisions: Path, index: DatasetIndex, out: Path, *, source: str) -> ApplyReport:
    """Write `index` with the accepted decisions applied to the new folder `out` (see the module docstring)."""
    if index.format not in TARGETS:
        raise BoxforgeError(f"{index.root}: a {index.format} dataset; --apply writes {', '.join(TARGETS)} copies")
    checked = read_decisions(Path(decisions), index)
    accepted: dict[str, list[dict[str, Any]]] = {}
    for d in checked:
        if d["decision"] == "accept":
            accepted.setdefault(d["image"], []).append(d)
    changes: list[dict[str, Any]] = []
    corrected = copy.copy(index)
    corrected.samples = [_apply_to_sample(s, accepted[s.image_id], index.classes, changes)
                         if s.image_id in accepted else s for s in index.samples]
    report = convert(corrected, Path(out), index.format)
    manifest = write_json(Path(out) / MANIFEST, {"source": source, "decisions": str(decisions),
                                                  "format": index.format, "changes": changes}, indent=1)
    return ApplyReport(Path(out), len(changes), sum(d["decision"] == "reject" for d in checked), changes, manifest,
                       report.summary())
