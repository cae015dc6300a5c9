"""The one split policy: which images a run trains on, validates on, and `eval` scores by default.

`train`, `eval`, `check` and the API all ask `plan_splits`; nothing else in boxforge chooses a split.

| DATA offers | train on | validate on | `eval` default |
|---|---|---|---|
| VOCdevkit with several years (VOC2007 + VOC2012) | every year's `trainval` (else `train`) | `VOC2007/test` (else another year's `test`) | the same |
| one root with `train` and `val` (+ `test`, `trainval`) | `train` | `val` | `test`, else `val` |
| one root with `trainval` and `test` (no `val`) | `trainval` | `test` | `test` |
| one root with `train` and `test` | `train` | `test` | `test` |
| COCO folder (`instances_train2017.json`, ...) | `train*` | `val*` (same year) | `test*` with boxes, else `val*` |
| YOLO data.yaml / darknet obj.data | `train` | `val` / `valid` | `test`, else `val` |
| no splits | every image | none (a warning) | every image |

Names are matched by role: `valid`/`validation` are `val`, a trailing year is ignored (`train2017`).
`trainval` contains `train` and `val` by definition, so those pairs are never chosen together, and
whatever the choice, `load_train_val` compares the two sets by file and by content before training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxforge.data.formats.detect import JOIN, SplitOffer, load_dataset, offered_splits
from boxforge.data.index import DatasetIndex
from boxforge.data.leakage import shared_images
from boxforge.errors import DatasetError

DataArg = str | Path | list[str | Path]
ROLE_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "minival": "val"}
# Split pairs that overlap by definition (VOC trainval = train + val).
NESTED_ROLES = {frozenset(("trainval", "train")), frozenset(("trainval", "val"))}
PREFERRED_VAL_YEAR = "VOC2007"  # the 07+12 protocol of the SSD papers validates and tests on VOC2007 test


def role(name: str) -> str:
    """`train`, `val`, `test`, `trainval` or the name itself: what a split is for, from its name."""
    base = re.sub(r"[-_]?\d+$", "", name.rsplit("/", 1)[-1].lower())
    return ROLE_ALIASES.get(base, base)


def nested_splits(a: str, b: str) -> bool:
    """True when splits `a` and `b` share images by definition: the same name, `trainval` with `train` or
    `val` of the same dataset (or year), a merged part and its own splits (`VOC2007` and `VOC2007/test`).
    Joined names (`a+b`) are nested when any of their parts are; an unqualified name means every year's."""
    for x in a.split(JOIN):
        for y in b.split(JOIN):
            if x == y or x.startswith(f"{y}/") or y.startswith(f"{x}/"):
                return True
            (px, _, nx), (py, _, ny) = x.rpartition("/"), y.rpartition("/")
            if (px == py or not px or not py) and (nx == ny or frozenset((role(nx), role(ny))) in NESTED_ROLES):
                return True
    return False


@dataclass(frozen=True)
class SplitPlan:
    """The splits of one DATA: `train` and `val` for training, `test` for `eval`; None means every image
    (train, test) or no validation (val). `reason` says in a few words which rule chose them."""

    layout: str
    offered: tuple[str, ...]
    train: str | None
    val: str | None
    test: str | None
    reason: str = ""


def _by_role(names: list[str]) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {}
    for name in sorted(names):
        roles.setdefault(role(name), []).append(name)
    return roles


def _pair(firsts: list[str], seconds: list[str]) -> tuple[str, str]:
    """The newest pair whose names differ only in their role word (train2017 with val2017)."""
    for a in reversed(firsts):
        for b in reversed(seconds):
            if re.sub(r"^\D+", "", a) == re.sub(r"^\D+", "", b):
                return a, b
    return firsts[-1], seconds[-1]


def _plan_names(offer: SplitOffer) -> tuple[str | None, str | None, str | None, str]:
    """(train, val, test, reason) for a dataset with plain split names."""
    roles = _by_role(list(offer.names))
    train, val, trainval, test = (roles.get(r, []) for r in ("train", "val", "trainval", "test"))
    eval_default = test[-1] if test else (val[-1] if val else None)
    if train and val:
        t, v = _pair(train, val)
        return t, v, eval_default, f"{t} -> {v}" + (f", {test[-1]} kept for eval" if test else "")
    if trainval and test:
        return trainval[-1], test[-1], test[-1], f"no val split: {trainval[-1]} -> {test[-1]}"
    if train and test:
        t, e = _pair(train, test)
        return t, e, e, f"no val split: {t} -> {e}"
    if trainval or train:
        name = (trainval or train)[-1]
        return name, None, eval_default, f"{name}, nothing to validate on"
    return None, None, eval_default, "no splits: every image"


def _plan_years(offer: SplitOffer) -> tuple[str | None, str | None, str | None, str]:
    """The 07+12 protocol: every year's trainval (else train) -> VOC2007/test (else a year's test)."""
    train_parts, tests = [], []
    for year, names in offer.parts.items():
        roles = _by_role(list(names))
        pick = (roles.get("trainval") or roles.get("train") or [None])[-1]
        if pick:
            train_parts.append(f"{year}/{pick}")
        if roles.get("test"):
            tests.append(f"{year}/{roles['test'][-1]}")
    preferred = [t for t in tests if t.startswith(f"{PREFERRED_VAL_YEAR}/")]
    val = (preferred or tests or [None])[0]
    train = JOIN.join(train_parts) or None
    return train, val, val, f"every year's trainval -> {val or 'no test split'}"


