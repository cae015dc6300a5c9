"""`predict --img-size` for a classifier: the centre-crop size to run at (default: the checkpoint's)."""

from __future__ import annotations

import json
from pathlib import Path

from boxforge import api
from boxforge.checkpoint import load_checkpoint, save_checkpoint
from boxforge.inference.load import load_model
from boxforge.engine.fit import TrainResult


def test_img_size_is_the_crop_size(short_run: TrainResult, small_set: Path, tmp_path: Path) -> None:
    state = load_checkpoint(short_run.best)
    assert state["img_size"] == 32
    at_48 = save_checkpoint({**state, "img_size": 48, "build_args": {**state["build_args"], "img_size": 48}},
                            tmp_path / "at48.pt")  # the same weights, saved as if trained at 48 px
    runs = {}
    for name, weights, size in (("resized", short_run.best, 48), ("reference", at_48, None),
                                ("default", short_run.best, None)):
        api.predict(weights, [small_set / "val"], out=tmp_path / name, top_k=3, device="cpu", img_size=size)
        runs[name] = [e["top"] for e in json.loads((tmp_path / name / "predictions.json").read_text())["predictions"]]
    assert len(runs["resized"]) == 12 and runs["resized"] == runs["reference"]
    assert runs["resized"] != runs["default"]  # 48 px crops are not 32 px crops
    assert load_model(short_run.best, img_size=48).backend.img_size == 48
