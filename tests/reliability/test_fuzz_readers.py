"""Fuzzing: mutated VOC XML, COCO JSON, YOLO labels and text lists never crash a reader or `check`.

Every example is a valid file from a tiny dataset, mutated by hypothesis (bytes flipped, inserted, deleted,
truncated; for JSON also values swapped for arbitrary JSON). Where the mutated file is one of many (a VOC
XML, a YOLO label file), reading must give an index in which the intact file is read with all its objects
and the mutated one is read or named by a problem: a per-file problem, never a whole-dataset failure. Where
the file is the dataset (a COCO JSON, a text list), reading gives an index or raises boxforge's own error
type naming that file. Both within PER_EXAMPLE_S seconds, and `check` then reports on the index. Any other
exception, or a hang (SIGALRM), fails the test. The profile is derandomized with a bounded number of
examples, so CI runs the same cases every time.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from boxforge.data.check import check_dataset
from boxforge.data.formats.detect import load_dataset
from boxforge.data.report import format_report
from boxforge.errors import BoxforgeError
from tests.conftest import voc_xml

PER_EXAMPLE_S = 10  # generous: the machine is shared; a reader that hangs never finishes at all
FUZZ = settings(derandomize=True, max_examples=120, deadline=timedelta(seconds=PER_EXAMPLE_S), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()
TOKENS = [b"nan", b"NaN", b"inf", b"-inf", b"-1", b"1e400", b"-1e999", b"99999999999999999999999", b"0", b"\x00",
          b"\xff\xfe\xfd", b"\xc3", b"../", b"/etc/passwd", b"..\\", b"<", b">", b"&x;", b"&amp;", b"]]>",
          b'<!DOCTYPE a [<!ENTITY x "yy">]>', b'<!ENTITY x SYSTEM "file:///etc/passwd">', b"<object>", b"</bndbox>",
          b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"[]", b"{}", b'"id": [1]', b"\n", b" ", b"\t",
          b"1,2,3,4,1", b"0 0.5 0.5 0.2 0.2", b",,,,", b"\r", "é".encode(), b"\xe2\x80\xae"]
MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]),
                     st.integers(0, 1 << 20), st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=8)))


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, payload in mutations:
        at = pos % (len(buf) + 1)
        if kind == "flip" and buf:
            buf[at % len(buf)] = payload[0]
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "delete":
            del buf[at:at + len(payload)]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "duplicate":
            buf[at:at] = buf[at:at + 64 * len(payload)]
    return bytes(buf)


class Hang(Exception):
    pass


@contextmanager
def time_bound(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"a reader ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class OneOfMany:
    """The mutated file is one annotation among others (a VOC XML, a YOLO label file): the promise is then a
    per-file one, so the dataset must still be read, the intact file with all its objects, and the mutated
    one either read or named by a problem. (A COCO JSON or a text list *is* the dataset: an error may end it.)"""

    mutated: str  # relative to the dataset root, as problems name files
    intact: str
    intact_objects: int


def read_and_check(target: Path, data_file: str, one_of_many: OneOfMany | None) -> None:
    """The promise: an index (and a check report for it) or, for a whole-dataset file, a BoxforgeError that
    names that file; for one file of many, an index in every case (see OneOfMany); nothing else, no hang."""
    with time_bound(PER_EXAMPLE_S):
        try:
            index = load_dataset(target)
        except BoxforgeError as exc:
            assert one_of_many is None, f"a mutated {data_file} ended the whole dataset: {exc}"
            assert Path(data_file).name in str(exc), f"the error does not name {data_file}: {exc}"
            return
        report = check_dataset(index)
        format_report(report, str(target)).encode("utf-8", "backslashreplace")
        json.dumps(report.to_dict())
    if one_of_many is not None:
        _assert_per_file(index, report, one_of_many)


def _assert_per_file(index: Any, report: Any, files: OneOfMany) -> None:
    read = {index.relative(s.annotation_path): s.num_objects for s in index.samples if s.annotation_path}
    assert read.get(files.intact) == files.intact_objects, (
        f"the intact {files.intact} was not read with its {files.intact_objects} objects: {read}")
    named = {p.annotation for p in report.problems} | {p.image for p in report.problems}
    assert read.get(files.mutated, 0) > 0 or files.mutated in named, (
        f"the mutated {files.mutated} gave no object and no problem names it: "
        f"{[(p.kind, p.annotation, p.detail) for p in report.problems]}")


def with_dataset(build: Callable[[Path], Path], data_file: str, content: bytes,
                 one_of_many: OneOfMany | None = None) -> None:
    """Build the tiny dataset in a fresh folder, replace `data_file` with `content`, read and check it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        target = build(root)
        (root / data_file).write_bytes(content)
        read_and_check(target, data_file, one_of_many)
        shutil.rmtree(root, ignore_errors=True)


