"""`boxforge eval` of a checkpoint gives exactly the numbers its run logged in validation (one batch runner).

Validation during training and `eval` run the model through the same code (inference/batches.py, with
`MAP_POSTPROCESS`, in float32), so the last validation's metrics in metrics.jsonl equal `eval` of last.pt
on the same split to 1e-9: for the session's ssd_tiny run (SGD, validated on the synthetic set's test
split by the split policy), and for the default yolo_csp recipe (AdamW, EMA weights, bf16 autocast in
training where the CPU has it, channels-last).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import boxforge
from boxforge.cli import main

KEYS = ("voc07_map", "voc12_map", "coco_AP", "coco_AP50", "coco_AP75")


def _last_validation(run_dir: Path) -> dict:
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in logged if r.get("type") == "val"][-1]


def _eval(synth: Path, weights: Path, tmp_path: Path, capsys) -> tuple[dict[str, float], int]:
    capsys.readouterr()
    report = tmp_path / f"eval-{weights.parent.name}.json"
    assert main(["eval", "--data", str(synth), "--split", "test", "--weights", str(weights), "--device", "cpu",
                 "--json", str(report)]) == 0
    detections = int(re.search(r"; (\d+) detections from", capsys.readouterr().out).group(1))
    got = json.loads(report.read_text())
    values = {"voc07_map": got["voc07"]["map"], "voc12_map": got["voc12"]["map"], "coco_AP": got["coco"]["AP"],
              "coco_AP50": got["coco"]["AP50"], "coco_AP75": got["coco"]["AP75"]}
    return values, detections


def test_the_session_runs_last_validation_equals_eval_of_its_last_pt(synth: Path, trained: Path, tmp_path: Path,
                                                                     capsys) -> None:
    logged = _last_validation(trained.parent)
    got, detections = _eval(synth, trained, tmp_path, capsys)
    for key in KEYS:
        assert got[key] == pytest.approx(logged[key], abs=1e-9), key
    assert got["voc12_map"] > 0 and detections > 0  # a comparison of real detections, not of two zeros


def test_the_default_recipe_validates_as_eval_scores(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "yolo"
    result = boxforge.train(data=str(synth), out=str(out), model="yolo_csp", img_size=64, iterations=6,
                            batch_size=4, threads=2, seed=0, report=False)
    logged = _last_validation(out)
    assert logged["step"] == result.global_step  # the final weights were validated: those of last.pt
    got, detections = _eval(synth, result.last, tmp_path, capsys)
    assert detections > 0
    for key in KEYS:
        assert got[key] == pytest.approx(logged[key], abs=1e-9), key
