"""Every command fed its worst inputs: a one-line `boxforge CMD: error: ...` and exit status 2, never a traceback.

Each case runs the real CLI entry point in-process (`boxforge.cli.main`), so an exception that escaped
as a traceback would fail the test with that exception.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxforge.checkpoint import save_checkpoint
from boxforge.cli import main
from tests.conftest import make_voc, write_image
from tests.inference.conftest import checkpoint_dict, untrained


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worst")
    voc = make_voc(root / "voc", {"a": [("circle", 5, 6, 30, 40)], "b": [("square", 1, 1, 60, 40)]},
                   splits={"train": ["a"], "test": ["b"]})  # the classes of the untrained checkpoint below
    noise = root / "noise.pt"
    noise.write_bytes(os.urandom(256))
    fake_onnx = root / "fake.onnx"
    fake_onnx.write_text("not a protobuf")
    bad_json = root / "bad.json"
    bad_json.write_text('{"images": [1, 2,')
    full = root / "full"
    write_image(full / "x.jpg")
    empty = root / "empty"
    empty.mkdir()
    ckpt = save_checkpoint(checkpoint_dict(untrained()), root / "tiny.pt")
    return {"voc": voc, "noise": noise, "fake_onnx": fake_onnx, "bad_json": bad_json, "full": full,
            "empty": empty, "ckpt": ckpt, "missing": root / "missing", "images": voc / "JPEGImages",
            "out": root / "out"}


CASES: list[tuple[str, list[str], str]] = [
    ("check missing", ["check", "{missing}"], "no such file"),
    ("check empty folder", ["check", "{empty}"], "cannot tell the dataset layout"),
    ("check noise file", ["check", "{noise}"], "cannot tell the dataset format"),
    ("check broken COCO", ["check", "{bad_json}"], "malformed JSON"),
    ("check unknown split", ["check", "{voc}", "--split", "nosuch"], "no split 'nosuch'"),
    ("convert into a full folder", ["convert", "{voc}", "{full}", "--to", "coco"], "{full}"),
    ("synth too many classes", ["synth", "{out}/s1", "--classes", "99"], "classes"),
    ("pack into a full folder", ["pack", "{voc}", "{full}"], "not empty"),
    ("train missing data", ["train", "--data", "{missing}", "--out", "{out}/t1"], "no such file"),
    ("train bad img size", ["train", "--data", "{voc}", "--model", "yolo_csp", "--img-size", "100", "--iterations",
                            "1", "--threads", "1", "--out", "{out}/t2"], "multiple of 32"),
    ("train batch 0", ["train", "--data", "{voc}", "--batch-size", "0", "--out", "{out}/t3"], "at least 1"),
    ("train unknown split", ["train", "--data", "{voc}", "--split", "nosuch", "--out", "{out}/t4"], "nosuch"),
    ("train noise resume", ["train", "--data", "{voc}", "--resume", "{noise}", "--out", "{out}/t5"], "{noise}"),
    ("train noise weights", ["train", "--data", "{voc}", "--model", "ssd_tiny", "--weights", "{noise}",
                             "--iterations", "1", "--threads", "1", "--out", "{out}/t6"], "{noise}"),
    ("train bad threads", ["train", "--data", "{voc}", "--threads", "0", "--out", "{out}/t7"], "--threads"),
    ("eval noise weights", ["eval", "--data", "{voc}", "--weights", "{noise}"], "{noise}"),
    ("eval fake onnx", ["eval", "--data", "{voc}", "--weights", "{fake_onnx}"], "{fake_onnx}"),
    ("eval missing weights", ["eval", "--data", "{voc}", "--weights", "{missing}"], "{missing}"),
    ("eval broken predictions", ["eval", "--data", "{voc}", "--predictions", "{bad_json}"], "malformed JSON"),
    ("eval iou out of range", ["eval", "--data", "{voc}", "--weights", "{ckpt}", "--iou-thresh",
                                                  "2"], "iou_thresh"),
    ("predict missing source", ["predict", "{missing}", "--weights", "{ckpt}", "--out", "{out}/p1"], "{missing}"),
    ("predict noise weights", ["predict", "{images}", "--weights", "{noise}", "--out", "{out}/p2"], "{noise}"),
    ("predict bad score", ["predict", "{images}", "--weights", "{ckpt}", "--score-thresh", "2", "--out",
                           "{out}/p3"], "score threshold 2"),
    ("predict top-k on a detector", ["predict", "{images}", "--weights", "{ckpt}", "--top-k", "3", "--out",
                                     "{out}/p4"], "--top-k"),
    ("predict tiny img size", ["predict", "{images}", "--weights", "{ckpt}", "--img-size", "8", "--out",
                               "{out}/p5"], "--img-size 8"),
    ("export noise", ["export", "--weights", "{noise}", "--out", "{out}/e1.onnx"], "{noise}"),
    ("export low opset", ["export", "--weights", "{ckpt}", "--out", "{out}/e2.onnx", "--opset", "5"], "--opset 5"),
    ("export an onnx file", ["export", "--weights", "{fake_onnx}", "--out", "{out}/e3.onnx"], "{fake_onnx}"),
    ("plot missing", ["plot", "{missing}"], "{missing}"),
    ("plot noise", ["plot", "{noise}"], "{noise}"),
    ("audit without a budget", ["audit", "{voc}", "--out", "{out}/a1"], "--time MINUTES"),
    ("audit broken predictions", ["audit", "{voc}", "--out", "{out}/a2", "--predictions", "{bad_json}"],
     "malformed JSON"),
    ("audit a tiny set", ["audit", "{voc}", "--out", "{out}/a3", "--time", "5"], "at least 20 images"),
    ("audit apply junk", ["audit", "--apply", "{bad_json}", "--data", "{voc}", "--out", "{out}/a4"],
     "malformed JSON"),
    ("prepare missing devkit", ["prepare", "imagenet", "--devkit", "{missing}", "--val", "{empty}"], "{missing}"),
]


@pytest.mark.parametrize("name, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_problem(inputs: dict[str, Path], capsys, name: str, argv: list[str],
                                                  expected: str) -> None:
    args = [a.format(**inputs) for a in argv]
    code = main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"boxforge {args[0]}: error:")]
    assert code == 2, f"{name}: exit status {code}; stderr:\n{err}"
    assert len(errors) == 1 and "Traceback" not in err, f"{name}: stderr:\n{err}"
    assert expected.format(**inputs) in errors[0], f"{name}: {errors[0]}"