# --- the four formats, each a valid tiny dataset -------------------------------------------------------------

VOC_XML = voc_xml("a.jpg", 64, 48, [("cat", 5, 6, 30, 40), ("dog", 10, 10, 50, 30, 1)]).encode()


def build_voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "JPEGImages" / "a.jpg").write_bytes(JPEG)
    (root / "JPEGImages" / "b.jpg").write_bytes(JPEG)
    (root / "Annotations" / "b.xml").write_bytes(VOC_XML.replace(b"a.jpg", b"b.jpg"))
    return root


VOC_ONE_OF_TWO = OneOfMany("Annotations/a.xml", "Annotations/b.xml", 2)


COCO_DOC = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                       {"id": 2, "file_name": "sub/b.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 20, 30], "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [1.5, 2, 10, 10], "iscrowd": 1}]}
COCO_JSON = json.dumps(COCO_DOC).encode()


def build_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train" / "sub").mkdir(parents=True)
    (root / "images" / "train" / "a.jpg").write_bytes(JPEG)
    (root / "images" / "train" / "sub" / "b.jpg").write_bytes(JPEG)
    return root


YOLO_LABELS = b"0 0.5 0.5 0.2 0.4\n1 0.25 0.5 0.5 1.0\n1 0.1 0.1 0.2 0.2 0.3 0.1\n"


def build_yolo(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.jpg").write_bytes(JPEG)
    (root / "images" / "b.jpg").write_bytes(JPEG)
    (root / "labels" / "b.txt").write_bytes(YOLO_LABELS)
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


YOLO_ONE_OF_TWO = OneOfMany("labels/a.txt", "labels/b.txt", 3)


TXT_LIST = b"imgs/a.jpg 1,2,30,40,1 5,5,10,10.5,2\nimgs/b.jpg\n"


def build_txt(root: Path) -> Path:
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.jpg").write_bytes(JPEG)
    (root / "imgs" / "b.jpg").write_bytes(JPEG)
    (root / "classes.txt").write_text("cat\ndog\n")
    return root / "train.txt"


def test_the_unmutated_seeds_read_cleanly():
    """The fuzzers start from files every reader accepts (else they would only fuzz the error path)."""
    for build, name, content, objects in ((build_voc, "Annotations/a.xml", VOC_XML, 4),
                                          (build_coco, "annotations/instances_train.json", COCO_JSON, 2),
                                          (build_yolo, "labels/a.txt", YOLO_LABELS, 6),
                                          (build_txt, "train.txt", TXT_LIST, 2)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            target = build(root)
            (root / name).write_bytes(content)
            index = load_dataset(target)
            assert index.num_objects == objects and not check_dataset(index).errors, name


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_fuzzed_voc_xml(mutations):
    with_dataset(build_voc, "Annotations/a.xml", mutate(VOC_XML, mutations), VOC_ONE_OF_TWO)


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_fuzzed_coco_json_bytes(mutations):
    with_dataset(build_coco, "annotations/instances_train.json", mutate(COCO_JSON, mutations))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["../x.jpg", "/etc/passwd", "a.jpg", "sub/../../a.jpg", "\x00"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


COCO_PATHS = _paths(COCO_DOC)


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(COCO_PATHS), JSON_VALUES), min_size=1, max_size=4))
def test_fuzzed_coco_json_values(replacements):
    doc: Any = COCO_DOC
    for path, value in replacements:
        try:
            doc = _replace(doc, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed this path
            continue
    with_dataset(build_coco, "annotations/instances_train.json", json.dumps(doc).encode())


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_fuzzed_yolo_labels(mutations):
    with_dataset(build_yolo, "labels/a.txt", mutate(YOLO_LABELS, mutations), YOLO_ONE_OF_TWO)


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_fuzzed_text_list(mutations):
    with_dataset(build_txt, "train.txt", mutate(TXT_LIST, mutations))
