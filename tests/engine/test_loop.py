"""The loop's guards and settings: non-finite losses, --config files, the saved config.yaml."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml

import boxforge
from boxforge.checkpoint import load_checkpoint
from boxforge.engine.fit import TrainingError
from boxforge.models.ssd import GlobalNormSSD
from tests.engine.conftest import run_cli

SMALL = {"model": "ssd_tiny", "img_size": 96, "batch_size": 4, "threads": 1, "seed": 7, "log_every": 1, "report": False}


def _poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> list[int]:
    """Make the SSD loss NaN on the given (0-based) training forward calls; returns the call log."""
    calls: list[int] = []
    real = GlobalNormSSD.compute_loss

    def compute_loss(self, *args, **kwargs):
        losses = real(self, *args, **kwargs)
        calls.append(len(calls))
        if calls[-1] in bad_calls:
            return {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(GlobalNormSSD, "compute_loss", compute_loss)
    return calls


def test_isolated_nonfinite_losses_are_skipped_and_counted(synth_set: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _poison(monkeypatch, {1, 3})
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), iterations=6, **SMALL)
    saved = load_checkpoint(result.last)
    assert saved["nonfinite_total"] == 2
    assert saved["global_step"] == 6  # skipped batches are not optimizer steps
    assert len(calls) == 8
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    steps = [row for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if row.get("kind", "step") == "step" and "loss" in row]
    assert steps and all(math.isfinite(row["loss"]) for row in steps)


def test_nonfinite_losses_in_a_row_stop_the_run_naming_the_batch(synth_set: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # synth_set's training split has 4 batches of 4: epoch 0 ends cleanly (last.pt), then every loss is NaN
    _poison(monkeypatch, set(range(4, 100)))
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row \(last batch: [^)]+\)") as info:
        boxforge.train(data=[str(synth_set)], out=str(run), epochs=3, max_nonfinite=3, **SMALL)
    assert str(run / "last.pt") in str(info.value)
    saved = load_checkpoint(run / "last.pt")
    assert (saved["epoch"], saved["iteration"]) == (1, 0)  # the last good state, not the poisoned one
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_config_file_sets_defaults_and_the_command_line_wins(synth_set: Path, tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"data": str(synth_set), "batch_size": 2, "lr": 0.005, "iterations": 2,
                                      "optimizer": "adamw", "warmup": 0.0}))
    run = tmp_path / "run"
    done = run_cli(["train", "--config", str(config), "--out", str(run), "--img-size", "96", "--threads", "1",
                    "--lr", "0.001"])
    assert done.returncode == 0, done.stderr[-2000:]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["batch_size"] == 2 and saved["optimizer"] == "adamw" and saved["iterations"] == 2  # from the file
    assert saved["lr"] == 0.001  # the command line wins
    assert saved["data"] == [str(synth_set)]
    assert load_checkpoint(run / "last.pt")["config"]["lr"] == 0.001


def test_config_file_with_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("data: x\nbatchsize: 4\n")
    done = run_cli(["train", "--config", str(config)])
    assert done.returncode == 2
    assert "unknown settings ['batchsize']" in done.stderr and "batch_size" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_interrupt_inside_an_accumulation_group_resumes_exactly(synth_set: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--accumulate 2: a checkpoint taken after the first batch of a group keeps that batch's gradients."""
    from boxforge.engine import loop as loop_module

    settings = dict(SMALL, batch_size=2, accumulate=2, iterations=6, val_every=100)
    reference = load_checkpoint(boxforge.train(data=[str(synth_set)], out=str(tmp_path / "ref"), **settings).last)

    real = loop_module.Loop._after_step
    calls: list[int] = []

    def interrupt_after_third_batch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Loop, "_after_step", interrupt_after_third_batch)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        boxforge.train(data=[str(synth_set)], out=str(run), **settings)
    partial = load_checkpoint(run / "last.pt")
    assert (partial["iteration"], partial["global_step"]) == (3, 1) and partial["pending_grads"]
    monkeypatch.setattr(loop_module.Loop, "_after_step", real)
    final = load_checkpoint(boxforge.train(data=[str(synth_set)], out=str(run), resume="auto", **settings).last)
    assert final["global_step"] == reference["global_step"] == 6
    assert final["pending_grads"] is None
    for key, ref in reference["model"].items():
        assert torch.equal(final["model"][key], ref), f"{key}: max abs diff {(final['model'][key] - ref).abs().max()}"


def test_amp_and_ema_on_cpu(synth_set: Path, tmp_path: Path) -> None:
    """--amp is bfloat16 autocast on CPU; --ema keeps an average that validation and checkpoints carry."""
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), iterations=3, amp=True, ema=True,
                            ema_decay=0.5, **SMALL)
    saved = load_checkpoint(result.last)
    assert saved["config"]["amp"] and saved["ema"] is not None
    ema = {k.removeprefix("module."): v for k, v in saved["ema"].items() if k.startswith("module.")}
    assert ema.keys() == saved["model"].keys()
    weight = "model.backbone.stages.0.0.0.weight"
    assert torch.isfinite(ema[weight]).all() and not torch.equal(ema[weight], saved["model"][weight])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("voc12_map" in json.dumps(row) for row in rows)  # validated (on the EMA weights) at the end


def _validations(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if any("map" in key for key in row)]


def test_default_validation_interval_is_a_share_of_the_run(synth_set: Path, tmp_path: Path) -> None:
    """40 one-batch epochs: validation every 2nd epoch (5% of the run), not 40 times; --val-every overrides."""
    settings = dict(SMALL, batch_size=16, iterations=40)
    boxforge.train(data=[str(synth_set)], out=str(tmp_path / "auto"), **settings)
    assert [row["epoch"] for row in _validations(tmp_path / "auto")] == list(range(2, 41, 2))
    boxforge.train(data=[str(synth_set)], out=str(tmp_path / "fixed"), val_every=10, **dict(settings, iterations=20))
    assert [row["epoch"] for row in _validations(tmp_path / "fixed")] == [10, 20]


BUDGET_S = 6.0  # time=0.1 minutes
# Allowances around the budget, timed from outside `train()`: start-up (reading the set, building the model;
# torch and boxforge are imported already) and the end (the step running when the budget ends, the final
# validation, the last save). Both together measured 0.26 to 0.43 s here; 2 s each leaves room for a loaded
# 2-core machine. The report is written once the run has ended, outside the budget: this run writes none.
STARTUP_S, END_S = 2.0, 2.0


def test_time_budget_is_wall_clock_including_validation(synth_set: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), time=BUDGET_S / 60, val_every=1,
                            **SMALL)
    wall = time.perf_counter() - started
    assert BUDGET_S <= wall < BUDGET_S + STARTUP_S + END_S, f"train() took {wall:.1f} s for a {BUDGET_S:g} s budget"
    saved = load_checkpoint(result.last)
    assert BUDGET_S <= saved["elapsed_seconds"] < wall
    assert saved["train_seconds"] < saved["elapsed_seconds"]  # validation time counted in the budget only
    assert len(_validations(tmp_path / "run")) >= 2
