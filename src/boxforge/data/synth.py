"""Deterministic synthetic datasets: a detection set (Pascal VOC root) and a classification set (ImageFolder).

Why: tests, benchmarks and first-time users need a dataset that exists without a
download, is small, and is hard enough that a model must learn *shape* (colour is
random for every class, backgrounds are textured, objects overlap). The same seed
gives byte-identical files, so a failing run can be reproduced exactly.

Every image has its own random stream, keyed by (seed, image number), so image 7
looks the same whether 10 or 10,000 images are made.
"""

from __future__ import annotations

import colorsys
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from boxforge.data.formats.voc import write_voc_annotation
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring")
MARKER = ".boxforge-synth"
# Everything synth writes at the top of OUT; anything else there is somebody else's.
_OWNED = frozenset({MARKER, "classes.txt", "JPEGImages", "Annotations", "ImageSets", "train", "val"})
_JPEG_QUALITY = 90
_MAX_COVERED = 0.6  # an earlier object may lose at most this share of its pixels to later ones
_IMAGE_STREAM, _SPLIT_STREAM = 0, 1


def _class_names(classes: int) -> list[str]:
    if not isinstance(classes, int) or not 1 <= classes <= len(SHAPES):
        raise BoxforgeError(f"synth: classes={classes!r}; allowed: 1 to {len(SHAPES)} ({', '.join(SHAPES)})")
    return list(SHAPES[:classes])


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise BoxforgeError(f"synth: {name}={value!r}; allowed: an integer >= {minimum}")


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent generator per (stream, index), so adding images never changes earlier ones."""
    return np.random.default_rng([stream, index, seed])


def _prepare_out(out: Path, params: dict[str, object]) -> None:
    """Make OUT an empty folder holding only our marker, refusing anything that is not ours.

    A folder counts as ours only if it has the marker and nothing but names synth
    writes; then its old contents are removed so a smaller rerun leaves no stale
    files. The marker is written first, so a crashed run can simply be rerun.
    """
    if out.exists() and not out.is_dir():
        raise BoxforgeError(f"{out}: exists and is not a directory; synth needs an empty or new folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    names = [p.name for p in entries]
    if entries and MARKER not in names:
        raise BoxforgeError(f"{out}: folder is not empty and is not a previous synth output (no {MARKER}); "
                            "refusing to write into it: choose an empty or new folder")
    foreign = [n for n in names if n not in _OWNED]
    if foreign:
        raise BoxforgeError(f"{out}: holds files synth did not write ({', '.join(foreign[:5])}); "
                            "refusing to replace it: move them or choose another folder")
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32: a muted two-colour gradient plus faint stripes and/or blobs.

    Muted (low saturation) so saturated shapes stand out; textured so a detector
    cannot find objects by looking for the only non-flat region.
    """
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    grey = rng.uniform(40, 215, size=(2, 1))
    ends = np.clip(grey + rng.uniform(-25, 25, size=(2, 3)), 0, 255).astype(np.float32)
    image = ends[0] + t[..., None] * (ends[1] - ends[0])
    texture = np.zeros((height, width), dtype=np.float32)
    if rng.random() < 0.6:
        beta, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        texture += rng.uniform(5, 14) * np.sin(2 * np.pi * (xs * np.cos(beta) + ys * np.sin(beta)) / period
                                               + rng.uniform(0, 2 * np.pi))
    for _ in range(int(rng.integers(0, 5))):
        cx, cy, sigma = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 0.5 * max(width, height))
        texture += rng.uniform(-25, 25) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return image + texture[..., None]


