"""Every check kind, the exit codes, the JSON report, --fix and --undo."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from boxforge import check, load_dataset
from boxforge.cli import main
from boxforge.data.problems import KINDS
from boxforge.data.quarantine import quarantine
from tests.conftest import RACCOON, make_voc, voc_xml, write_image, write_png_bomb


def kinds(report) -> set[tuple[str, str]]:
    return {(p.kind, p.severity) for p in report.problems}


def test_clean_dataset_has_no_problems(tiny_voc):
    report = check(tiny_voc)
    assert report.problems == [] and report.images == 3 and report.objects == 4
    assert report.classes == {"cat": 2, "dog": 2} and report.difficult == 1


def test_raccoon_has_no_errors_but_four_duplicates():
    report = check(RACCOON)
    assert report.errors == []
    assert {p.kind for p in report.warnings} == {"duplicate_image"} and len(report.warnings) == 4


def _broken_voc(root: Path) -> Path:
    make_voc(root, {
        "ok": [("cat", 1, 1, 10, 10)],
        "zero": [("cat", 5, 5, 5, 20)],
        "nan": [("cat", "nan", 1, 10, 10)],
        "outside": [("cat", -3, 1, 70, 10)],
        "unknownclass": [("cat", 1, 1, 10, 10)],
        "empty": [],
        "badsize": [("cat", 1, 1, 10, 10)],
    }, splits={"train": ["ok", "zero", "nan"], "test": ["ok", "outside"]})
    ann = root / "Annotations"
    (ann / "badsize.xml").write_text(voc_xml("badsize.jpg", 640, 480, [("cat", 1, 1, 10, 10)]))
    (ann / "malformed.xml").write_text("<annotation><object></annotation>")
    write_image(root / "JPEGImages" / "malformed.jpg", seed=50)
    (ann / "noimage.xml").write_text(voc_xml("noimage.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    write_image(root / "JPEGImages" / "orphan.jpg", seed=51)
    (root / "JPEGImages" / "copy.jpg").write_bytes((root / "JPEGImages" / "ok.jpg").read_bytes())
    (ann / "copy.xml").write_text(voc_xml("copy.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    (root / "JPEGImages" / "truncated.jpg").write_bytes((root / "JPEGImages" / "zero.jpg").read_bytes()[:200])
    (ann / "truncated.xml").write_text(voc_xml("truncated.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    (ann / "entity.xml").write_text('<!DOCTYPE a [<!ENTITY x "boom">]>' + voc_xml("entity.jpg", 64, 48, []).replace("<filename>", "<filename>&x;"))
    write_image(root / "JPEGImages" / "entity.jpg", seed=52)
    (ann / "escape.xml").write_text(voc_xml("../../etc/passwd", 64, 48, []))
    rotated = Image.open(root / "JPEGImages" / "ok.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "JPEGImages" / "rotated.jpg", exif=exif)
    (ann / "rotated.xml").write_text(voc_xml("rotated.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    (root / "classes.txt").write_text("cat\n")
    (ann / "unknownclass.xml").write_text(voc_xml("unknownclass.jpg", 64, 48, [("zebra", 1, 1, 10, 10)]))
    return root


# Each broken file of _broken_voc and exactly the problems it must get (Problem.where(): the annotation for
# box and label problems, else the image; a split overlap names the image id). Nothing else may be reported:
# a clean file (ok's annotation, copy.xml) gets nothing, and a file the reader could not read is not also
# called empty.
EXPECTED_KINDS: dict[str, set[tuple[str, str]]] = {
    "Annotations/badsize.xml": {("size_mismatch", "error")},
    "Annotations/empty.xml": {("empty_annotation", "warning")},
    "Annotations/entity.xml": {("invalid_annotation", "error")},
    "Annotations/escape.xml": {("unsafe_path", "error")},
    "Annotations/malformed.xml": {("invalid_annotation", "error")},
    "Annotations/nan.xml": {("nan_box", "error")},
    "Annotations/outside.xml": {("box_out_of_bounds", "warning")},
    "Annotations/unknownclass.xml": {("unknown_class", "error")},
    "Annotations/zero.xml": {("degenerate_box", "error")},
    "JPEGImages/noimage.jpg": {("missing_image", "error")},
    "JPEGImages/ok.jpg": {("duplicate_image", "warning")},
    "JPEGImages/orphan.jpg": {("missing_annotation", "error")},
    "JPEGImages/rotated.jpg": {("exif_rotation", "error")},
    "JPEGImages/truncated.jpg": {("unreadable_image", "error")},
    "ok": {("split_overlap", "error")},
}


def test_every_kind_is_found(tmp_path):
    root = _broken_voc(tmp_path / "voc")
    report = check(root)
    found: dict[str, list[tuple[str, str]]] = {}
    for p in report.problems:
        found.setdefault(p.where(), []).append((p.kind, p.severity))
    assert {where: sorted(kinds) for where, kinds in found.items()} == {
        where: sorted(kinds) for where, kinds in EXPECTED_KINDS.items()}
    assert set(KINDS) == {kind for kinds in EXPECTED_KINDS.values() for kind, _ in kinds}  # every kind covered
    by_kind = {p.kind: p for p in report.problems}
    assert by_kind["degenerate_box"].annotation == "Annotations/zero.xml"
    assert "zero-width" in by_kind["degenerate_box"].detail
    assert by_kind["size_mismatch"].detail == "annotation says 640x480, image is 64x48"
    assert any(p.kind == "invalid_annotation" and "DTD or entities" in p.detail for p in report.problems)
    assert any(p.kind == "unsafe_path" and "outside the dataset root" in p.detail for p in report.problems)
    assert by_kind["split_overlap"].image == "ok"


def test_deep_check_finds_truncation_a_header_read_misses(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("cat", 1, 1, 10, 10)]}, size=(256, 256))
    data = (root / "JPEGImages" / "a.jpg").read_bytes()
    (root / "JPEGImages" / "a.jpg").write_bytes(data[: len(data) // 2])
    assert not any(p.kind == "unreadable_image" for p in check(root).problems)
    assert any(p.kind == "unreadable_image" for p in check(root, deep=True).problems)


def test_pipe_and_bomb_are_refused_without_opening(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("cat", 1, 1, 10, 10)], "b": [("cat", 1, 1, 10, 10)]})
    os.remove(root / "JPEGImages" / "a.jpg")
    os.mkfifo(root / "JPEGImages" / "a.jpg")  # opening a pipe for reading would block forever
    write_png_bomb(root / "JPEGImages" / "b.png")
    os.remove(root / "JPEGImages" / "b.jpg")
    report = check(root)
    assert any(p.kind == "unsafe_path" and "named pipe" in p.detail for p in report.problems)
    assert any(p.kind == "unreadable_image" and "60000x60000" in p.detail for p in report.problems)


def test_json_report_and_exit_codes(tmp_path, tiny_voc, capsys):
    out = tmp_path / "r.json"
    assert main(["check", str(tiny_voc), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"format", "images", "objects", "classes", "difficult", "problems"}
    broken = _broken_voc(tmp_path / "b")
    assert main(["check", str(broken), "--json", str(out)]) == 1
    problems = json.loads(out.read_text())["problems"]
    assert problems and all(set(p) == {"kind", "severity", "image", "annotation", "detail"} for p in problems)
    assert all(p["kind"] in KINDS and p["severity"] in ("error", "warning") for p in problems)
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fix_moves_pairs_and_undo_restores_byte_identical(tmp_path):
    root = _broken_voc(tmp_path / "voc")
    before = _tree_digest(root)
    q = tmp_path / "quarantine"
    assert main(["check", str(root), "--fix", "--quarantine", str(q)]) == 1
    assert (q / "Annotations" / "zero.xml").exists() and (q / "JPEGImages" / "zero.jpg").exists()
    assert not (root / "Annotations" / "zero.xml").exists()
    assert (root / "Annotations" / "ok.xml").exists()
    after = load_dataset(root)
    assert not any(p.kind in ("degenerate_box", "nan_box") for p in check(after).problems)
    assert main(["check", "--undo", str(q / "manifest.json")]) == 0
    assert _tree_digest(root) == before


def test_fix_requires_quarantine_and_never_reuses_a_manifest(tmp_path, tiny_voc):
    assert main(["check", str(tiny_voc), "--fix"]) == 2
    root = _broken_voc(tmp_path / "voc")
    q = tmp_path / "q"
    index = load_dataset(root)
    quarantine(index, check(index).errors, q)
    with pytest.raises(Exception, match="exists: undo it first"):
        quarantine(index, check(index).errors, q)
