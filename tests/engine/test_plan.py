"""`train --plan`: the recipe with reasons, a measured speed that the real run then confirms, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import boxforge
from boxforge.cli import main
from tests.engine.conftest import train_args

MEASURE = ("--model", "ssd_tiny", "--img-size", "96", "--batch-size", "4", "--threads", "2", "--workers", "0")


def _run_rate(run_dir: Path, skip: int = 2) -> float:
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s.get("type") == "train"]
    first, last = steps[skip - 1], steps[-1]
    return (last["images_seen"] - first["images_seen"]) / (last["time"] - first["time"])


@pytest.mark.slow
def test_plan_speed_is_what_the_run_then_logs(synth_set: Path, tmp_path: Path, capsys) -> None:
    plan_json = tmp_path / "plan.json"
    args = ["train", "--data", str(synth_set), "--out", str(tmp_path / "unused"), *MEASURE, "--time", "1"]
    assert main([*args, "--plan", "--json", str(plan_json)]) == 0
    text = capsys.readouterr().out
    plan = json.loads(plan_json.read_text())
    assert set(plan) >= {"model", "img_size", "batch_size", "img_s", "epochs", "peak_memory_mb", "reasons", "warnings"}
    assert plan["model"] == "ssd_tiny" and plan["img_size"] == 96 and plan["batch_size"] == 4
    assert "measured:" in text and not (tmp_path / "unused").exists()  # nothing trained, nothing written
    run = tmp_path / "run"
    # long enough (about 9 s at ~90 img/s) that the run's own rate is not a 3-second window's noise
    assert main(["train", "--data", str(synth_set), "--out", str(run), *MEASURE, "--iterations", "200",
                 "--val-every", "100"]) == 0
    logged = _run_rate(run)
    assert 0.8 <= plan["img_s"] / logged <= 1.25, (plan["img_s"], logged)
    train = boxforge.load_dataset(synth_set, split=boxforge.plan_splits(synth_set).train)
    assert plan["epochs"] == pytest.approx(plan["img_s"] * 60 / len(train), rel=1e-9)  # one minute's worth


def test_plan_warns_of_a_short_budget_and_a_rare_class(tmp_path: Path) -> None:
    from tests.conftest import make_voc

    items = {f"i{n}": [("common", 5, 5, 40, 40)] + ([("rare", 10, 10, 30, 30)] if n < 2 else []) for n in range(24)}
    data = make_voc(tmp_path / "voc", items, splits={"train": [f"i{n}" for n in range(20)],
                                                      "test": [f"i{n}" for n in range(20, 24)]})
    plan = boxforge.train_plan(data=str(data), out=str(tmp_path / "x"), model="ssd_tiny", img_size=64, batch_size=4,
                               threads=2, time=0.02)
    text = "\n".join(plan.lines())
    assert "class rare has 2 training boxes" in text
    assert "fits only about" in text and "under-trained" in text
    assert plan.epochs is not None and plan.epochs < 30


def test_every_run_prints_its_plan_at_the_start(synth_set: Path, tmp_path: Path) -> None:
    from tests.engine.conftest import run_cli

    proc = run_cli(train_args(synth_set, tmp_path / "r", "--iterations", "1"))
    assert proc.returncode == 0, proc.stderr
    assert "plan:" in proc.stdout and "model ssd_tiny (detect)" in proc.stdout and "input 96 px" in proc.stdout
