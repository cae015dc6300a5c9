"""`boxforge export` for deployment: --int8 (with its accuracy report), --half, --format openvino, --bundle.

All on the session's briefly trained ssd_tiny (conftest.py `trained`), each file run through the one
inference layer (load_model, predict, eval) like any export."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import boxforge
from boxforge.cli import main
from boxforge.errors import BoxforgeError
from boxforge.export.deploy import check_options
from boxforge.inference import load_model
from tests.conftest import SHARED

BUNDLE_PACKAGES = ("onnxruntime", "numpy", "pillow")


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _detections(weights: Path, images: list[Path], tmp: Path, *, score: float = 0.05) -> dict[str, list[dict]]:
    """`boxforge predict --json` of `weights` on `images`: {image id: [{label, score, box}]}."""
    out = tmp / f"pred-{weights.name}"
    assert main(["predict", "--weights", str(weights), *map(str, images), "--out", str(out), "--no-draw",
                 "--score-thresh", str(score)]) == 0
    return _by_image(json.loads((out / "predictions.json").read_text()))


def _by_image(doc: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {i["image"]: [] for i in doc["images"]}
    for p in doc["predictions"]:
        found[p["image"]].append(p)
    return found


MAX_DET = 100  # predict's --max-det and --iou-thresh defaults
NMS_IOU = 0.45


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _suppressed_at_the_edge(d: dict, dets: list[dict]) -> bool:
    """Whether `dets` (the side lacking d) keeps a surer box of d's label overlapping d within 0.02 of the NMS
    IoU: there NMS dropped d by a hair, and a box moved in the third decimal flips it either way."""
    return any(o["label"] == d["label"] and o["score"] >= d["score"] - 1e-3
               and abs(_iou(o["box"], d["box"]) - NMS_IOU) <= 0.02 for o in dets)


def _cut(dets: list[dict], floor: float) -> float:
    """The score at or below which a list of one image's detections may differ from another's: the threshold,
    or where the list is full at MAX_DET, its lowest score (the 100th box of one side can be the 101st of the
    other: a weakly trained model gives ~100 near-equal scores an image)."""
    return max(floor, min(d["score"] for d in dets)) if len(dets) >= MAX_DET else floor


def _unmatched(ref: dict[str, list[dict]], got: dict[str, list[dict]], *, box_px: float, margin: float,
               floor: float) -> list[str]:
    """Detections of `ref` scoring above the cut + margin with no detection of `got` of the same label within
    box_px on every coordinate (both ways), unless the other side's NMS dropped them at the edge. The margin
    leaves out the ones at the cut (the score threshold or the MAX_DET-th score), where a score difference in
    the fourth decimal may keep one side's box and drop the other's."""
    problems = []
    for a, b, side in ((ref, got, "reference"), (got, ref, "candidate")):
        assert sorted(a) == sorted(b)
        for image, dets in a.items():
            cut = max(_cut(dets, floor), _cut(b[image], floor))
            for d in dets:
                if d["score"] <= cut + margin:
                    continue
                if not any(o["label"] == d["label"] and np.abs(np.subtract(o["box"], d["box"])).max() <= box_px
                           for o in b[image]) and not _suppressed_at_the_edge(d, b[image]):
                    problems.append(f"{side} {image}: {d}")
    return problems


@pytest.fixture(scope="module")
def test_images(synth: Path) -> list[Path]:
    return sorted((synth / "JPEGImages").glob("*.jpg"))[:6]


def test_int8_export_is_quantized_scored_and_runs_everywhere(trained: Path, synth: Path, tmp_path: Path,
                                                             test_images: list[Path]) -> None:
    # any drop is "too much" (-1e9): the warning, naming the noisiest layers, which the user may then keep in float
    first = boxforge.export_onnx(trained, tmp_path / "first.onnx", int8=True, calib=str(synth), calib_images=6,
                                 int8_max_drop=-1e9)
    assert first.int8.warning and "--int8-exclude" in first.int8.warning and first.int8.worst
    keep = first.int8.worst[0][0]
    assert keep in first.int8.warning
    report = boxforge.export_onnx(trained, tmp_path / "int8.onnx", int8=True, calib=str(synth), calib_images=6,
                                  int8_exclude=[keep], int8_max_drop=-1e9)
    convs = [n.name for n in onnx.load(str(first.path)).graph.node if n.op_type == "Conv"]
    graph = onnx.load(str(report.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    int8_weights = {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in producers
                    and producers[n.input[1]].op_type == "DequantizeLinear"}  # a quantized Conv reads DQ(int8)
    assert len(int8_weights) == len(convs) - 1 and keep not in int8_weights, "every Conv but the excluded one"
    props = _props(report.path)
    assert props["precision"] == "int8" and json.loads(props["calibration"])["images"] == 6
    assert json.loads(props["class_names"]) == ["circle", "square", "triangle"]
    # the accuracy report: both models scored on the held-out split by the one evaluator
    r = report.int8
    assert r.eval_split == "test" and r.eval_images == 2 and set(r.aps) == {"checkpoint", "int8"}
    checkpoint_ap = boxforge.evaluate(str(synth), weights=trained, metrics=["coco"], progress=False).results["coco"]["AP"]
    assert r.aps["checkpoint"]["coco_AP"] == pytest.approx(checkpoint_ap, abs=1e-9)
    assert r.warning and len(first.int8.worst) == len(convs) and len(r.worst) == len(convs) - 1
    assert "INT8 (onnxruntime static QDQ, 6 calibration images, 1 nodes kept in float)" in report.summary()
    # predict and eval take it like any export
    loaded = load_model(report.path, "cpu")
    assert loaded.meta.kind == "onnx" and loaded.task == "detect"
    assert _detections(report.path, test_images, tmp_path)


def test_int8_options_are_checked_in_one_line(trained: Path, synth: Path, tmp_path: Path, capsys) -> None:
    code = main(["export", "--weights", str(trained), "--out", str(tmp_path / "m.onnx"), "--int8", "--calib",
                 str(synth), "--int8-exclude", "no_such_node"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--int8-exclude no_such_node: no such node" in err and "Conv nodes" in err
    assert not (tmp_path / "m.onnx").exists()
    other = SHARED / "format-samples" / "roboflow_dataset" / "coco"  # classes label_0, label_1
    code = main(["export", "--weights", str(trained), "--out", str(tmp_path / "m.onnx"), "--int8", "--calib",
                 str(other)])
    err = capsys.readouterr().err.strip()  # refused before any export: no model file, no wasted calibration
    assert code == 2 and len(err.splitlines()) == 1 and "share no name with the dataset's (label_0, label_1)" in err
    assert not (tmp_path / "m.onnx").exists()
    for options, message in (({"int8": True}, "--int8 needs --calib"), ({"calib": "x"}, "--calib is for --int8"),
                             ({"int8": True, "calib": "x", "half": True}, "choose one precision"),
                             ({"half": True, "format": "openvino"}, "--half writes a float16 ONNX"),
                             ({"format": "tflite"}, "choose one of onnx, openvino"),
                             ({"bundle": "b", "format": "openvino"}, "--bundle holds an ONNX model")):
        settings = {"format": "onnx", "int8": False, "calib": None, "half": False, "bundle": None, **options}
        with pytest.raises(BoxforgeError, match=message):
            check_options(task="detect", **settings)
    with pytest.raises(BoxforgeError, match="for detectors"):
        check_options(task="classify", format="onnx", int8=False, calib=None, half=True, bundle=None)


def test_half_export_keeps_float32_io_and_the_detections(trained: Path, tmp_path: Path,
                                                         test_images: list[Path]) -> None:
    report = boxforge.export_onnx(trained, tmp_path / "half.onnx", half=True)
    model = onnx.load(str(report.path))
    assert _props(report.path)["precision"] == "fp16"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    onnx.checker.check_model(model)
    ref, got = _detections(trained, test_images, tmp_path), _detections(report.path, test_images, tmp_path)
    assert sum(map(len, ref.values())) > 5
    assert not _unmatched(ref, got, box_px=1.0, margin=0.01, floor=0.05)  # float16: 1 px at 128 px input


def test_openvino_export_predicts_as_the_onnx_export(trained: Path, synth: Path, tmp_path: Path, exported: Path,
                                                     test_images: list[Path]) -> None:
    pytest.importorskip("openvino")
    folder = tmp_path / "ir"
    folder.mkdir()
    report = boxforge.export_onnx(trained, folder, format="openvino")  # an existing folder: folder/model.xml
    assert report.path == folder / "model.xml" and (folder / "model.bin").is_file()
    loaded = load_model(report.path, "cpu")
    assert loaded.meta.kind == "openvino" and loaded.meta.class_names == ["circle", "square", "triangle"]
    onnx_file = exported  # the same checkpoint and export settings, dynamic batch
    for score in (0.05, 0.3):  # the thresholds are run-time inputs of the IR too
        ref, got = (_detections(w, test_images, tmp_path / str(score), score=score)
                    for w in (onnx_file, report.path))
        assert not _unmatched(ref, got, box_px=1e-2, margin=1e-4, floor=score)
    assert sum(map(len, ref.values())) < sum(map(len, _detections(report.path, test_images, tmp_path).values()))
    ev = boxforge.evaluate(str(synth), weights=report.path, metrics=["coco"], progress=False)
    assert ev.results["coco"]["AP"] == pytest.approx(boxforge.evaluate(str(synth), weights=onnx_file, metrics=["coco"], progress=False)
                                                     .results["coco"]["AP"], abs=1e-3)
    from boxforge.export.openvino import ir_path

    assert ir_path(tmp_path / "plain") == tmp_path / "plain.xml"  # PATH -> PATH.xml (+ PATH.bin beside it)
    assert ir_path(tmp_path / "m.xml") == tmp_path / "m.xml" and ir_path(folder) == folder / "model.xml"


def test_openvino_int8_through_nncf_is_scored(trained: Path, synth: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    report = boxforge.export_onnx(trained, tmp_path / "q.xml", format="openvino", int8=True, calib=str(synth),
                             calib_images=6)
    assert report.path == tmp_path / "q.xml" and report.precision == "int8"
    assert set(report.int8.aps) == {"checkpoint", "int8"} and "NNCF" in report.summary()
    assert load_model(report.path, "cpu").meta.kind == "openvino"


def test_missing_openvino_is_one_line_naming_the_extra(trained: Path, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    code = main(["export", "--weights", str(trained), "--format", "openvino", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'boxforge[openvino]'" in err
    (tmp_path / "m.xml").write_text("<?xml version='1.0'?><net></net>")
    code = main(["predict", "--weights", str(tmp_path / "m.xml"), str(tmp_path), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'boxforge[openvino]'" in err


def _bare_venv(folder: Path) -> Path:
    """A virtual environment holding only BUNDLE_PACKAGES (linked from this interpreter's installs, so the test
    needs no network), no pip, no torch, no boxforge. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name in BUNDLE_PACKAGES:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