def _polygon(points: int, inner: float, width: int, height: int, start: float) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (inner == 1) or a star (inner < 1) filling a width x height box."""
    count = points if inner == 1 else 2 * points
    angles = start + np.arange(count) * 2 * np.pi / count
    radii = np.where(np.arange(count) % 2 == 1, inner, 1.0)
    return [((1 + r * np.cos(a)) * (width - 1) / 2, (1 + r * np.sin(a)) * (height - 1) / 2)
            for a, r in zip(angles, radii)]


def shape_mask(kind: str, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of one shape kind drawn to fill its box (the class is the shape)."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    box = (0, 0, width - 1, height - 1)
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "square":
        draw.rectangle(box, fill=255)
    elif kind == "triangle":
        draw.polygon([((width - 1) / 2, 0), (width - 1, height - 1), (0, height - 1)], fill=255)
    elif kind == "diamond":
        draw.polygon([((width - 1) / 2, 0), (width - 1, (height - 1) / 2), ((width - 1) / 2, height - 1),
                      (0, (height - 1) / 2)], fill=255)
    elif kind == "cross":
        tw, th = max(width * 0.34, 2), max(height * 0.34, 2)
        draw.rectangle(((width - tw) / 2, 0, (width + tw) / 2, height - 1), fill=255)
        draw.rectangle((0, (height - th) / 2, width - 1, (height + th) / 2), fill=255)
    elif kind == "star":
        draw.polygon(_polygon(5, 0.45, width, height, -np.pi / 2), fill=255)
    elif kind == "hexagon":
        draw.polygon(_polygon(6, 1, width, height, 0.0), fill=255)
    elif kind == "ring":
        ring = max(2, round(0.22 * min(width, height)))
        draw.ellipse(box, fill=255)
        draw.ellipse((ring, ring, width - 1 - ring, height - 1 - ring), fill=0)
    else:
        raise BoxforgeError(f"synth: unknown shape {kind!r}; allowed: {', '.join(SHAPES)}")
    return np.asarray(mask) > 0


def _colour(rng: np.random.Generator, behind: np.ndarray) -> tuple[int, int, int]:
    """A random saturated colour far enough from `behind` (the mean RGB under the shape) to be seen.

    Hue is uniform for every class, so colour carries no class information.
    """
    best, best_distance = (0, 0, 0), -1.0
    for _ in range(8):
        rgb = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1), rng.uniform(0.45, 1))) * 255
        distance = float(np.linalg.norm(rgb - behind))
        if distance > best_distance:
            best, best_distance = (int(rgb[0]), int(rgb[1]), int(rgb[2])), distance
        if distance > 90:
            break
    return best


def _paste(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    """Fill `mask` (h, w bool) at (x0, y0) of `canvas` (H, W, 3 float32, in place) with a random colour."""
    region = canvas[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    region[mask] = _colour(rng, region[mask].mean(axis=0))


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> Image.Image:
    """Add sensor-like noise over everything (shapes included) and quantise to an 8-bit RGB image."""
    noisy = canvas + rng.normal(0.0, 4.0, size=canvas.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=_JPEG_QUALITY)


DEFAULT_OBJECTS = (1, 6)  # shapes tried per image, inclusive
DEFAULT_OBJECT_SIZE = (0.08, 0.6)  # a shape's size as a fraction of the image's short side


def _place_objects(rng: np.random.Generator, canvas: np.ndarray, names: list[str],
                   objects: tuple[int, int] = DEFAULT_OBJECTS,
                   object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw `objects` (min, max) shapes into `canvas`; return boxes (N, 4) float32 xyxy (x2, y2 exclusive) and
    labels (N,). Fewer may be placed in a crowded image (see below).

    Boxes are tight around each shape's full mask, even where later shapes cover
    it; a shape is not placed if it would hide more than _MAX_COVERED of an earlier one.
    """
    height, width = canvas.shape[:2]
    owner = np.zeros((height, width), dtype=np.uint8)  # 0 = background, k = object k (1-based)
    areas: list[int] = []
    visible: list[int] = []
    boxes: list[list[float]] = []
    labels: list[int] = []
    short = min(width, height)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(10):
            label = int(rng.integers(len(names)))
            size, aspect = rng.uniform(*object_size) * short, np.sqrt(rng.uniform(0.75, 1.33))
            w, h = min(max(round(size * aspect), 6), width), min(max(round(size / aspect), 6), height)
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            mask = shape_mask(names[label], w, h)
            hidden = np.bincount(owner[y0:y0 + h, x0:x0 + w][mask], minlength=len(areas) + 1)[1:]
            if any(v - c < (1 - _MAX_COVERED) * a for v, c, a in zip(visible, hidden, areas)):
                continue
            _paste(rng, canvas, mask, x0, y0)
            owner[y0:y0 + h, x0:x0 + w][mask] = len(areas) + 1
            visible = [v - int(c) for v, c in zip(visible, hidden)] + [int(mask.sum())]
            areas.append(int(mask.sum()))
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            boxes.append([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])
            labels.append(label)
            break
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _detection_sample(out: Path, number: int, seed: int, names: list[str], size: tuple[int, int],
                      objects: tuple[int, int] = DEFAULT_OBJECTS,
                      object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE) -> Sample:
    """Make, save and describe one detection image; its size varies by up to 10% around `size`."""
    rng = _rng(seed, _IMAGE_STREAM, number)
    width, height = (max(32, round(s * rng.uniform(0.9, 1.1))) for s in size)
    canvas = _background(rng, width, height)
    boxes, labels = _place_objects(rng, canvas, names, objects, object_size)
    image_id = f"{number:06d}"
    sample = Sample(image_id, out / "JPEGImages" / f"{image_id}.jpg", width=width, height=height, boxes=boxes,
                    labels=labels, annotation_path=out / "Annotations" / f"{image_id}.xml")
    _save(_finish(rng, canvas), sample.image_path)
    write_voc_annotation(sample.annotation_path, sample, names)
    return sample


