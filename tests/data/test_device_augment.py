"""The SSD recipe as draw-then-apply (data/device_augment.py) against the v2.Compose it splits.

The reference is the existing worker path itself, `detection_transforms(True, size)` run on the same
(image, target) under the same torch seed: the draw consumes the global RNG exactly as the Compose
does (checked by the RNG state after both), so the comparison needs no hand-made parameters. All
of these run on CPU tensors; a CUDA run is compared with the CPU one only where CUDA exists.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from boxforge.data.device_augment import PARAMS_KEY, SSDDraw, SSDParams, SSDRecipe, apply_boxes, apply_ssd
from boxforge.data.device_decode import EncodedDetectionDataset, decode_jpegs, read_jpeg_bytes
from boxforge.data.images import read_image
from boxforge.data.loading import DetectionDataset
from boxforge.data.transforms import detection_transforms
from boxforge.errors import BoxforgeError

SIZE = 96


def _sample(gen: torch.Generator, max_boxes: int = 6) -> tuple[torch.Tensor, dict]:
    """A random channels-last uint8 image (3, H, W), as the decoder gives, and a DetectionDataset-style target."""
    h, w = int(torch.randint(40, 260, (1,), generator=gen)), int(torch.randint(40, 260, (1,), generator=gen))
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen).permute(2, 0, 1)
    n = int(torch.randint(0, max_boxes, (1,), generator=gen))
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 2, h - 2])
    wh = 1 + torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.6
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
    return image, {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                   "labels": torch.arange(1, n + 1), "difficult": torch.arange(n) % 2 == 1, "image_id": f"im{h}x{w}"}


def _reference(compose, image, target, seed):
    torch.manual_seed(seed)
    out = compose(tv_tensors.Image(image), dict(target))
    return out, torch.rand(1)


def _drawn(draw: SSDDraw, image, target, seed):
    torch.manual_seed(seed)
    out = draw(tv_tensors.Image(image), dict(target))
    return out, torch.rand(1)


@pytest.mark.parametrize("norm", [False, True])
def test_same_draws_boxes_and_pixels_as_the_v2_compose(norm: bool) -> None:
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if norm else (None, None)
    compose = detection_transforms(True, (SIZE, SIZE + 32), mean=mean, std=std)
    recipe = SSDRecipe.from_compose(compose)
    draw = SSDDraw(recipe)
    gen = torch.Generator().manual_seed(0)
    units = 255 * torch.tensor(std).view(3, 1, 1) if norm else torch.tensor(255.0)
    seen = {"zoom": 0, "crop": 0, "flip": 0, "hue": 0, "perm": 0, "dropped": 0}
    for seed in range(40 if not norm else 15):
        image, target = _sample(gen)
        (ref_image, ref_target), ref_next = _reference(compose, image, target, seed)
        (same_image, drawn), next_draw = _drawn(draw, image, target, seed)
        assert torch.equal(next_draw, ref_next), f"seed {seed}: the draw used the RNG differently"
        assert same_image.data_ptr() == image.data_ptr()  # the worker hands the image on untouched
        p = drawn[PARAMS_KEY]
        out, targets = apply_ssd([image], [drawn], recipe, "cpu")
        assert out.shape == (1, 3, SIZE, SIZE + 32) and out.dtype == torch.float32
        pixel_diff = ((out[0] - ref_image) * units).abs().max().item()
        assert pixel_diff <= 1.0 + 1e-3, f"seed {seed}: pixels differ by {pixel_diff} of 255 ({p})"
        got = targets[0]
        assert got["boxes"].shape == ref_target["boxes"].shape, seed
        if len(got["boxes"]):
            assert (got["boxes"] - ref_target["boxes"].as_subclass(torch.Tensor)).abs().max().item() <= 1e-4, seed
        assert torch.equal(got["labels"], ref_target["labels"]) and torch.equal(got["difficult"],
                                                                                 ref_target["difficult"]), seed
        seen["zoom"] += p.zoom is not None
        seen["crop"] += p.crop is not None
        seen["flip"] += p.flip
        seen["hue"] += p.hue is not None
        seen["perm"] += p.permutation is not None
        seen["dropped"] += len(got["labels"]) < len(target["labels"])
    assert min(seen.values()) > 0, seen  # every branch of the recipe was compared at least once


def test_a_batch_gives_what_each_sample_gives_alone() -> None:
    """The colour ops run once per batch with per-image factors: the same as one image at a time."""
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    draw = SSDDraw(recipe)
    gen = torch.Generator().manual_seed(1)
    images, targets = [], []
    for seed in range(10):
        image, target = _sample(gen)
        torch.manual_seed(100 + seed)
        images.append(image)
        targets.append(draw(image, target)[1])
    batch, out = apply_ssd(images, targets, recipe, "cpu")
    for i in range(len(images)):
        alone, alone_target = apply_ssd([images[i]], [targets[i]], recipe, "cpu")
        assert torch.equal(batch[i], alone[0]), i
        assert torch.equal(out[i]["boxes"], alone_target[0]["boxes"]), i


def _params(size: tuple[int, int], **changes) -> SSDParams:
    base = dict(in_size=size, zoom=None, crop=None, within=None, flip=False, brightness=None, contrast=None,
                saturation=None, hue=None, contrast_before=True, permutation=None)
    return SSDParams(**{**base, **changes})


def test_boxes_that_leave_the_crop_are_dropped_with_their_labels() -> None:
    recipe = SSDRecipe.from_compose(detection_transforms(True, 50))
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 40, 40], [60, 60, 90, 90], [45, 5, 70, 30]])
    # Crop the top-left 50 x 50: box 0 inside, box 1 outside, box 2's centre (57.5, 17.5) outside.
    p = _params((100, 100), crop=(0, 0, 50, 50), within=torch.tensor([True, False, False]), flip=True)
    target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(100, 100)),
              "labels": torch.tensor([3, 4, 5]), "difficult": torch.tensor([False, True, False]),
              "image_id": "a", PARAMS_KEY: p}
    out, targets = apply_ssd([image], [target], recipe, "cpu")
    assert targets[0]["labels"].tolist() == [3] and targets[0]["difficult"].tolist() == [False]
    assert torch.allclose(targets[0]["boxes"], torch.tensor([[10.0, 10, 40, 40]]))  # flipped in 50 px: same box
    moved, keep = apply_boxes(boxes, _params((100, 100), flip=True), (50, 50))
    assert keep.tolist() == [True, True, True]
    assert torch.allclose(moved, torch.tensor([[30.0, 5, 45, 20], [5, 30, 20, 45], [15, 2.5, 27.5, 15]]))


def test_images_without_boxes() -> None:
    compose = detection_transforms(True, SIZE)
    recipe = SSDRecipe.from_compose(compose)
    draw = SSDDraw(recipe)
    gen = torch.Generator().manual_seed(2)
    for seed in range(8):
        image, target = _sample(gen, max_boxes=1)  # n is always 0
        assert len(target["boxes"]) == 0
        (ref_image, ref_target), _ = _reference(compose, image, target, seed)
        (_, drawn), _ = _drawn(draw, image, target, seed)
        assert drawn[PARAMS_KEY].crop is None  # SafeIoUCrop leaves box-less images uncropped
        out, targets = apply_ssd([image], [drawn], recipe, "cpu")
        assert ((out[0] - ref_image) * 255).abs().max().item() <= 1.0 + 1e-3
        assert targets[0]["boxes"].shape == (0, 4) and targets[0]["labels"].shape == (0,)


def test_same_seed_twice_gives_identical_output_and_the_draw_pickles() -> None:
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    draw = pickle.loads(pickle.dumps(SSDDraw(recipe)))  # as a spawned DataLoader worker receives it
    image, target = _sample(torch.Generator().manual_seed(3))
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        drawn = pickle.loads(pickle.dumps(draw(image, target)[1]))  # as a worker sends it back
        runs.append(apply_ssd([image], [drawn], recipe, "cpu"))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1][0]["boxes"], runs[1][1][0]["boxes"])


def test_only_the_ssd_recipe_and_matching_images_are_accepted() -> None:
    with pytest.raises(BoxforgeError, match="only the SSD recipe"):
        SSDRecipe.from_compose(detection_transforms(False, SIZE))
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    image, target = _sample(torch.Generator().manual_seed(4))
    drawn = SSDDraw(recipe)(image, target)[1]
    with pytest.raises(BoxforgeError, match="parameters drawn for"):
        apply_ssd([image[:, :20, :20]], [drawn], recipe, "cpu")
    with pytest.raises(BoxforgeError, match="no drawn parameters"):
        apply_ssd([image], [target], recipe, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line() -> None:
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    image, target = _sample(torch.Generator().manual_seed(5))
    drawn = SSDDraw(recipe)(image, target)[1]
    for device in ("cuda", torch.device("cuda")):
        with pytest.raises(BoxforgeError, match="no CUDA device is available") as info:
            apply_ssd([image], [drawn], recipe, device)
        assert "\n" not in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU equivalence tests above always run)")
def test_cuda_matches_cpu() -> None:
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    gen = torch.Generator().manual_seed(6)
    images, targets = [], []
    for seed in range(16):
        image, target = _sample(gen)
        torch.manual_seed(seed)
        images.append(image)
        targets.append(SSDDraw(recipe)(image, target)[1])
    cpu, cpu_t = apply_ssd(images, targets, recipe, "cpu")
    gpu, gpu_t = apply_ssd(images, targets, recipe, "cuda")
    assert gpu.device.type == "cuda" and gpu_t[0]["boxes"].device.type == "cuda"
    assert ((gpu.cpu() - cpu) * 255).abs().max().item() <= 2.0 + 1e-3  # resize: float path on GPU, uint8 on CPU
    for a, b in zip(cpu_t, gpu_t):
        assert torch.equal(a["labels"], b["labels"].cpu())
        assert (a["boxes"] - b["boxes"].cpu()).abs().max().item() <= 1e-4 if len(a["boxes"]) else True


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory: pytest.TempPathFactory):
    from boxforge.data.synth import synthesize_detection

    return synthesize_detection(tmp_path_factory.mktemp("devaug") / "voc", images=4, classes=2, seed=1,
                                image_size=(120, 90))


def test_jpeg_bytes_are_read_without_decoding_and_decode_as_the_worker_does(jpeg_set, tmp_path: Path) -> None:
    path = Path(jpeg_set.samples[0].image_path)
    data, height, width = read_jpeg_bytes(path)
    assert data.dtype == torch.uint8 and data.ndim == 1 and data.numel() == path.stat().st_size
    pixels = read_image(path)
    assert (height, width) == tuple(pixels.shape[-2:])
    decoded = decode_jpegs([data], torch.device("cpu"))[0]
    assert decoded.shape == pixels.shape
    assert (decoded.int() - pixels.int()).abs().max().item() <= 2  # two libjpeg builds' IDCTs may differ by a step
    png = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 6)).save(png)
    assert read_jpeg_bytes(png) is None  # not a JPEG: decoded in the worker as usual


def test_encoded_dataset_goes_through_draw_and_apply(jpeg_set) -> None:
    recipe = SSDRecipe.from_compose(detection_transforms(True, SIZE))
    encoded = EncodedDetectionDataset(jpeg_set, SSDDraw(recipe))
    plain = DetectionDataset(jpeg_set, SSDDraw(recipe))
    for i in range(len(plain)):
        torch.manual_seed(i)
        data, t1 = encoded[i]
        torch.manual_seed(i)
        pixels, t2 = plain[i]
        assert data.ndim == 1 and pixels.ndim == 3
        p1, p2 = t1[PARAMS_KEY], t2[PARAMS_KEY]
        assert (p1.in_size, p1.zoom, p1.crop, p1.flip, p1.hue) == (p2.in_size, p2.zoom, p2.crop, p2.flip, p2.hue)
        a, ta = apply_ssd([data], [t1], recipe, "cpu")
        b, tb = apply_ssd([pixels], [t2], recipe, "cpu")
        assert ((a - b) * 255).abs().max().item() <= 4.0 + 1e-3  # decoder steps, grown by the colour factors
        assert torch.equal(ta[0]["boxes"], tb[0]["boxes"]) and torch.equal(ta[0]["labels"], tb[0]["labels"])
