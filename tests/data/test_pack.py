"""`boxforge pack`: pixels round-trip exactly, corruption is caught with the sample's name, training reads a pack."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from boxforge import api, load_dataset
from boxforge.cli import main
from boxforge.data.loading import DetectionDataset
from boxforge.data.pack import PIXELS, PackReader, read_pack
from boxforge.data.synth import synthesize_detection
from boxforge.errors import DatasetError, UnsafeInputError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack") / "synth"
    synthesize_detection(root, images=16, classes=2, seed=5, image_size=(160, 120))
    return root


def test_round_trip_pixels_boxes_and_splits(synth_root, tmp_path):
    source = load_dataset(synth_root)
    report = api.pack(synth_root, tmp_path / "pack")
    assert report.images == len(source) and report.objects == source.num_objects and not report.skipped
    packed = load_dataset(tmp_path / "pack")
    assert packed.format == "pack" and packed.classes == source.classes
    assert [s.image_id for s in packed.samples] == [s.image_id for s in source.samples]
    original, cached = DetectionDataset(source), DetectionDataset(packed)
    for i in range(len(source)):
        (a, ta), (b, tb) = original[i], cached[i]
        assert torch.equal(a, b)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert set(packed.splits) == set(source.splits)
    train = load_dataset(tmp_path / "pack", split="train")
    assert [s.image_id for s in train.samples] == source.splits["train"]
    with pytest.raises(DatasetError, match="no split 'nope'"):
        load_dataset(tmp_path / "pack", split="nope")


def test_pre_resize_scales_boxes(synth_root, tmp_path):
    api.pack(synth_root, tmp_path / "pack", max_side=80)
    source, packed = load_dataset(synth_root), load_dataset(tmp_path / "pack")
    s, p = source.samples[0], packed.samples[0]
    scale = 80 / max(s.width, s.height)
    assert max(p.width, p.height) == 80 and (p.width, p.height) == (round(s.width * scale), round(s.height * scale))
    assert np.allclose(p.boxes, s.boxes * np.array([p.width / s.width, p.height / s.height] * 2), atol=1e-3)
    image, _ = DetectionDataset(packed)[0]
    assert tuple(image.shape) == (3, p.height, p.width)


def test_corrupt_sample_is_named_then_skipped_or_raised(synth_root, tmp_path, caplog):
    api.pack(synth_root, tmp_path / "pack")
    reader = PackReader(tmp_path / "pack")
    victim = 3
    with open(tmp_path / "pack" / PIXELS, "r+b") as fh:
        fh.seek(int(reader.offsets[victim]) + 10)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    name = str(reader.ids[victim])
    packed = load_dataset(tmp_path / "pack")
    with pytest.raises(DatasetError, match=f"sample '{name}'.*CRC-32"):
        DetectionDataset(packed, strict=True)[victim]
    lenient = DetectionDataset(packed)
    _, target = lenient[victim]
    assert target["image_id"] != name and lenient.skipped[0][0] == name


def test_damaged_index_and_escaping_symlink_are_refused(synth_root, tmp_path):
    api.pack(synth_root, tmp_path / "pack")
    pixels = tmp_path / "pack" / PIXELS
    data = pixels.read_bytes()
    pixels.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DatasetError, match="offsets do not fit"):
        PackReader(tmp_path / "pack")
    outside = tmp_path / "elsewhere.u8"
    outside.write_bytes(data)
    pixels.unlink()
    pixels.symlink_to(outside)
    with pytest.raises(UnsafeInputError, match="outside the pack folder"):
        PackReader(tmp_path / "pack")


def test_pack_refuses_a_non_empty_folder_and_cli_works(synth_root, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        api.pack(synth_root, tmp_path / "busy")
    assert main(["pack", str(synth_root), str(tmp_path / "cli"), "--split", "train"]) == 0
    assert "packed" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "pack.json").read_text())
    assert meta["images"] == len(load_dataset(synth_root, split="train"))
    assert main(["check", str(tmp_path / "cli")]) == 2  # not a folder of image files: says to check the source
    assert "is a boxforge pack" in capsys.readouterr().err


def test_training_reads_a_pack(synth_root, tmp_path):
    api.pack(synth_root, tmp_path / "pack", max_side=96)
    # the training index is the pack's: every sample's pixels live in pixels.u8
    result = api.train(data=[str(tmp_path / "pack")], model="ssd_tiny", img_size=96, batch_size=4, iterations=3,
                       threads=1, out=str(tmp_path / "run"), seed=1, log_every=1, report=False)
    assert result.global_step == 3 and result.last is not None and result.last.is_file()
    assert read_pack(tmp_path / "pack").samples[0].image_path.name == PIXELS