def check_range(name: str, value: object, *, integer: bool, low: float, high: float | None = None) -> None:
    """A (min, max) pair with low <= min <= max (<= high), or one line saying what is allowed."""
    kind = "integers" if integer else "numbers"
    allowed = f"two {kind} MIN <= MAX, MIN >= {low:g}" + (f", MAX <= {high:g}" if high is not None else "")
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) if integer else isinstance(v, (int, float)) for v in value)
    if not ok or not low <= value[0] <= value[1] or (high is not None and value[1] > high) \
            or (not integer and value[0] <= 0):
        raise BoxforgeError(f"synth: {name}={value!r}; allowed: {allowed}" + ("" if integer else " and MIN > 0"))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def synthesize_detection(out: Path, *, images: int = 200, classes: int = 3, seed: int = 0,
                         image_size: tuple[int, int] = (320, 240), test_fraction: float = 0.2,
                         objects: tuple[int, int] = DEFAULT_OBJECTS,
                         object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE) -> DatasetIndex:
    """Write a synthetic detection set as a Pascal VOC root at `out` and return its index.

    Layout: JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{train,trainval,test}.txt
    (trainval equals train, for tools that look for it), classes.txt. Boxes are integer
    pixels x1, y1, x2, y2 with 0 <= x1 < x2 <= width (x2, y2 exclusive). Class = shape kind.
    objects (min, max shapes tried per image) and object_size (min, max fraction of the short side) make
    dense sets of small objects (e.g. (20, 40) and (0.03, 0.1)); the defaults give the same images as ever.
    """
    check_range("objects", objects, integer=True, low=1)
    check_range("object_size", object_size, integer=False, low=0.0, high=1.0)
    names = _class_names(classes)
    _check_positive("images", images)
    _check_positive("seed", seed, minimum=0)
    if len(image_size) != 2 or any(not isinstance(s, int) or s < 32 for s in image_size):
        raise BoxforgeError(f"synth: image_size={image_size!r}; allowed: (width, height), each an integer >= 32")
    if not 0 <= test_fraction < 1:
        raise BoxforgeError(f"synth: test_fraction={test_fraction!r}; allowed: 0 <= test_fraction < 1")
    out = Path(out).resolve()
    params: dict[str, object] = {"kind": "detect", "images": images, "classes": classes, "seed": seed,
                                 "image_size": list(image_size), "test_fraction": test_fraction}
    if tuple(objects) != DEFAULT_OBJECTS or tuple(object_size) != DEFAULT_OBJECT_SIZE:
        params.update(objects=list(objects), object_size=list(object_size))
    _prepare_out(out, params)
    samples = [_detection_sample(out, i, seed, names, image_size, tuple(objects), tuple(object_size))
               for i in range(images)]
    ids = [s.image_id for s in samples]
    n_test = min(round(images * test_fraction), images - 1)
    test = sorted(_rng(seed, _SPLIT_STREAM).permutation(ids)[:n_test].tolist())
    test_set = set(test)
    train = [i for i in ids if i not in test_set]
    _write_lines(out / "classes.txt", names)
    for split, split_ids in (("train", train), ("trainval", train), ("test", test)):
        _write_lines(out / "ImageSets" / "Main" / f"{split}.txt", split_ids)
    return DatasetIndex(classes=names, samples=samples, format="voc", root=out,
                        splits={"train": train, "trainval": list(train), "test": test}, meta={"synth_seed": seed})


