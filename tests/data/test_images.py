"""read_image (data/images.py): TorchCodec's pixels equal PIL's for every colour type, EXIF orientation,
the palette-PNG route around torchcodec#1731, first frames, one-line errors, no warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from boxforge.data import images
from boxforge.data.images import read_image
from boxforge.errors import ImageReadError
from tests.conftest import RACCOON

W, H = 64, 48


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) + rng.integers(-10, 10, (H, W, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _pil_rgb(path: Path) -> torch.Tensor:
    """The reference: PIL's exif_transpose + convert("RGB"), as (3, H, W)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(ImageOps.exif_transpose(im).convert("RGB"))).permute(2, 0, 1)


def _files(root: Path) -> dict[str, Path]:
    """One file per colour type read_image promises to turn into RGB."""
    photo, alpha = _photo(), Image.fromarray(np.full((H, W), 128, dtype=np.uint8))
    paletted = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    made = {
        "jpeg.jpg": (photo, {"quality": 90}),
        "jpeg444.jpg": (photo, {"quality": 95, "subsampling": 0}),
        "progressive.jpg": (photo, {"quality": 90, "progressive": True}),
        "grey.jpg": (photo.convert("L"), {}),
        "cmyk.jpg": (photo.convert("CMYK"), {}),
        "rgb.png": (photo, {}),
        "rgba.png": (Image.merge("RGBA", (*photo.split(), alpha)), {}),
        "grey.png": (photo.convert("L"), {}),
        "grey_alpha.png": (Image.merge("LA", (photo.convert("L"), alpha)), {}),
        "palette.png": (paletted, {}),
        "palette_transparent.png": (paletted, {"transparency": 0}),
        "palette_4bit_transparent.png": (photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
                                         {"bits": 4, "transparency": 3}),
        "still.gif": (paletted, {}),
        "lossless.webp": (photo, {"lossless": True}),
        "image.bmp": (photo, {}),
        "image.tiff": (photo, {}),
    }
    paths = {}
    for name, (image, params) in made.items():
        paths[name] = root / name
        image.save(paths[name], **params)
    return paths


def test_every_colour_type_decodes_to_the_rgb_pil_gives(tmp_path: Path) -> None:
    for name, path in _files(tmp_path).items():
        image = read_image(path)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W), name
        assert torch.equal(image, _pil_rgb(path)), name


def test_the_real_photos_decode_as_pil_does_greyscale_included() -> None:
    greyscale = [RACCOON / "images" / f"raccoon-{n}.jpg" for n in (150, 152, 161)]  # stored as 1-channel JPEGs
    colour = sorted((RACCOON / "images").glob("raccoon-1?.jpg"))
    for path in greyscale + colour:
        image = read_image(path)
        assert image.shape[0] == 3 and torch.equal(image, _pil_rgb(path)), path.name
        assert torch.equal(image[0], image[2]) == (path in greyscale), path.name  # grey stays grey, colour not


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    _photo().save(path, fmt, exif=exif)
    image = read_image(path)
    assert tuple(image.shape[1:]) == ((W, H) if orientation >= 5 else (H, W))
    assert torch.equal(image, _pil_rgb(path))


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    grey = np.asarray(_photo().convert("L"), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(grey * 257).save(path)  # 16-bit grey: value v stored as v * 257
    image = read_image(path)
    assert image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(grey.astype(np.uint8)).expand(3, H, W))


def test_an_animation_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [_photo(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for seed in range(3)]
    gif, webp = tmp_path / "anim.gif", tmp_path / "anim.webp"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    _photo(0).save(webp, save_all=True, append_images=[_photo(1), _photo(2)], lossless=True)
    for path in (gif, webp):
        with Image.open(path) as im:
            assert im.n_frames == 3
            first = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(read_image(path), first), path.name


def test_palette_pngs_with_transparency_do_not_take_the_process_down(tmp_path: Path) -> None:
    """torchcodec 0.16.0 overruns its buffer on these (torchcodec#1731): a child process, so a regression
    fails this test instead of killing the suite."""
    paths = [p for name, p in _files(tmp_path).items() if name.startswith("palette")]
    code = ("import sys, torch; from pathlib import Path; from boxforge.data.images import read_image\n"
            "for p in sys.argv[1:]:\n    [read_image(Path(p)) for _ in range(20)]\nprint('ok')")
    run = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-500:]


def test_every_image_comes_channels_last(tmp_path: Path) -> None:
    """The uint8 resize after decoding is several times faster on channels-last memory (see data/mosaic.py)."""
    for name, path in _files(tmp_path).items():  # TorchCodec's formats and PIL's (BMP, TIFF, palette PNGs)
        assert read_image(path).permute(1, 2, 0).is_contiguous(), name


def test_without_torchcodec_pil_decodes_the_same_pixels_after_one_warning(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI's torchcodec does not load beside a CPU-only torch: images must still decode, and the user hear why."""
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # the import now raises ImportError
    images._torchcodec_decoder.cache_clear()
    try:
        paths = [p for name, p in _files(tmp_path).items() if name.endswith((".jpg", ".png"))]
        with pytest.warns(RuntimeWarning, match="TorchCodec cannot be loaded .* decoded with PIL"):
            first = read_image(paths[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process, not once per image
            decoded = [first] + [read_image(p) for p in paths[1:]]
        for path, image in zip(paths, decoded):
            assert torch.equal(image, _pil_rgb(path)), path.name
    finally:
        images._torchcodec_decoder.cache_clear()


def test_a_truncated_file_is_one_line_naming_it(tmp_path: Path) -> None:
    for name in ("jpeg.jpg", "rgb.png"):
        good = _files(tmp_path)[name]
        bad = tmp_path / f"truncated_{name}"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(ImageReadError) as caught:
            read_image(bad)
        message = str(caught.value)
        assert message.startswith(f"{bad}: cannot decode (") and "\n" not in message
        assert ".cpp" not in message, message  # the decoder's source location is dropped


def test_decoding_warns_about_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in _files(tmp_path).values():
            read_image(path)
