"""Image decoding: TorchCodec against torchvision.io (the baseline) and PIL, same bytes, same run, one process.

Why: torchvision 0.29 deprecates its image decoders in favour of TorchCodec; boxforge decodes every
image in one place (`data/images.py` `read_image`), and moves decoders only to one that is at least
as fast and gives the same pixels. Each decoder gets the file's bytes already in memory (so the disk
and its cache are out of the figure) and must return (3, H, W) uint8 RGB with EXIF orientation
applied, the first frame of an animation:

- torchvision: `torchvision.io.decode_image(data, mode=RGB, apply_exif_orientation=True)`;
- torchcodec: `torchcodec.decoders.decode_image(data, mode="RGB")` (it always applies EXIF orientation);
- PIL: `ImageOps.exif_transpose(Image.open(...)).convert("RGB")`, as a (3, H, W) view of its array.

Sets: the real photos of ../shared/datasets/raccoon (3 of them greyscale JPEGs) and microcontroller;
EXIF-rotated copies of real photos (the orientation tag spliced into the original bytes, orientations
1-8, so the pixels are the photo's own); and synthetic JPEGs (4:2:0, 4:4:4, progressive, greyscale,
CMYK), PNGs (RGB, RGBA, grey, grey+alpha, palette, EXIF-rotated), GIFs (still and animated) and WebPs
(lossy, lossless with alpha). Two checks stand apart: 16-bit grey PNGs against their known 8-bit truth, and
palette PNGs with transparency, decoded in child processes (torchcodec 0.16.0 crashes on them). Repeats are interleaved decoder by
decoder, so load from other processes hits all of them alike; the figure is the median.

Pixels: every output is compared with torchvision's (and with PIL's): same shape, the largest
absolute difference, and how many images differ at all. EXIF: every rotated copy must equal its
orientation-1 decode turned by the tag's transform, and have the size the header promises.

    python bench/decode_speed.py [--repeats 5 --synthetic 24 --size 640x480]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
Decoder = Callable[[torch.Tensor], torch.Tensor]


def _first_frame(image: torch.Tensor) -> torch.Tensor:
    return image[0] if image.ndim == 4 else image


def decoders() -> dict[str, Decoder]:
    """name -> decode(bytes as a (L,) uint8 tensor) -> (3, H, W) uint8, EXIF orientation applied."""
    import warnings

    from torchcodec.decoders import decode_image as tc_decode
    from torchvision.io import ImageReadMode, decode_image as tv_decode

    def torchvision_io(data: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the deprecation this benchmark is about
            return _first_frame(tv_decode(data, mode=ImageReadMode.RGB, apply_exif_orientation=True))

    def torchcodec(data: torch.Tensor) -> torch.Tensor:
        return _first_frame(tc_decode(data, mode="RGB"))

    def pil(data: torch.Tensor) -> torch.Tensor:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only array: this tensor is only read
            return torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W) view, channels-last like the JPEG decoders

    return {"torchvision.io": torchvision_io, "torchcodec": torchcodec, "PIL": pil}


def _bytes(path_or_data: Path | bytes) -> torch.Tensor:
    data = path_or_data.read_bytes() if isinstance(path_or_data, Path) else path_or_data
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG bytes with an EXIF APP1 segment carrying `orientation` right after SOI."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()  # b"Exif\0\0" + TIFF header + IFD
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _turn(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as displayed under an EXIF orientation tag (TIFF 6.0 semantics)."""
    flip_w, flip_h = (lambda t: t.flip(-1)), (lambda t: t.flip(-2))
    transpose = (lambda t: t.transpose(-1, -2))
    ops = {1: [], 2: [flip_w], 3: [flip_w, flip_h], 4: [flip_h], 5: [transpose],
           6: [transpose, flip_w], 7: [transpose, flip_w, flip_h], 8: [transpose, flip_h]}[orientation]
    for op in ops:
        image = op(image)
    return image


