"""Hostile and broken input: entity expansion, external entities, decompression bombs, paths that leave the
dataset root, malformed numbers and names, huge and empty files. Each is refused or reported per file;
nothing outside the root is read or written, and no command crashes.

Rule for what is per file and what ends the command: a file that is one of many (a VOC XML, a YOLO label
file, an image) becomes a problem in the check report and the rest is checked; a file that *is* the
dataset (a COCO JSON, a text list) ends the command with exit status 2 and one line naming the file and
the position, never a traceback.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFile

from boxforge import check, load_dataset
from boxforge.cli import main
from boxforge.data.images import read_header
from boxforge.data.loading import DetectionDataset
from boxforge.errors import UnsafeInputError
from tests.conftest import make_voc, voc_xml, write_image, write_png_bomb

# --- every file a test process opens, by path (sys.addaudithook cannot be removed, so it only records) -----
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@contextmanager
def recording_opens():
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


def run_boxforge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a fresh process with a strict UTF-8 stdout, as a terminal or CI log gives it."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "boxforge", *args], capture_output=True, timeout=timeout, env=env)


def no_traceback(out: subprocess.CompletedProcess) -> str:
    err = out.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return err


# --- XML ------------------------------------------------------------------------------------------------------

BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
                  + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
                            for i in range(1, 10))
                  + ']>\n<annotation><filename>&lol9;</filename></annotation>\n')


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Recorder.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<x>fetched</x>")

    def log_message(self, *args) -> None:
        pass


def test_entity_expansion_and_external_entities_are_refused_unexpanded(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    root = make_voc(tmp_path / "voc", {"ok": [("cat", 1, 1, 10, 10)]})
    ann = root / "Annotations"
    for name in ("laughs", "http", "file", "param"):
        write_image(root / "JPEGImages" / f"{name}.jpg")
    (ann / "laughs.xml").write_text(BILLION_LAUGHS)
    url = f"http://127.0.0.1:{server.server_port}/entity"
    (ann / "http.xml").write_text(f'<!DOCTYPE a [<!ENTITY x SYSTEM "{url}">]>'
                                  + voc_xml("&x;", 64, 48, [("cat", 1, 1, 10, 10)]))
    (ann / "file.xml").write_text(f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
                                  + voc_xml("&x;", 64, 48, [("cat", 1, 1, 10, 10)]))
    (ann / "param.xml").write_text(f'<!DOCTYPE a [<!ENTITY % p SYSTEM "{url}/dtd"> %p;]>'
                                   + voc_xml("param.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    try:
        started = time.monotonic()
        with recording_opens() as opened:
            report = check(root)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    refused = {p.annotation for p in report.problems if p.kind == "invalid_annotation" and "DTD or entities" in p.detail}
    assert refused == {f"Annotations/{n}.xml" for n in ("laughs", "http", "file", "param")}, report.problems
    assert _Recorder.requests == [], "an external entity was fetched"
    assert str(secret) not in opened, "an external file entity was read"
    everything = json.dumps(report.to_dict())
    assert "lollol" not in everything and "TOP-SECRET" not in everything and "fetched" not in everything
    assert elapsed < 30, f"refusing four small files took {elapsed:.1f} s"
    assert report.objects == 1  # the good file still counts


# --- decompression bombs -----------------------------------------------------------------------------------------

def test_decompression_bomb_is_refused_before_any_decoding(tmp_path, monkeypatch):
    root = make_voc(tmp_path / "voc", {"bomb": [("cat", 1, 1, 10, 10)], "ok": [("cat", 1, 1, 10, 10)]})
    os.remove(root / "JPEGImages" / "bomb.jpg")
    bomb = write_png_bomb(root / "JPEGImages" / "bomb.png")
    decoded: list[str] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(getattr(self, "filename", "?")) or real_load(self))
    with pytest.raises(UnsafeInputError, match="60000x60000 pixels, over the limit"):
        read_header(bomb)
    report = check(root, deep=True)  # --deep decodes every other image
    assert [p.detail for p in report.problems if p.image == "JPEGImages/bomb.png"] == [
        "header claims 60000x60000 pixels, over the limit of 268435456 (decompression bomb?)"]
    dataset = DetectionDataset(load_dataset(root))
    items = [dataset[i][1]["image_id"] for i in range(len(dataset))]
    assert items == ["ok", "ok"] and dataset.skipped[0][0] == "bomb"  # skipped in training, never decoded
    assert not [f for f in decoded if f.endswith("bomb.png")]


# --- paths that leave the root -------------------------------------------------------------------------------------

def _outside(tmp_path: Path) -> dict[str, Path]:
    """Files outside every dataset root: an image, a VOC XML and a YOLO label, each with tell-tale content."""
    out = tmp_path / "outside"
    files = {"image": write_image(out / "secret.jpg", 32, 32, seed=9),
             "xml": out / "secret.xml", "label": out / "secret.txt"}
    files["xml"].write_text(voc_xml("secret.jpg", 32, 32, [("cat", 1, 1, 5, 5)]))
    files["label"].write_text("0 0.5 0.5 0.1 0.1\n")
    return files


def _escape_voc(tmp_path: Path, out: dict[str, Path]) -> Path:
    root = make_voc(tmp_path / "voc", {"ok": [("cat", 1, 1, 10, 10)]})
    ann, img = root / "Annotations", root / "JPEGImages"
    (ann / "dotdot.xml").write_text(voc_xml("../../outside/secret.jpg", 32, 32, [("cat", 1, 1, 5, 5)]))
    (ann / "absolute.xml").write_text(voc_xml(str(out["image"]), 32, 32, [("cat", 1, 1, 5, 5)]))
    (img / "imglink.jpg").symlink_to(out["image"])
    (ann / "imglink.xml").write_text(voc_xml("imglink.jpg", 32, 32, [("cat", 1, 1, 5, 5)]))
    (ann / "annlink.xml").symlink_to(out["xml"])
    write_image(img / "annlink.jpg", seed=3)
    (img / "dirlink").symlink_to(out["image"].parent, target_is_directory=True)
    return root


def _escape_coco(tmp_path: Path, out: dict[str, Path]) -> Path:
    root = tmp_path / "coco"
    write_image(root / "images" / "ok.jpg")
    (root / "images" / "link.jpg").symlink_to(out["image"])
    names = ["ok.jpg", "../../outside/secret.jpg", str(out["image"]), "link.jpg"]
    doc = {"images": [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(4)]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root


def _escape_yolo(tmp_path: Path, out: dict[str, Path]) -> Path:
    root = tmp_path / "yolo"
    write_image(root / "images" / "ok.jpg")
    (root / "images" / "link.jpg").symlink_to(out["image"])
    write_image(root / "images" / "lbl.jpg", seed=4)
    (root / "labels").mkdir()
    for name in ("ok", "link"):
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "lbl.txt").symlink_to(out["label"])
    (root / "classes.txt").write_text("cat\n")
    (root / "train.txt").write_text(f"images/ok.jpg\n../outside/secret.jpg\n{out['image']}\nimages/link.jpg\n"
                                    "images/lbl.jpg\n")
    return root


def _escape_txt(tmp_path: Path, out: dict[str, Path]) -> Path:
    root = tmp_path / "txt"
    write_image(root / "imgs" / "ok.jpg")
    (root / "imgs" / "link.jpg").symlink_to(out["image"])
    (root / "classes.txt").write_text("cat\n")
    (root / "train.txt").write_text(f"imgs/ok.jpg 1,1,5,5,1\n../outside/secret.jpg 1,1,5,5,1\n"
                                    f"{out['image']} 1,1,5,5,1\nimgs/link.jpg 1,1,5,5,1\n")
    return root / "train.txt"


# format -> (builder, split, the files refused); a linked folder (VOC `dirlink`) is never walked into at all.
ESCAPES = {"voc": (_escape_voc, None, {"Annotations/dotdot.xml", "Annotations/absolute.xml", "JPEGImages/imglink.jpg",
                                       "Annotations/annlink.xml"}),
           "coco": (_escape_coco, None, {"annotations/instances_train.json"}),
           "yolo": (_escape_yolo, "train", {"train.txt", "labels/lbl.txt"}),
           "txt": (_escape_txt, None, {"train.txt"})}


@pytest.mark.parametrize("fmt", sorted(ESCAPES))
def test_paths_leaving_the_root_are_refused_and_never_opened(tmp_path, fmt):
    out = _outside(tmp_path)
    before = {k: p.read_bytes() for k, p in out.items()}
    build, split, unsafe = ESCAPES[fmt]
    data = build(tmp_path, out)
    with recording_opens() as opened:
        index = load_dataset(data, split=split)
        report = check(index, deep=True)
        dataset = DetectionDataset(index)
        ids = [dataset[i][1]["image_id"] for i in range(len(dataset))]
        code = main(["check", str(data), *(["--split", split] if split else []), "--fix",
                     "--quarantine", str(tmp_path / "q")])
    refused = [p for p in report.problems if p.kind == "unsafe_path"]
    assert {p.annotation or p.image for p in refused} == unsafe, refused
    assert len(refused) == {"voc": 4, "coco": 3, "yolo": 4, "txt": 3}[fmt], refused
    assert all(p.severity == "error" for p in refused)
    assert {"ok", "imgs/ok"} & set(ids)  # the good image is still used
    leaked = sorted(set(opened) & {str(p.resolve()) for p in out.values()})
    assert not leaked, f"opened outside the root: {leaked}"
    assert code == 1
    assert {k: p.read_bytes() for k, p in out.items()} == before  # nothing outside moved or changed
    assert all(p.exists() for p in out.values())


# --- numbers, names, sizes, emptiness --------------------------------------------------------------------------

def test_malformed_numbers_names_and_empty_files_are_per_file_problems(tmp_path):
    root = make_voc(tmp_path / "voc", {"ok": [("cat", 1, 1, 10, 10)]})
    ann, img = root / "Annotations", root / "JPEGImages"
    cases = {
        "nan": voc_xml("nan.jpg", 64, 48, [("cat", "nan", 1, 10, "NaN")]),
        "inf": voc_xml("inf.jpg", "1e400", 48, [("cat", "-inf", 1, "1e400", 10)]).replace("<difficult>0", "<difficult>inf"),
        "negative": voc_xml("negative.jpg", -64, -48, [("cat", 20, 20, -5, -5)]),
        "huge": voc_xml("huge.jpg", "1e300", 99999999999999999999, [("cat", "-1e30", 1, "1e300", 10)]),
        "words": voc_xml("words.jpg", "wide", 48, [("cat", "one", 1, 10, 10)]),
        "empty": "",
    }
    for name, text in cases.items():
        (ann / f"{name}.xml").write_text(text)
        write_image(img / f"{name}.jpg", seed=len(name))
    (img / "zerobytes.jpg").write_bytes(b"")
    (ann / "zerobytes.xml").write_text(voc_xml("zerobytes.jpg", 64, 48, [("cat", 1, 1, 10, 10)]))
    raw_img, raw_ann = os.fsencode(img) + b"/caf\xe9.jpg", os.fsencode(ann) + b"/caf\xe9.xml"
    with open(raw_img, "wb") as fh:
        fh.write((img / "ok.jpg").read_bytes())
    with open(raw_ann, "wb") as fh:  # a latin-1 name and latin-1 text in a file that claims nothing
        fh.write(voc_xml("caf\xe9.jpg", 64, 48, [("cat", 1, 1, 10, 10)]).encode("latin-1"))
    out = run_boxforge("check", str(root), "--json", str(tmp_path / "r.json"))
    no_traceback(out)
    assert out.returncode == 1, out.stderr
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    by_file: dict[str, set[str]] = {}
    for p in problems:
        for name in {p["annotation"], p["image"]} - {""}:
            by_file.setdefault(name, set()).add(p["kind"])
    assert "nan_box" in by_file["Annotations/nan.xml"]
    assert {"nan_box", "invalid_annotation"} <= by_file["Annotations/inf.xml"]
    assert {"degenerate_box", "invalid_annotation"} <= by_file["Annotations/negative.xml"]
    # -1e30..1e300 is finite in float64 (the index's dtype): a box far outside the image, not a NaN one
    assert {"box_out_of_bounds", "invalid_annotation"} <= by_file["Annotations/huge.xml"]
    assert "invalid_annotation" in by_file["Annotations/words.xml"]
    assert "invalid_annotation" in by_file["Annotations/empty.xml"]
    assert "unreadable_image" in by_file["JPEGImages/zerobytes.jpg"]
    assert "Annotations/caf\udce9.xml" in by_file  # the undecodable name, kept as the file system spells it
    stdout = out.stdout.decode("utf-8")  # strict: the printed report is valid UTF-8
    assert "caf\\xe9" in stdout and "NOT READY" in stdout
    assert not any(p["image"] == "JPEGImages/ok.jpg" and p["severity"] == "error" for p in problems)


def test_coco_and_yolo_numbers_are_per_file_problems(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "images" / "a.jpg")
    boxes = [[float("nan"), 1, 5, 5], [1e400, 1, 5, 5], [-5, -5, -3, 4], [1e308, 1, 1e308, 5], [1, 1, 10**400, 5], [1, 2, 3],
             ["1", 2, 3, 4], [True, 1, 2, 3]]
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 1e400, "height": -1},
                      {"id": [2], "file_name": "b.jpg"}],
           "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]
                          + [{"id": 99, "image_id": {"x": 1}, "category_id": 1, "bbox": [1, 1, 2, 2]},
                             {"id": 98, "image_id": 1, "category_id": [1], "bbox": [1, 1, 2, 2]}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc).replace("Infinity", "1e400"))
    report = check(root)
    kinds = [p.kind for p in report.problems]
    assert kinds.count("nan_box") == 4  # NaN, 1e400 -> inf, a far corner beyond float64, a 401-digit integer
    assert "degenerate_box" in kinds and kinds.count("invalid_annotation") >= 5 and "unknown_class" in kinds

    yolo = tmp_path / "yolo"
    write_image(yolo / "images" / "a.jpg")
    (yolo / "labels").mkdir()
    (yolo / "classes.txt").write_text("cat\n")
    (yolo / "labels" / "a.txt").write_text("0 nan 0.5 0.1 0.1\n0 inf 0.5 1e400 0.1\n0 0.5 0.5 -0.1 0.1\n"
                                           "1e400 0.5 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n0 1e308 1e308 1e308 1e308\n")
    kinds = [p.kind for p in check(yolo).problems]
    assert kinds.count("unknown_class") == 2 and kinds.count("nan_box") >= 2 and "degenerate_box" in kinds


def test_a_broken_single_annotation_file_is_one_clean_error(tmp_path, capsys):
    """COCO JSON and text lists are the whole dataset: exit status 2 and one line naming file and position."""
    coco = tmp_path / "c" / "annotations" / "instances_train.json"
    coco.parent.mkdir(parents=True)
    listing = tmp_path / "t" / "train.txt"
    listing.parent.mkdir()
    (listing.parent / "classes.txt").write_text("cat\n")
    cases = [(coco, b'{"images": [1, 2,,]}', [], "malformed JSON at line 1 column 18"),
             (coco, b"", [], "malformed JSON at line 1 column 1"),
             (coco, b'{"images": "\xff\xfe"}', [], "not UTF-8 JSON (byte 12)"),
             (coco, b'{"images": [], "categories": 7}', [], "'categories' and 'annotations' must be lists"),
             (listing, b"a.jpg 1,1,5,5,1\n\xff\xfe.jpg 1,1,5,5,1\n", ["--format", "txt"], "not UTF-8 text (byte 16)")]
    for path, content, extra, expected in cases:
        path.write_bytes(content)
        assert main(["check", str(path), *extra]) == 2  # returns: no exception escapes
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: {expected}" in err, err


def test_millions_of_boxes_in_one_file(tmp_path):
    """A 2,000,000-line YOLO label file is read and checked as one file's problems; an oversized XML is refused."""
    yolo = tmp_path / "yolo"
    write_image(yolo / "images" / "a.jpg", 640, 480)
    write_image(yolo / "images" / "b.jpg", 640, 480, seed=1)
    (yolo / "labels").mkdir()
    (yolo / "classes.txt").write_text("cat\n")
    n = 2_000_000
    lines = np.full(n, "0 0.5 0.5 0.1 0.1", dtype=object)
    lines[::1000] = "0 0.5 0.5 0 0.1"  # 2000 zero-width boxes
    (yolo / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    (yolo / "labels" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    started = time.monotonic()
    report = check(yolo)
    elapsed = time.monotonic() - started
    assert report.objects == n + 1
    degenerate = [p for p in report.problems if p.kind == "degenerate_box"]
    assert len(degenerate) == 2000 and all(p.annotation == "labels/a.txt" for p in degenerate)
    assert elapsed < 120, f"{elapsed:.0f} s for two million boxes"

    root = make_voc(tmp_path / "voc", {"ok": [("cat", 1, 1, 10, 10)]})
    obj = "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
    with open(root / "Annotations" / "many.xml", "w") as fh:
        fh.write("<annotation><filename>many.jpg</filename>")
        for _ in range(20):
            fh.write(obj * 10_000)
        fh.write("</annotation>")
    write_image(root / "JPEGImages" / "many.jpg")
    report = check(root)
    [big] = [p for p in report.problems if p.annotation == "Annotations/many.xml" and p.kind == "invalid_annotation"]
    assert "over the 16777216-byte limit" in big.detail and report.objects == 1


# --- pipes and devices ------------------------------------------------------------------------------------------

def test_pipes_and_devices_are_rejected_before_opening_in_check_and_training(tmp_path):
    root = make_voc(tmp_path / "voc", {"pipe": [("cat", 1, 1, 10, 10)], "dev": [("cat", 1, 1, 10, 10)],
                                       "ok": [("cat", 1, 1, 10, 10)]})
    img = root / "JPEGImages"
    os.remove(img / "pipe.jpg")
    os.mkfifo(img / "pipe.jpg")  # opening it for reading would block until a writer comes: forever
    os.remove(img / "dev.jpg")
    os.mknod(img / "dev.jpg", 0o600 | 0o020000, os.makedev(1, 5))  # a character device: /dev/zero, endless
    os.remove(root / "Annotations" / "ok.xml")
    os.mkfifo(root / "Annotations" / "ok.xml")  # an annotation can be a pipe too
    watched = {str(img / "pipe.jpg"), str(img / "dev.jpg"), str(root / "Annotations" / "ok.xml")}
    result: dict = {}

    def work() -> None:
        with recording_opens() as opened:
            index = load_dataset(root)
            result["report"] = check(index, deep=True)
            dataset = DetectionDataset(index)
            result["ids"] = [dataset[i][1]["image_id"] for i in range(len(dataset))]
            result["skipped"] = dataset.skipped
            result["opened"] = set(opened) & watched

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "reading a pipe or device blocked"
    details = {p.image or p.annotation: p.detail for p in result["report"].problems if p.kind == "unsafe_path"}
    assert "named pipe" in details["JPEGImages/pipe.jpg"] and "device" in details["JPEGImages/dev.jpg"]
    assert "named pipe" in details["Annotations/ok.xml"]
    assert result["ids"] == ["ok", "ok", "ok"]  # training skips both and uses the readable image
    assert sorted(i for i, _ in result["skipped"]) == ["dev", "pipe"]
    assert all("not a regular file" in why or "pipe" in why or "device" in why for _, why in result["skipped"])
    assert result["opened"] == set(), f"opened: {result['opened']}"
