"""`train --best-metric`: what chooses best.pt (VOC12 mAP by default, COCO AP, or 0.1 AP50 + 0.9 AP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boxforge.checkpoint import load_checkpoint
from tests.engine.conftest import run_cli, train_args


@pytest.mark.parametrize("choice, key", [("fitness", "fitness"), ("coco", "coco_AP")])
def test_best_pt_holds_the_best_of_the_chosen_metric(synth_set: Path, tmp_path: Path, choice: str, key: str) -> None:
    run = tmp_path / choice
    proc = run_cli(train_args(synth_set, run, "--epochs", "4", "--val-every", "1", "--best-metric", choice))
    assert proc.returncode == 0, proc.stderr
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v.get("type") == "val"]
    for v in vals:  # fitness is Ultralytics' weighting of the two COCO numbers
        assert v["fitness"] == pytest.approx(0.1 * v["coco_AP50"] + 0.9 * v["coco_AP"], abs=1e-12)
    best = max(v[key] for v in vals)
    assert load_checkpoint(run / "best.pt")["best_metric"] == pytest.approx(best, abs=1e-12)
    label = "fitness" if choice == "fitness" else "COCO AP"
    assert f"new best {label}" in proc.stdout


def test_classifiers_refuse_a_detection_best_metric(tmp_path: Path) -> None:
    from boxforge.cli import main
    from boxforge.data.synth import synthesize_classification

    synthesize_classification(tmp_path / "cls", images=20, classes=2, seed=0)
    assert main(["train", "--data", str(tmp_path / "cls"), "--model", "resnet18", "--best-metric", "coco",
                 "--iterations", "1", "--out", str(tmp_path / "r")]) == 2
