"""train --multi-scale: the size sequence, its settings and errors, short runs of both detector families,
exact resume with it on, and its refusal for classifiers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import boxforge
from boxforge.checkpoint import load_checkpoint
from boxforge.cli import build_parser
from boxforge.config import TrainConfig, make_config
from boxforge.engine.multiscale import TrainSizes, size_range, train_sizes
from boxforge.errors import BoxforgeError
from boxforge.models import get_model
from boxforge.models.backbones import TinyBackbone
from boxforge.models.dense import CSPBackbone
from tests.engine.conftest import run_cli

SMALL = {"img_size": 96, "batch_size": 4, "threads": 1, "seed": 7, "log_every": 1, "report": False}
RANGE = [0.5, 1.5]  # at 96 px: 64, 96, 128


def _record_input_sizes(monkeypatch: pytest.MonkeyPatch, backbone: type) -> list[tuple[bool, int]]:
    """(training?, input side) of every batch the backbone sees."""
    seen: list[tuple[bool, int]] = []
    real = backbone.forward

    def forward(self, x):
        assert x.shape[-1] == x.shape[-2]
        seen.append((self.training, int(x.shape[-1])))
        return real(self, x)

    monkeypatch.setattr(backbone, "forward", forward)
    return seen


def test_the_size_of_a_batch_is_a_pure_function_of_seed_epoch_and_iteration() -> None:
    assert size_range(320, (0.7, 1.3)) == (224, 256, 288, 320, 352, 384, 416)
    assert size_range(416, (0.7, 1.3)) == (320, 352, 384, 416, 448, 480, 512)
    assert size_range(320, (0.7, 1.3), min_size=268) == (288, 320, 352, 384, 416)  # ssd300_vgg16's smallest input
    sizes = TrainSizes(size_range(320, (0.7, 1.3)), seed=3)
    torch.manual_seed(0)
    first = [sizes.at(epoch, i) for epoch in range(3) for i in range(100)]
    torch.manual_seed(1)  # no global RNG is read, and a fresh object gives the same answers
    again = [TrainSizes(sizes.sizes, seed=3).at(epoch, i) for epoch in range(3) for i in range(100)]
    assert first == again
    assert set(first) == set(sizes.sizes) and all(s % 32 == 0 for s in first)
    assert max(first.count(s) for s in sizes.sizes) < 2 * min(first.count(s) for s in sizes.sizes)  # ~uniform
    assert first[:100] != first[100:200]  # epochs differ
    assert first != [TrainSizes(sizes.sizes, seed=4).at(e, i) for e in range(3) for i in range(100)]  # seeds differ


def test_settings_from_the_cli_and_config_yaml(synth_set: Path, tmp_path: Path) -> None:
    parser = build_parser()

    def parsed(*flags: str) -> TrainConfig:
        args = parser.parse_args(["train", "--data", str(synth_set), *flags])
        return make_config({k: v for k, v in vars(args).items() if k not in ("command", "config")})

    assert parsed().multi_scale is None  # off by default
    assert parsed("--multi-scale").multi_scale == [0.7, 1.3]
    assert parsed("--multi-scale", "0.5:1.5").multi_scale == [0.5, 1.5]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--multi-scale", "big"])
    for bad in ([1.2, 1.5], [0.5, 0.9], [0.0, 1.0], [0.5], "0.5:1.5"):
        with pytest.raises(BoxforgeError, match="--multi-scale .*0 < MIN <= 1 <= MAX <= 4"):
            make_config({"data": [str(synth_set)], "multi_scale": bad})

    result = boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), model="ssd_tiny", iterations=1,
                            multi_scale=True, **dict(SMALL, img_size=160))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["multi_scale"] == [0.7, 1.3]
    assert load_checkpoint(result.last)["config"]["multi_scale"] == [0.7, 1.3]


def test_a_range_with_one_size_or_a_fixed_step_model_is_refused(synth_set: Path, tmp_path: Path) -> None:
    with pytest.raises(BoxforgeError, match=r"--multi-scale 0\.9:1\.1 at 96 px gives only 96 px .* widen the range"):
        boxforge.train(data=[str(synth_set)], out=str(tmp_path / "run"), model="ssd_tiny", iterations=1,
                       multi_scale=[0.9, 1.1], **SMALL)
    assert not list((tmp_path / "run").glob("*.pt")) and not (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(BoxforgeError, match=r"--multi-scale 0\.7:1\.3: ssd300_vgg16 at 300 px .* fixed steps"):
        train_sizes([0.7, 1.3], get_model("ssd300_vgg16", num_classes=2), seed=0)


@pytest.mark.parametrize(("model", "backbone", "extra"), [
    ("ssd_tiny", TinyBackbone, {"mosaic": 0.5, "cache": "ram"}),  # the mosaic and cache paths too
    ("yolo_csp", CSPBackbone, {"amp": False}),
])
def test_a_short_run_trains_at_several_sizes_and_evaluates_at_the_fixed_one(
        synth_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, backbone: type,
        extra: dict) -> None:
    seen = _record_input_sizes(monkeypatch, backbone)
    run = tmp_path / "run"
    result = boxforge.train(data=[str(synth_set)], out=str(run), model=model, iterations=8, val_every=100,
                            multi_scale=RANGE, **SMALL, **extra)
    trained = [size for training, size in seen if training]
    assert len(trained) == 8 and set(trained) <= {64, 96, 128} and len(set(trained)) > 1, trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert any("voc12_map" in row for row in rows)  # the final validation ran ...
    assert all(size == 96 for training, size in seen if not training)  # ... at the fixed size
    saved = load_checkpoint(result.last)
    assert saved["img_size"] == 96 and saved["config"]["multi_scale"] == RANGE

    seen.clear()
    report = boxforge.evaluate(str(synth_set), weights=result.last, split="test", metrics=["voc12"], progress=False)
    assert 0.0 <= report.results["voc12"]["map"] <= 1.0
    assert seen and all(size == 96 and not training for training, size in seen)


def test_an_interrupted_run_resumes_bit_identically(synth_set: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """10 batches (4 an epoch) in one go == 5 batches, Ctrl-C (last.pt mid-epoch 1), --resume auto for 5 more."""
    from boxforge.engine import loop as loop_module

    settings = dict(SMALL, model="ssd_tiny", iterations=10, val_every=100, multi_scale=RANGE)
    seen = _record_input_sizes(monkeypatch, TinyBackbone)
    reference = load_checkpoint(boxforge.train(data=[str(synth_set)], out=str(tmp_path / "ref"), **settings).last)
    reference_sizes = [size for training, size in seen if training]
    assert len(reference_sizes) == 10 and len(set(reference_sizes)) > 1
    seen.clear()

    real = loop_module.Loop._after_step
    calls: list[int] = []

    def interrupt_after_fifth_batch(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Loop, "_after_step", interrupt_after_fifth_batch)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        boxforge.train(data=[str(synth_set)], out=str(run), **settings)
    partial = load_checkpoint(run / "last.pt")
    assert (partial["epoch"], partial["iteration"], partial["global_step"]) == (1, 1, 5)
    monkeypatch.setattr(loop_module.Loop, "_after_step", real)
    final = load_checkpoint(boxforge.train(data=[str(synth_set)], out=str(run), resume="auto", **settings).last)
    assert [size for training, size in seen if training] == reference_sizes
    assert final["global_step"] == reference["global_step"] == 10
    for key, ref in reference["model"].items():
        assert torch.equal(final["model"][key], ref), f"{key}: max abs diff {(final['model'][key] - ref).abs().max()}"


def test_classifiers_refuse_it_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "cls"
    boxforge.synth(data, images=8, classes=2, task="classify")
    done = run_cli(["train", "--data", str(data), "--model", "resnet18", "--img-size", "64", "--iterations", "1",
                    "--threads", "1", "--out", str(tmp_path / "run"), "--multi-scale"])
    assert done.returncode != 0
    assert "--multi-scale is for detectors" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