def _photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth gradients and blobs plus a little noise, compressing like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, width / 3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def synthetic_sets(count: int, width: int, height: int) -> dict[str, list[tuple[str, bytes]]]:
    """Set name -> [(label, encoded bytes)]: every colour type read_image promises to turn into RGB."""
    rng = np.random.default_rng(0)
    rgbs = [Image.fromarray(_photo_like(rng, width, height)) for _ in range(count)]
    alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    rotated = _encode(rgbs[0], "PNG", exif=_exif(6))
    frames = [rgbs[k % count] for k in range(3)]
    gif = io.BytesIO()
    frames[0].convert("P").save(gif, "GIF", save_all=True, append_images=[f.convert("P") for f in frames[1:]])
    paletted = rgbs[0].convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    return {
        "synthetic JPEG 4:2:0 q90": [(f"s{k}", _encode(im, "JPEG", quality=90)) for k, im in enumerate(rgbs)],
        "synthetic JPEG 4:4:4 q95": [(f"s{k}", _encode(im, "JPEG", quality=95, subsampling=0))
                                     for k, im in enumerate(rgbs)],
        "synthetic JPEG progressive": [(f"s{k}", _encode(im, "JPEG", quality=90, progressive=True))
                                       for k, im in enumerate(rgbs)],
        "synthetic JPEG greyscale": [(f"s{k}", _encode(im.convert("L"), "JPEG", quality=90))
                                     for k, im in enumerate(rgbs)],
        "synthetic JPEG CMYK": [(f"s{k}", _encode(im.convert("CMYK"), "JPEG", quality=90))
                                for k, im in enumerate(rgbs)],
        "synthetic PNG RGB": [(f"s{k}", _encode(im, "PNG")) for k, im in enumerate(rgbs)],
        "synthetic PNG modes": [
            ("RGBA", _encode(Image.merge("RGBA", (*rgbs[0].split(), alpha)), "PNG")),
            ("L", _encode(rgbs[0].convert("L"), "PNG")),
            ("LA", _encode(Image.merge("LA", (rgbs[0].convert("L"), alpha)), "PNG")),
            ("P", _encode(paletted, "PNG")),
            ("RGB EXIF 6", rotated),
        ],
        "synthetic GIF, WebP": [
            ("GIF still", _encode(paletted, "GIF")),
            ("GIF 3 frames", gif.getvalue()),
            ("WebP lossy", _encode(rgbs[0], "WEBP", quality=90)),
            ("WebP lossless RGBA", _encode(Image.merge("RGBA", (*rgbs[0].split(), alpha)), "WEBP", lossless=True)),
        ],
    }


def sixteen_bit_check(decode: dict[str, Decoder], count: int, width: int, height: int) -> dict[str, Any]:
    """16-bit grey PNGs storing v * 257: the 8-bit truth is v. Per decoder: the dtype it returns and how
    many images equal the truth."""
    rng = np.random.default_rng(2)
    greys = [np.asarray(Image.fromarray(_photo_like(rng, width, height)).convert("L")) for _ in range(count)]
    files = [_encode(Image.fromarray(g.astype(np.uint16) * 257), "PNG") for g in greys]
    out = {}
    for name, fn in decode.items():
        images = [fn(_bytes(data)) for data in files]
        out[name] = {"dtype": str(images[0].dtype), "equal_to_truth": sum(
            im.dtype == torch.uint8 and torch.equal(im, torch.from_numpy(g).expand(3, height, width))
            for im, g in zip(images, greys)),
            "images": count}
    return out


def palette_with_transparency(width: int, height: int) -> dict[str, bytes]:
    """Palette PNGs with a tRNS chunk (8-bit and 4-bit): torchcodec 0.16.0 writes past its output buffer on
    these in mode RGB (meta-pytorch/torchcodec#1731), so they are decoded in child processes only."""
    rgb = Image.fromarray(_photo_like(np.random.default_rng(1), width, height))
    out = {}
    for bits, colors in ((8, 200), (4, 16)):
        paletted = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=colors)
        out[f"P {bits}-bit + tRNS"] = _encode(paletted, "PNG", bits=bits, transparency=0)
    return out