def plan_splits(data: DataArg, *, format: str | None = None, train: str | None = None,
                val: str | None = None) -> SplitPlan:
    """The policy above for DATA; `train` (--split) and `val` (--val, a split name) override a side, and
    the other side is then the policy's choice that does not contain the overridden one."""
    offer = offered_splits(data, format=format)
    t, v, test, reason = _plan_years(offer) if offer.parts else _plan_names(offer)
    offered = tuple(offer.all_names())
    candidates = [c for c in (v, test, *sorted(n for n in offered if role(n) in ("val", "test"))) if c]
    if train is not None and val is None:
        v = next((c for c in candidates if not nested_splits(train, c)), None)
        t, reason = train, f"--split {train}" + (f" -> {v}" if v else ", nothing else to validate on")
    elif val is not None and train is None:
        trains = [c for c in (t, *sorted(n for n in offered if role(n) in ("trainval", "train"))) if c]
        t = next((c for c in trains if not nested_splits(c, val)), None)
        v, reason = val, f"{t or 'every image'} -> --val {val}"
    elif train is not None:
        t, v, reason = train, val, f"--split {train} -> --val {val}"
    return SplitPlan(offer.layout, offered, t, v, test, reason)


def eval_split(data: DataArg, *, format: str | None = None) -> str | None:
    """The split `eval` scores when none is given: the policy's `test` (None: every image)."""
    return plan_splits(data, format=format).test


@dataclass
class TrainVal:
    """The training and validation indexes of a run and where they came from (for the log and splits.json)."""

    train: DatasetIndex
    val: DatasetIndex | None
    train_sources: list[str]
    val_sources: list[str]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """`train: N images (DATA: VOC2007/trainval + VOC2012/trainval)` and the same for `val`."""
        lines = [f"train: {len(self.train)} images ({_compact(self.train_sources)})"]
        if self.val is not None:
            lines.append(f"val: {len(self.val)} images ({_compact(self.val_sources)})")
        return lines

    def to_json(self) -> dict[str, Any]:
        """RUN_DIR/splits.json: the sources and image ids (as the index names them) of both sets."""
        def side(index: DatasetIndex | None, sources: list[str]) -> dict[str, Any] | None:
            return None if index is None else {"sources": sources, "images": [s.image_id for s in index.samples]}
        return {"train": side(self.train, self.train_sources), "val": side(self.val, self.val_sources)}


def _compact(sources: list[str]) -> str:
    """["D: a", "D: b"] -> "D: a + b" when every source names the same dataset."""
    labels = {src.rpartition(": ")[0] for src in sources}
    if len(labels) == 1 and len(sources) > 1:
        return f"{labels.pop()}: " + " + ".join(src.rpartition(": ")[2] for src in sources)
    return ", ".join(sources)


def _label(data: DataArg) -> str:
    return " ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)


def _sources(data: DataArg, split: str | None) -> list[str]:
    label = _label(data)
    return [f"{label}: {part}" for part in split.split(JOIN)] if split else [f"{label}: every image"]


def _is_dataset_path(val: str, offered: tuple[str, ...]) -> bool:
    """--val names another dataset (an existing path that is not an id list) rather than a split of DATA."""
    return val not in offered and Path(val).exists() and Path(val).suffix != ".txt"


def load_train_val(data: DataArg, *, split: str | None = None, val: str | None = None,
                   format: str | None = None, allow_overlap: bool = False) -> TrainVal:
    """Read the training and validation sets the policy (or --split / --val) names, and refuse to go on
    when they share images (by file or by content) unless `allow_overlap`.

    val: a split of DATA, or the path of another dataset (read whole).
    Raises DatasetError for an empty training set and for shared images (naming how many and a few).
    """
    other = val is not None and _is_dataset_path(val, tuple(offered_splits(data, format=format).all_names()))
    plan = plan_splits(data, format=format, train=split, val=None if other else val)
    train = load_dataset(data, split=plan.train, format=format)
    if len(train) == 0:
        raise DatasetError(f"{_label(data)}: the training split {plan.train or '(every image)'} has no images")
    notes: list[str] = []
    if other:
        val_index, val_sources = load_dataset(val, format=format, classes=train.classes), [f"{val}: every image"]
    elif plan.val is not None:
        val_index, val_sources = load_dataset(data, split=plan.val, format=format, classes=train.classes), _sources(data, plan.val)
    else:
        val_index, val_sources = None, []
        offered = ", ".join(plan.offered) or "none"
        notes.append(f"warning: no validation set ({_label(data)} splits: {offered}); best.pt will be the last "
                     f"weights. Pass --val SPLIT or --val OTHER_DATASET to choose best.pt on held-out images")
    if val_index is not None and val_index.classes != train.classes:
        raise DatasetError(f"validation classes {val_index.classes} differ from training classes {train.classes}")
    if val_index is not None:
        shared = shared_images(train, val_index)
        if shared.count and not allow_overlap:
            raise DatasetError(f"{shared.describe(len(val_index))}: best.pt would be chosen on training images. "
                               f"Give disjoint sets (--split / --val), or --allow-overlap to train anyway")
        if shared.count:
            notes.append(f"warning: {shared.describe(len(val_index))} (--allow-overlap)")
    return TrainVal(train, val_index, _sources(data, plan.train), val_sources, notes)
