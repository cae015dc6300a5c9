"""The one split policy (data/splits.py) on layouts as users download them, and the shared-image check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from boxforge.data.formats.detect import load_dataset, offered_splits
from boxforge.data.splits import load_train_val, nested_splits, plan_splits
from boxforge.errors import BoxforgeError
from boxforge.inference.evaluate import default_split
from tests import layouts
from tests.conftest import RACCOON


def _plan(data, **kw) -> tuple:
    p = plan_splits(data, **kw)
    return p.train, p.val, p.test


def test_vocdevkit_with_two_years_trains_on_07_12_trainval_and_validates_on_2007_test(tmp_path: Path) -> None:
    devkit = layouts.vocdevkit_0712(tmp_path)
    assert _plan(devkit) == ("VOC2007/trainval+VOC2012/trainval", "VOC2007/test", "VOC2007/test")
    # the MXNet / MindSpore way: both years given as two paths
    assert _plan([devkit / "VOC2007", devkit / "VOC2012"]) == _plan(devkit)
    chosen = load_train_val(devkit)
    ids07 = (devkit / "VOC2007/ImageSets/Main/trainval.txt").read_text().split()
    ids12 = (devkit / "VOC2012/ImageSets/Main/trainval.txt").read_text().split()
    test07 = (devkit / "VOC2007/ImageSets/Main/test.txt").read_text().split()
    assert sorted(s.image_id for s in chosen.train.samples) == sorted(
        [f"VOC2007/{i}" for i in ids07] + [f"VOC2012/{i}" for i in ids12])
    assert sorted(s.image_id for s in chosen.val.samples) == sorted(f"VOC2007/{i}" for i in test07)
    assert chosen.summary()[0].endswith("VOC2007/trainval + VOC2012/trainval)")
    assert default_split(devkit) == "VOC2007/test"


def test_a_year_qualified_split_reads_that_year_with_the_merged_ids(tmp_path: Path) -> None:
    devkit = layouts.vocdevkit_0712(tmp_path)
    test07 = load_dataset(devkit, split="VOC2007/test")
    merged = {s.image_id for s in load_dataset(devkit).samples}
    assert test07.samples and {s.image_id for s in test07.samples} <= merged
    assert all(s.image_id.startswith("VOC2007/") for s in test07.samples)
    with pytest.raises(BoxforgeError, match="no 'VOC2010' here; the years are: VOC2007, VOC2012"):
        load_dataset(devkit, split="VOC2010/test")
    with pytest.raises(BoxforgeError, match="no split 'test'"):  # VOC2012 has no test list
        load_dataset(devkit, split="VOC2012/test")


def test_a_voc_root_with_all_four_lists_validates_on_val_not_on_a_subset_of_trainval(tmp_path: Path) -> None:
    root = layouts.voc_four_lists(tmp_path)
    assert _plan(root) == ("train", "val", "test")
    # one side given: the other is the policy's choice that does not contain it
    assert _plan(root, train="trainval") == ("trainval", "test", "test")
    assert _plan(root, val="test") == ("train", "test", "test")
    assert _plan(root, val="val")[0] == "train"


def test_other_layouts_follow_the_table(tmp_path: Path) -> None:
    assert _plan(layouts.coco2017(tmp_path)) == ("train2017", "val2017", "val2017")
    assert _plan(layouts.yolo_yaml_three(tmp_path)) == ("train", "val", "test")
    assert _plan(layouts.darknet_obj_data(tmp_path)) == ("train", "valid", "valid")
    assert _plan(layouts.roboflow_voc(tmp_path)) == ("train", "valid", "test")
    assert _plan(RACCOON) == ("train", "test", "test")  # no val list: train -> test


def test_coco2017_folder_no_longer_merges_train_and_val(tmp_path: Path) -> None:
    chosen = load_train_val(layouts.coco2017(tmp_path, n_train=6, n_val=3))
    assert (len(chosen.train), len(chosen.val)) == (6, 3)
    assert chosen.train_sources[0].endswith(": train2017") and chosen.val_sources[0].endswith(": val2017")


def test_yolo_yaml_keeps_test_out_of_training(tmp_path: Path) -> None:
    chosen = load_train_val(layouts.yolo_yaml_three(tmp_path))
    test_files = {p.resolve() for p in (tmp_path / "yolo/images/test").glob("*.jpg")}
    assert (len(chosen.train), len(chosen.val)) == (5, 2)
    assert not test_files & {s.image_path.resolve() for s in chosen.train.samples + chosen.val.samples}


def test_joined_splits_keep_each_image_once_and_disambiguate_reused_names(tmp_path: Path) -> None:
    data = layouts.yolo_yaml_three(tmp_path)
    joined = load_dataset(data, split="train+val")
    assert len(joined) == 7 and len({s.image_id for s in joined.samples}) == 7
    assert len({s.image_path for s in joined.samples}) == 7
    root = layouts.voc_four_lists(tmp_path)
    assert len(load_dataset(root, split="train+trainval")) == len(load_dataset(root, split="trainval"))


def test_nested_split_names() -> None:
    assert nested_splits("trainval", "val") and nested_splits("VOC2007/trainval", "VOC2007/train")
    assert nested_splits("trainval", "VOC2007/trainval")  # an unqualified name is every year's
    assert nested_splits("VOC2007", "VOC2007/test") and nested_splits("a+VOC2007/test", "VOC2007/test")
    assert not nested_splits("VOC2007/trainval+VOC2012/trainval", "VOC2007/test")
    assert not nested_splits("train2017", "val2017") and not nested_splits("VOC2012/trainval", "VOC2007/val")


def test_shared_images_by_file_are_an_error_naming_how_many_and_a_few(tmp_path: Path) -> None:
    root = layouts.voc_four_lists(tmp_path)
    with pytest.raises(BoxforgeError) as err:
        load_train_val(root, split="trainval", val="val")
    message = str(err.value)
    assert "2 of the 2 validation images are also training images" in message and "img004 (same file)" in message
    assert "--allow-overlap" in message and "\n" not in message
    allowed = load_train_val(root, split="trainval", val="val", allow_overlap=True)
    assert any("--allow-overlap" in n for n in allowed.notes)


def test_shared_images_by_content_under_other_names_are_found(tmp_path: Path) -> None:
    root = layouts.roboflow_voc(tmp_path)
    image = sorted((root / "train").glob("*.jpg"))[1]
    shutil.copy(image, root / "valid" / "renamed.jpg")
    shutil.copy(image.with_suffix(".xml"), root / "valid" / "renamed.xml")
    with pytest.raises(BoxforgeError, match=f"renamed \\(same content as training image {image.stem}\\)"):
        load_train_val(root)


def test_reused_file_names_with_different_content_are_not_a_leak(tmp_path: Path) -> None:
    chosen = load_train_val(layouts.yolo_yaml_three(tmp_path))  # im000.jpg exists in train/ and val/
    assert chosen.notes == []


def test_no_validation_set_is_a_warning_naming_the_flag(tmp_path: Path) -> None:
    root = layouts.voc_four_lists(tmp_path)
    for name in ("train", "val", "test", "trainval"):
        (root / "ImageSets/Main" / f"{name}.txt").unlink()
    chosen = load_train_val(root)
    assert chosen.val is None and len(chosen.train) == 8
    assert "best.pt will be the last weights" in chosen.notes[0] and "--val" in chosen.notes[0]


def test_offered_splits_never_takes_per_class_lists_for_splits(tmp_path: Path) -> None:
    offer = offered_splits(layouts.vocdevkit_0712(tmp_path))
    assert offer.parts == {"VOC2007": ("test", "train", "trainval", "val"), "VOC2012": ("train", "trainval", "val")}


def test_check_of_a_vocdevkit_reports_the_plan_and_no_false_overlap(tmp_path: Path) -> None:
    devkit = layouts.vocdevkit_0712(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "boxforge", "check", str(devkit), "--json", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "splits: training VOC2007/trainval+VOC2012/trainval, validation VOC2007/test, eval VOC2007/test" in proc.stdout
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["splits"] == {"train": "VOC2007/trainval+VOC2012/trainval", "val": "VOC2007/test",
                                "eval": "VOC2007/test"}
    assert not [p for p in report["problems"] if p["kind"] == "split_overlap"]


def _boxforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boxforge", *args], capture_output=True, text=True, timeout=300)


TINY = ("--model", "ssd_tiny", "--img-size", "64", "--batch-size", "4", "--threads", "1", "--iterations", "2")


def test_train_on_a_vocdevkit_logs_and_writes_its_splits_and_eval_scores_2007_test(tmp_path: Path) -> None:
    devkit = layouts.vocdevkit_0712(tmp_path)
    run = tmp_path / "run"
    proc = _boxforge("train", "--data", str(devkit), "--out", str(run), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert f"train: 10 images ({devkit}: VOC2007/trainval + VOC2012/trainval)" in proc.stdout
    assert f"val: 4 images ({devkit}: VOC2007/test)" in proc.stdout
    splits = json.loads((run / "splits.json").read_text())
    assert splits["val"] == {"sources": [f"{devkit}: VOC2007/test"],
                             "images": [f"VOC2007/{i}" for i in (devkit / "VOC2007/ImageSets/Main/test.txt").read_text().split()]}
    assert len(splits["train"]["images"]) == 10 and not set(splits["train"]["images"]) & set(splits["val"]["images"])
    proc = _boxforge("eval", "--data", str(devkit), "--weights", str(run / "best.pt"), "--metric", "voc12")
    assert proc.returncode == 0, proc.stderr
    assert "split VOC2007/test: 4 images" in proc.stdout
    html = (run / "report.html").read_text()
    assert f"{devkit}: VOC2007/test" in html


def test_train_refuses_a_validation_set_inside_the_training_set_in_one_line(tmp_path: Path) -> None:
    root = layouts.voc_four_lists(tmp_path)
    proc = _boxforge("train", "--data", str(root), "--split", "trainval", "--val", "val", "--out", str(tmp_path / "r"), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "also training images" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


def test_train_without_a_validation_set_warns_and_keeps_the_last_weights_as_best(tmp_path: Path) -> None:
    root = layouts.voc_four_lists(tmp_path)
    for name in ("val", "test"):
        (root / "ImageSets/Main" / f"{name}.txt").unlink()
    run = tmp_path / "run"
    proc = _boxforge("train", "--data", str(root), "--out", str(run), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "no validation set" in proc.stdout + proc.stderr and "best.pt will be the last weights" in proc.stdout
    from boxforge.checkpoint import load_checkpoint

    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["global_step"] == last["global_step"] == 2
    assert json.loads((run / "splits.json").read_text())["val"] is None