def probe_in_child(images: dict[str, bytes], names: list[str], tries: int = 20) -> dict[str, Any]:
    """Per image and decoder: decode `tries` times in a fresh process; the exit status (negative: the signal
    that killed it) and whether the pixels equal PIL's."""
    import subprocess
    import tempfile

    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import decode_speed as d\n"
            "data = open(sys.argv[2], 'rb').read(); fn = d.decoders()[sys.argv[3]]\n"
            "for _ in range(int(sys.argv[4])): out = fn(d._bytes(data))\n"
            "print(torch.equal(out, d.decoders()['PIL'](d._bytes(data))))")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, data in images.items():
            path = Path(tmp) / "probe.png"
            path.write_bytes(data)
            for name in names:
                run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(path),
                                      name, str(tries)], capture_output=True, text=True)
                result.setdefault(label, {})[name] = {
                    "exit_status": run.returncode, "equals_PIL": run.stdout.strip() == "True" if not run.returncode
                    else None, "stderr_tail": run.stderr.strip()[-160:]}
    return result


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def real_sets(rotated_count: int) -> dict[str, list[tuple[str, bytes]]]:
    raccoon = sorted((SHARED / "raccoon" / "images").glob("*.jpg"))
    micro = sorted((SHARED / "microcontroller").rglob("*.jpg"))
    photos = [(p.name, p.read_bytes()) for p in raccoon[:rotated_count]]
    return {
        "raccoon (real JPEGs)": [(p.name, p.read_bytes()) for p in raccoon],
        "microcontroller (real JPEGs)": [(p.name, p.read_bytes()) for p in micro],
        "real JPEGs, EXIF orientation 1-8": [(f"{name} o{o}", _with_orientation(data, o))
                                             for name, data in photos for o in range(1, 9)],
    }


def compare(sets: dict[str, list[tuple[str, bytes]]], decode: dict[str, Decoder]) -> dict[str, Any]:
    """Per set and decoder: images whose shape or pixels differ from torchvision's (and PIL's), the largest
    absolute difference, and the memory layout the decoder returns."""
    out: dict[str, Any] = {}
    for set_name, items in sets.items():
        per: dict[str, Any] = {}
        outputs = {name: [fn(_bytes(data)) for _, data in items] for name, fn in decode.items()}
        for name in decode:
            row: dict[str, Any] = {"channels_last": bool(outputs[name][0].permute(1, 2, 0).is_contiguous())}
            for against in ("torchvision.io", "PIL"):
                if against == name:
                    continue
                shape_diff = [lab for (lab, _), a, b in zip(items, outputs[name], outputs[against]) if a.shape != b.shape]
                diffs = [int((a.int() - b.int()).abs().max()) if a.shape == b.shape else None
                         for a, b in zip(outputs[name], outputs[against])]
                row[f"vs {against}"] = {"shape_differs": shape_diff,
                                        "images_differing": sum(1 for d in diffs if d),
                                        "max_abs_diff": max((d for d in diffs if d is not None), default=0)}
            per[name] = row
        out[set_name] = {"images": len(items), "decoders": per}
        if set_name.startswith("real JPEGs, EXIF"):
            out[set_name]["exif_turned_right"] = _exif_check(items, outputs)
    return out