def test_bundle_runs_with_onnxruntime_numpy_and_pillow_alone(trained: Path, tmp_path: Path,
                                                             test_images: list[Path]) -> None:
    bundle = tmp_path / "bundle"
    report = boxforge.export_onnx(trained, bundle=bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "model.onnx", "predict.py", "requirements.txt"]
    assert "python predict.py" in (bundle / "README.md").read_text()
    assert report.bundle == bundle
    python = _bare_venv(tmp_path / "venv")
    for module in ("torch", "boxforge", "torchvision"):
        probe = subprocess.run([str(python), "-I", "-c", f"import {module}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{module} importable in the bare environment"
    images = tmp_path / "images"
    images.mkdir()
    for p in test_images:
        (images / p.name).symlink_to(p)
    out = tmp_path / "bundle-out"
    run = subprocess.run([str(python), "-I", str(bundle / "predict.py"), str(images), "--out", str(out),
                          "--score-thresh", "0.05"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["classes"] == ["circle", "square", "triangle"]
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in test_images)  # drawn
    # the same detections as boxforge predict on the same files: boxes within 0.5 px, same labels
    out_ref = tmp_path / "ref"
    assert main(["predict", "--weights", str(trained), str(images), "--out", str(out_ref), "--no-draw",
                 "--score-thresh", "0.05"]) == 0
    ref = json.loads((out_ref / "predictions.json").read_text())
    assert [(i["image"], i["width"], i["height"]) for i in ref["images"]] == \
        [(i["image"], i["width"], i["height"]) for i in doc["images"]]
    assert sum(map(len, _by_image(ref).values())) > 5
    assert not _unmatched(_by_image(ref), _by_image(doc), box_px=0.5, margin=0.005, floor=0.05)
    assert doc["settings"] == ref["settings"]
