"""`boxforge prepare imagenet` on a tiny devkit the test writes with scipy.io.savemat."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from boxforge.cli import main
from boxforge.data.formats.detect import load_dataset
from boxforge.errors import BoxforgeError
from boxforge.prepare import prepare_imagenet, undo_imagenet
from boxforge.prepare.imagenet import CLASS_MAP, MANIFEST, VAL_NAME
from tests.conftest import write_image

# Three leaves (ids 1..3) and one inner node (id 4) that must not become a class.
SYNSETS = [(1, "n01440764", "tench, Tinca tinca", 0), (2, "n01443537", "goldfish, Carassius auratus", 0),
           (3, "n01484850", "great white shark", 0), (4, "n00000001", "fish", 3)]
GROUND_TRUTH = [2, 1, 3, 3, 2, 1, 1]  # 1-based ids of validation images 1..7


def make_devkit(root: Path, ground_truth: list[int] = GROUND_TRUTH) -> Path:
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array([(np.int32(i), w, words, np.int32(n)) for i, w, words, n in SYNSETS], dtype=dtype)
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{g}\n" for g in ground_truth))
    return root / "ILSVRC2012_devkit_t12"


def make_val(folder: Path, count: int = len(GROUND_TRUTH)) -> list[Path]:
    return [write_image(folder / VAL_NAME.format(k), 16, 16, seed=k) for k in range(1, count + 1)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_val_sorted_into_wnid_folders_then_second_run_changes_nothing_then_undo(tmp_path: Path) -> None:
    devkit = make_devkit(tmp_path / "kit")
    val = tmp_path / "val"
    originals = {p.name: p.read_bytes() for p in make_val(val)}

    report = prepare_imagenet(devkit, val=val)
    assert (report.classes, report.val_moved, report.val_in_place) == (3, 7, 0)
    wnids = {s[0]: s[1] for s in SYNSETS}
    for k, gt in enumerate(GROUND_TRUTH, start=1):
        moved = val / wnids[gt] / VAL_NAME.format(k)
        assert moved.read_bytes() == originals[moved.name]
    assert not list(val.glob("*.JPEG"))
    names = json.loads((val / CLASS_MAP).read_text())
    assert names == {"n01440764": ["tench", "Tinca tinca"], "n01443537": ["goldfish", "Carassius auratus"],
                     "n01484850": ["great white shark"]}
    index = load_dataset(val)  # the result reads as an ImageFolder, classes in wnid order
    assert index.classes == ["n01440764", "n01443537", "n01484850"] and len(index) == 7
    assert [index.classes[s.label] for s in sorted(index.samples, key=lambda s: s.image_path.name)] == \
        [wnids[g] for g in GROUND_TRUTH]

    before = snapshot(val)
    again = prepare_imagenet(devkit, val=val)
    assert (again.val_moved, again.val_in_place, again.changed) == (0, 7, False)
    assert "nothing changed" in again.summary()
    assert snapshot(val) == before

    assert undo_imagenet(val / MANIFEST) == (7, 0)
    assert {p.name: p.read_bytes() for p in val.glob("*.JPEG")} == originals
    assert not [d for d in val.iterdir() if d.is_dir()]  # the class folders we made are gone, being empty


def test_count_mismatch_moves_nothing(tmp_path: Path) -> None:
    devkit = make_devkit(tmp_path / "kit")
    val = tmp_path / "val"
    make_val(val, count=6)  # image 7 is missing
    with pytest.raises(BoxforgeError, match=r"found 6 of the 7 .*ILSVRC2012_val_00000007.JPEG.*nothing was moved"):
        prepare_imagenet(devkit, val=val)
    write_image(val / VAL_NAME.format(7), 16, 16)
    write_image(val / VAL_NAME.format(8), 16, 16)  # one the ground truth does not know
    with pytest.raises(BoxforgeError, match="1 images are not in the devkit's ground truth"):
        prepare_imagenet(devkit, val=val)
    assert not (val / MANIFEST).exists() and len(list(val.glob("*.JPEG"))) == 8


def test_devkit_archive_and_cli_with_train_tars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devkit = make_devkit(tmp_path / "kit")
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(devkit, arcname="ILSVRC2012_devkit_t12")
    val, train = tmp_path / "val", tmp_path / "train"
    make_val(val)
    train.mkdir()
    for wnid in ("n01440764", "n01443537", "n01484850"):
        image = write_image(tmp_path / "src" / f"{wnid}_1.JPEG", 16, 16)
        with tarfile.open(train / f"{wnid}.tar", "w") as tar:
            tar.add(image, arcname=image.name)
    args = ["prepare", "imagenet", "--devkit", str(archive), "--val", str(val), "--train", str(train)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "moved 7 images" in out and "unpacked 3 class archives" in out
    assert (train / "n01443537" / "n01443537_1.JPEG").is_file() and (train / "n01443537.tar").is_file()
    assert load_dataset(train).classes == ["n01440764", "n01443537", "n01484850"]
    assert main(args) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["prepare", "imagenet", "--undo", str(val / MANIFEST)]) == 0
    assert len(list(val.glob("*.JPEG"))) == 7


def test_train_tar_that_escapes_is_refused(tmp_path: Path) -> None:
    devkit = make_devkit(tmp_path / "kit")
    train = tmp_path / "train"
    train.mkdir()
    with tarfile.open(train / "n01440764.tar", "w") as tar:
        payload = b"not an image"
        info = tarfile.TarInfo("../escaped.JPEG")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(BoxforgeError, match="n01440764.tar: cannot unpack safely"):
        prepare_imagenet(devkit, train=train)
    assert not (tmp_path / "escaped.JPEG").exists()
    assert not (train / "n01440764").exists() and not (train / ".n01440764.partial").exists()