def _exif_check(items: list[tuple[str, bytes]], outputs: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Per decoder: how many of the rotated copies equal the orientation-1 decode turned by their tag."""
    result = {}
    for name, images in outputs.items():
        ok = 0
        for k, image in enumerate(images):
            upright = images[k - k % 8]  # o1 of the same photo comes first in each group of 8
            ok += bool(torch.equal(image, _turn(upright, k % 8 + 1)))
        result[name] = ok
    return result


def measure(sets: dict[str, list[tuple[str, bytes]]], decode: dict[str, Decoder], repeats: int) -> dict[str, Any]:
    """Median seconds per set and decoder over `repeats` interleaved passes (one warm-up pass first)."""
    out: dict[str, Any] = {}
    for set_name, items in sets.items():
        tensors = [_bytes(data) for _, data in items]
        pixels = sum(int(decode["PIL"](t).shape[-1] * decode["PIL"](t).shape[-2]) for t in tensors)
        times: dict[str, list[float]] = {name: [] for name in decode}
        for name, fn in decode.items():  # warm-up: libraries loaded, allocator primed
            for t in tensors:
                fn(t)
        for _ in range(repeats):
            for name, fn in decode.items():
                start = time.perf_counter()
                for t in tensors:
                    fn(t)
                times[name].append(time.perf_counter() - start)
        base, base_min = statistics.median(times["torchvision.io"]), min(times["torchvision.io"])
        out[set_name] = {"images": len(items), "megapixels": round(pixels / 1e6, 2), "decoders": {
            name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": repeats,
                   "images_per_s": len(items) / statistics.median(t),
                   "speed_vs_torchvision": base / statistics.median(t),
                   "speed_vs_torchvision_fastest_pass": base_min / min(t)}  # the pass least disturbed by load
            for name, t in times.items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic", type=int, default=24, help="images per synthetic JPEG/PNG set")
    ap.add_argument("--size", default="640x480", help="synthetic image size, WxH")
    ap.add_argument("--rotated", type=int, default=8, help="real photos given each of the 8 EXIF orientations")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)  # the decoders are single-threaded; PIL's convert is too
    decode = decoders()
    sets = {**real_sets(args.rotated), **synthetic_sets(args.synthetic, width, height)}
    import torchcodec
    import torchvision
    import PIL

    probes = probe_in_child(palette_with_transparency(width, height), list(decode))
    pixels = compare(sets, decode)
    deep = sixteen_bit_check(decode, 4, width, height)
    speed = measure(sets, decode, args.repeats)
    doc = {"versions": {"torchcodec": torchcodec.__version__, "torchvision": torchvision.__version__,
                        "pillow": PIL.__version__},
           "args": vars(args), "speed": speed, "pixels": pixels, "palette_png_with_transparency": probes,
           "png_16_bit_grey": deep}
    rows = []
    for set_name, entry in speed.items():
        d = entry["decoders"]
        rows.append((f"{set_name} ({entry['images']} imgs, {entry['megapixels']} MP)",
                     "  ".join(f"{n} {d[n]['images_per_s']:.0f}/s ({d[n]['speed_vs_torchvision']:.2f}x)" for n in d)))
        p = pixels[set_name]["decoders"]
        rows.append(("  pixels vs torchvision.io", "  ".join(
            f"{n}: {p[n]['vs torchvision.io']['images_differing']} differ, max {p[n]['vs torchvision.io']['max_abs_diff']}"
            + (f", shape {len(p[n]['vs torchvision.io']['shape_differs'])}" if p[n]['vs torchvision.io']['shape_differs']
               else "") for n in p if n != "torchvision.io")))
        if "exif_turned_right" in pixels[set_name]:
            rows.append(("  EXIF orientation right", "  ".join(f"{n} {k}/{entry['images']}"
                                                               for n, k in pixels[set_name]["exif_turned_right"].items())))
    rows.append(("synthetic PNG 16-bit grey, equal to v/257", "  ".join(
        f"{n} {r['equal_to_truth']}/{r['images']} ({r['dtype']})" for n, r in deep.items())))
    for label, per in probes.items():
        rows.append((f"{label} (child process)", "  ".join(
            f"{n} " + ("same as PIL" if r["equals_PIL"] else "differs from PIL" if r["exit_status"] == 0
                       else f"CRASHED (exit {r['exit_status']})") for n, r in per.items())))
    write("decode_speed", doc, rows)


if __name__ == "__main__":
    main()