def _classification_image(seed: int, number: int, kind: str, size: int) -> Image.Image:
    """One square image with a single shape of `kind`, 40-80% of the side, near the centre."""
    rng = _rng(seed, _IMAGE_STREAM, number)
    canvas = _background(rng, size, size)
    extent, aspect = rng.uniform(0.4, 0.8) * size, np.sqrt(rng.uniform(0.75, 1.33))
    w, h = min(max(round(extent * aspect), 6), size), min(max(round(extent / aspect), 6), size)
    cx, cy = (size / 2 + rng.uniform(-0.15, 0.15, size=2) * size).tolist()
    x0, y0 = int(np.clip(round(cx - w / 2), 0, size - w)), int(np.clip(round(cy - h / 2), 0, size - h))
    _paste(rng, canvas, shape_mask(kind, w, h), x0, y0)
    return _finish(rng, canvas)


def synthesize_classification(out: Path, *, images: int = 200, classes: int = 3, seed: int = 0,
                              image_size: int = 64) -> DatasetIndex:
    """Write a synthetic ImageFolder tree OUT/{train,val}/<class>/<id>.jpg (80/20) and return its index.

    Classes take turns (balanced) and the split is stratified, so every class has
    images in both splits: ImageFolder numbers classes by the folders it finds, and
    a class missing from one split would shift every later class index.
    """
    names = _class_names(classes)
    _check_positive("images", images, minimum=2 * classes)
    _check_positive("seed", seed, minimum=0)
    _check_positive("image_size", image_size, minimum=16)
    out = Path(out).resolve()
    _prepare_out(out, {"kind": "classify", "images": images, "classes": classes, "seed": seed,
                       "image_size": image_size})
    labels = [i % classes for i in range(images)]
    split_rng, val = _rng(seed, _SPLIT_STREAM), set()
    for label in range(classes):
        members = [i for i, lab in enumerate(labels) if lab == label]
        val.update(split_rng.permutation(members)[:max(1, round(0.2 * len(members)))].tolist())
    samples, splits = [], {"train": [], "val": []}
    for number, label in enumerate(labels):
        split = "val" if number in val else "train"
        image_id = f"{split}/{names[label]}/{number:06d}"
        path = out / f"{image_id}.jpg"
        _save(_classification_image(seed, number, names[label], image_size), path)
        samples.append(Sample(image_id, path, width=image_size, height=image_size, label=label))
        splits[split].append(image_id)
    return DatasetIndex(classes=names, samples=samples, format="imagefolder", root=out, task="classify",
                        splits=splits, meta={"synth_seed": seed})
