"""`boxforge prepare imagenet`: the ILSVRC2012 downloads as ImageFolder trees, one folder per WordNet id.

Validation: the 50,000 flat `ILSVRC2012_val_%08d.JPEG` files are moved (renamed, never copied or
deleted) into `VAL/<wnid>/`, the class of image k being line k of the devkit's ground truth. Before
anything moves, every image the ground truth names must be found (flat, or already in its folder)
and no flat image may be unknown to it; then the full plan is written to VAL/MANIFEST, and only
then are files moved. So a run killed midway leaves a manifest covering every move it may have
made: rerunning finishes the job, `undo_imagenet(manifest)` puts every file back.

Train: each per-class `TRAIN/<wnid>.tar` is unpacked into `TRAIN/<wnid>/` (through a hidden
`.<wnid>.partial` folder renamed at the end, so a folder that exists is complete), with tarfile's
"data" filter: no member may leave the folder, links and devices are refused. The tars stay.

Both trees get CLASS_MAP, `{wnid: [class names]}`, beside the class folders. Idempotent: a second
run finds everything in place, changes nothing and says so. The moves and the unpacking show their
progress on stderr (boxforge/progress.py: a bar on a terminal, else a line every few seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from boxforge.errors import BoxforgeError
from boxforge.prepare.devkit import Devkit, read_devkit
from boxforge.files import atomic_write
from boxforge.progress import progress

VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"
MANIFEST = "boxforge-prepare-manifest.json"
CLASS_MAP = "wnid_to_names.json"


@dataclass
class PrepareReport:
    classes: int = 0
    val_moved: int = 0
    val_in_place: int = 0
    train_unpacked: int = 0
    train_in_place: int = 0
    manifest: Path | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.val_moved or self.train_unpacked or self.written)

    def summary(self) -> str:
        lines = [f"devkit: {self.classes} classes"]
        if self.val_moved or self.val_in_place:
            lines.append(f"validation: moved {self.val_moved} images into class folders, "
                         f"{self.val_in_place} were already in place")
        if self.train_unpacked or self.train_in_place:
            lines.append(f"train: unpacked {self.train_unpacked} class archives, "
                         f"{self.train_in_place} were already unpacked")
        lines += [f"wrote {p}" for p in self.written]
        if self.manifest and self.val_moved:
            lines.append(f"undo the moves with: boxforge prepare imagenet --undo {self.manifest}")
        if not self.changed:
            lines.append("nothing to do: everything was already prepared; nothing changed")
        return "\n".join(lines)


def prepare_imagenet(devkit: str | Path, *, val: str | Path | None = None,
                     train: str | Path | None = None) -> PrepareReport:
    """Sort VAL into class folders and/or unpack TRAIN's class tars; see the module docstring."""
    if val is None and train is None:
        raise BoxforgeError("prepare imagenet: give --val VAL_DIR and/or --train TRAIN_DIR")
    kit = read_devkit(devkit)
    report = PrepareReport(classes=len(kit.wnids))
    for folder in (val, train):
        if folder is not None and not Path(folder).is_dir():
            raise BoxforgeError(f"{folder}: not a folder (unpack the ILSVRC2012 archive into a folder first)")
    if val is not None:
        _prepare_val(kit, Path(val), report)
    if train is not None:
        _prepare_train(kit, Path(train), report)
    return report


def _write_class_map(kit: Devkit, folder: Path, report: PrepareReport) -> None:
    text = json.dumps({w: list(n) for w, n in zip(kit.wnids, kit.names)}, indent=1) + "\n"
    path = folder / CLASS_MAP
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, text)
    report.written.append(path)


