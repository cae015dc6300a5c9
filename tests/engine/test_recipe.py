"""The model's own recipe (config.MODEL_DEFAULTS) and the EMA warm-up (engine/ema.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from boxforge.config import MODEL_DEFAULTS, TrainConfig, fast_autocast, make_config
from boxforge.engine.ema import ema_update_fn, warmup_decay


def test_default_model_brings_its_recipe_and_explicit_settings_win(tmp_path: Path) -> None:
    cfg = make_config({"data": "d"})
    assert cfg.model == TrainConfig.model == "yolo_csp"
    assert (cfg.optimizer, cfg.ema, cfg.amp) == ("adamw", True, fast_autocast())
    cfg = make_config({"data": "d", "optimizer": "sgd", "ema": False, "amp": False})
    assert (cfg.optimizer, cfg.ema, cfg.amp) == ("sgd", False, False)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("ema: false\n")
    assert make_config({"data": "d"}, yaml_file).ema is False  # the YAML file is "said otherwise" too
    cfg = make_config({"data": "d", "model": "ssd_tiny"})  # SSD models keep the plain defaults
    assert "ssd_tiny" not in MODEL_DEFAULTS and (cfg.optimizer, cfg.ema, cfg.amp) == ("sgd", False, False)


def test_cli_can_turn_the_recipe_off() -> None:
    from boxforge.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--no-ema", "--no-amp"])
    assert args.ema is False and args.amp is False
    assert build_parser().parse_args(["train", "--data", "d"]).ema is None  # not given: the recipe decides


def test_ema_decay_warms_up_then_stays_at_the_setting() -> None:
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 90) == pytest.approx(0.91)
    assert warmup_decay(0.999, 100_000) == 0.999
    with pytest.raises(ValueError, match="decay"):
        ema_update_fn(1.5)


def test_averaged_model_follows_the_warm_up() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=ema_update_fn(0.999), use_buffers=True)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update_parameters(model)  # first call copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # n_averaged = 1: decay 2/11, so the EMA moves 9/11 of the way
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 9 / 11))
