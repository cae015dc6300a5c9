"""`boxforge audit --apply DECISIONS.json --data DATA --out NEW`: a corrected copy, the original untouched.

Only accepted decisions change anything: a missing box is added, a spurious label removed, a bad box
replaced by the suggested one, a wrong class changed to the suggested class. NEW is the dataset's folder
copied file for file, in its own format and layout (VOC, COCO, YOLO, txt), where only the annotation files
of changed images differ, and only in the changed labels (data/patch.py: a COCO file keeps its info,
licenses, ids and segmentations, a VOC file its other elements). NEW/audit-manifest.json lists every change
(image, kind, label, before, after) and every changed file with its checksums before and after: what was
changed can be read, checked and undone by hand. The original files are only read. A decisions file that does not
fit the dataset (an unknown image, a label that is not there or has moved since the audit, an unknown
class) is refused with one line naming the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxforge.audit.rank import KINDS
from boxforge.audit.review import DECISIONS_FORMAT
from boxforge.data.formats.coco import load_json
from boxforge.data.index import DatasetIndex, Sample
from boxforge.data.patch import FORMATS, Edit, PatchReport, copy_with_edits
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
    patch: PatchReport

    def summary(self) -> str:
        def n(count: int, what: str) -> str:
            return f"{count} {what}{'' if count == 1 else 's'}"
        lines = [f"applied {n(self.accepted, 'accepted change')} ({self.rejected} rejected left as they were) to a "
                 f"copy in {self.out}: {n(self.patch.copied, 'file')} copied, {n(len(self.patch.files), 'annotation file')} "
                 f"changed; every change is listed in {self.manifest}"]
        return "\n".join(lines + self.patch.notes)


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


def _edits_of(sample: Sample, accepted: list[dict[str, Any]], classes: list[str],
              changes: list[dict[str, Any]]) -> list[Edit]:
    """The accepted decisions of one image as edits of its labels, each change recorded for the manifest."""
    edits = []
    for d in accepted:
        g = d.get("label")
        before = {"box": sample.boxes[g].tolist(), "class": classes[int(sample.labels[g])]} if g is not None else None
        kind = d["kind"]
        if kind == "spurious_box":
            edits.append(Edit("remove", g))
        elif kind == "bad_box":
            edits.append(Edit("box", g, box=tuple(d["suggested_box"])))
        elif kind == "wrong_class":
            edits.append(Edit("class", g, cls=classes.index(d["suggested_class"])))
        else:
            edits.append(Edit("add", box=tuple(d["suggested_box"]), cls=classes.index(d["suggested_class"])))
        after = None if kind == "spurious_box" else {
            "box": d["suggested_box"] if kind in ("bad_box", "missing_box") else before["box"],  # type: ignore[index]
            "class": d["suggested_class"] if kind in ("wrong_class", "missing_box") else before["class"]}  # type: ignore[index]
        changes.append({"image": sample.image_id, "kind": kind, "label": g, "before": before, "after": after})
    return edits


def apply_decisions(decisions: Path, index: DatasetIndex, out: Path, *, source: str) -> ApplyReport:
    """Write `index` with the accepted decisions applied to the new folder `out` (see the module docstring)."""
    if index.format not in FORMATS:
        raise BoxforgeError(f"{index.root}: a {index.format} dataset; --apply writes {', '.join(FORMATS)} copies")
    checked = read_decisions(Path(decisions), index)
    accepted: dict[str, list[dict[str, Any]]] = {}
    for d in checked:
        if d["decision"] == "accept":
            accepted.setdefault(d["image"], []).append(d)
    changes: list[dict[str, Any]] = []
    samples = index.by_id()
    edits = {image: _edits_of(samples[image], decided, index.classes, changes) for image, decided in accepted.items()}
    patch = copy_with_edits(index, Path(out), edits)
    manifest = write_json(Path(out) / MANIFEST, {
        "source": source, "source_root": str(Path(index.root).resolve()), "decisions": str(decisions),
        "format": index.format, "changes": changes, "files": patch.files, "notes": patch.notes,
        "undo": "every other file is a byte-identical copy; to undo, copy each changed file (files[].path) back "
                "from source_root, which --apply only read"}, indent=1)
    return ApplyReport(Path(out), len(changes), sum(d["decision"] == "reject" for d in checked), changes, manifest,
                       patch)