def plan_val(kit: Devkit, val_dir: Path) -> tuple[list[tuple[str, str]], int]:
    """([(file name, wnid)] still to move, number already in place); raises before any move if counts differ."""
    flat = {p.name for p in val_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg")}
    expected = [VAL_NAME.format(k) for k in range(1, len(kit.val_ids) + 1)]
    unknown = sorted(flat - set(expected))
    if unknown:
        raise BoxforgeError(f"{val_dir}: {len(unknown)} images are not in the devkit's ground truth of "
                            f"{len(expected)} (e.g. {unknown[0]}); wrong devkit or folder? nothing was moved")
    moves, in_place, missing = [], 0, []
    for number, name in enumerate(expected, start=1):
        wnid = kit.val_wnid(number)
        if name in flat:
            moves.append((name, wnid))
        elif (val_dir / wnid / name).is_file():
            in_place += 1
        else:
            missing.append(name)
    if missing:
        raise BoxforgeError(f"{val_dir}: found {len(expected) - len(missing)} of the {len(expected)} validation "
                            f"images the ground truth lists; missing e.g. {missing[0]}; nothing was moved")
    return moves, in_place


def _prepare_val(kit: Devkit, val_dir: Path, report: PrepareReport) -> None:
    moves, report.val_in_place = plan_val(kit, val_dir)
    manifest = val_dir / MANIFEST
    report.manifest = manifest if manifest.is_file() or moves else None
    if moves:
        earlier = _read_manifest(manifest)["moves"] if manifest.is_file() else []
        seen = {m["file"] for m in earlier}
        entries = earlier + [{"file": name, "wnid": wnid} for name, wnid in moves if name not in seen]
        atomic_write(manifest, json.dumps({"version": 1, "kind": "imagenet-val", "moves": entries}, indent=0))
        for wnid in sorted({w for _, w in moves}):
            (val_dir / wnid).mkdir(exist_ok=True)
        with progress(len(moves), label="prepare: validation", unit="images") as shown:
            for name, wnid in shown.iterate(moves):
                os.rename(val_dir / name, val_dir / wnid / name)  # same folder tree: an atomic rename
        report.val_moved = len(moves)
    _write_class_map(kit, val_dir, report)


def _prepare_train(kit: Devkit, train_dir: Path, report: PrepareReport) -> None:
    known = set(kit.wnids)
    tars = sorted(p for p in train_dir.glob("*.tar") if p.is_file())
    strangers = [p.name for p in tars if p.stem not in known]
    if strangers:
        raise BoxforgeError(f"{train_dir}: {len(strangers)} archives are not named after a devkit class "
                            f"(e.g. {strangers[0]}); expected <wnid>.tar; nothing was unpacked")
    if not tars and not any((train_dir / w).is_dir() for w in kit.wnids):
        raise BoxforgeError(f"{train_dir}: no <wnid>.tar class archives and no class folders")
    todo = [p for p in tars if not (train_dir / p.stem).is_dir()]
    report.train_in_place += len(tars) - len(todo)
    with progress(len(todo), label="prepare: train", unit="archives") as shown:
        for tar_path in shown.iterate(todo):
            _unpack(tar_path, train_dir / tar_path.stem)
            report.train_unpacked += 1
    _write_class_map(kit, train_dir, report)


def _unpack(tar_path: Path, target: Path) -> None:
    """tar_path into the new folder `target`, through a hidden `.<name>.partial` renamed at the end."""
    partial = target.parent / f".{target.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # our own leftover from an interrupted run
    partial.mkdir()
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            tar.extractall(partial, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BoxforgeError(f"{tar_path}: cannot unpack safely: {exc}") from exc
    os.rename(partial, target)


def _read_manifest(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if doc.get("kind") != "imagenet-val" or not isinstance(doc.get("moves"), list):
            raise ValueError("not an imagenet-val manifest")
        return doc
    except (OSError, ValueError) as exc:
        raise BoxforgeError(f"{path}: not a boxforge prepare manifest ({exc})") from exc


def undo_imagenet(manifest: str | Path) -> tuple[int, int]:
    """Move every validation image the manifest names back to the flat folder; (restored, already flat).

    Class folders left empty afterwards are removed (we made them); nothing else is touched.
    """
    manifest = Path(manifest)
    val_dir = manifest.parent
    moves = _read_manifest(manifest)["moves"]
    restored = already = 0
    for entry in moves:
        flat, placed = val_dir / entry["file"], val_dir / entry["wnid"] / entry["file"]
        if flat.exists():
            already += 1
        elif placed.is_file():
            os.rename(placed, flat)
            restored += 1
        else:
            raise BoxforgeError(f"{placed}: missing, cannot put {entry['file']} back (restored {restored} so far)")
    for wnid in sorted({e["wnid"] for e in moves}):
        folder = val_dir / wnid
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return restored, already

