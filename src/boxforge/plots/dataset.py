"""A picture of a dataset (`boxforge check DATA --plots DIR`): class histogram, boxes per image, box sizes
relative to the image, aspect ratios, and a grid of sample images with their boxes and class names.

Only valid boxes (finite, positive area; see `data.boxes`) enter the size and aspect plots;
`check` reports the others. Sample images are chosen deterministically: evenly spaced
over the samples sorted by image id.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from boxforge.data import boxes as box_rules
from boxforge.data.images import ImageReadError, load_rgb
from boxforge.data.index import DatasetIndex, Sample
from boxforge.errors import BoxforgeError
from boxforge.plots.common import DPI, new_figure, save

CLASSES_PNG, BOXES_PNG, SIZES_PNG, ASPECT_PNG, SAMPLES_PNG = (
    "classes.png", "boxes_per_image.png", "box_sizes.png", "aspect_ratios.png", "samples.png")
MAX_CLASSES_SHOWN = 60
SCATTER_LIMIT = 5000  # above this many boxes, a 2-D histogram reads better than a scatter
THUMB_SIDE = 360  # sample images are drawn at most this many pixels on their long side


def _box_table(index: DatasetIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid boxes' (width, height) in pixels (N, 2), their image sizes (N, 2) (0 if unknown), labels (N,)."""
    wh, size, labels = [], [], []
    for s in index.samples:
        if not s.num_objects:
            continue
        keep = box_rules.valid_mask(s.boxes)
        b = s.boxes[keep]
        wh.append(np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1))
        size.append(np.tile([s.width, s.height], (len(b), 1)))
        labels.append(s.labels[keep])
    if not wh:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(wh).astype(np.float64), np.concatenate(size).astype(np.float64), np.concatenate(labels)


def class_figure(index: DatasetIndex) -> Figure:
    counts = index.class_counts()
    items = list(counts.items())
    if len(items) > MAX_CLASSES_SHOWN:
        items.sort(key=lambda kv: -kv[1])
        rest = items[MAX_CLASSES_SHOWN - 1:]
        items = items[:MAX_CLASSES_SHOWN - 1] + [(f"other {len(rest)} classes", sum(n for _, n in rest))]
    fig = Figure(figsize=(9, max(2.5, 0.28 * len(items) + 1.2)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    names = [k for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, padding=3, fontsize="small")
    what = "images" if index.task == "classify" else "objects"
    ax.set_xlabel(what)
    ax.set_title(f"{what} per class ({len(index)} images, {sum(counts.values())} {what})")
    ax.margins(x=0.1)
    return fig


def boxes_per_image_figure(index: DatasetIndex) -> Figure:
    n = np.array([s.num_objects for s in index.samples], dtype=np.int64)
    fig, axes = new_figure(1, sharex=False, width=8, row_height=3.6)
    ax = axes[0, 0]
    top = int(n.max()) if n.size else 0
    ax.hist(n, bins=np.arange(-0.5, top + 1.5, 1.0), color="tab:blue", edgecolor="white")
    ax.set_xlabel("boxes in the image")
    ax.set_ylabel("images")
    mean = float(n.mean()) if n.size else 0.0
    ax.set_title(f"boxes per image: mean {mean:.2f}, max {top}, {int((n == 0).sum())} images without boxes")
    return fig


def box_size_figure(wh: np.ndarray, size: np.ndarray) -> Figure:
    """Box width/height as a fraction of the image's; boxes of images with unknown size are left out."""
    known = (size > 0).all(axis=1)
    rel = wh[known] / size[known]
    fig, axes = new_figure(1, sharex=False, width=7, row_height=6)
    ax = axes[0, 0]
    if len(rel) > SCATTER_LIMIT:
        _, _, _, im = ax.hist2d(rel[:, 0], rel[:, 1], bins=60, range=[[0, 1], [0, 1]], cmin=1, cmap="viridis")
        fig.colorbar(im, ax=ax, label="boxes")
    else:
        ax.scatter(rel[:, 0], rel[:, 1], s=10, alpha=0.5, color="tab:blue", edgecolors="none")
    ax.set_xlim(0, max(1.0, float(rel[:, 0].max()) if len(rel) else 1.0))
    ax.set_ylim(0, max(1.0, float(rel[:, 1].max()) if len(rel) else 1.0))
    ax.set_aspect("equal")
    ax.set_xlabel("box width / image width")
    ax.set_ylabel("box height / image height")
    ax.grid(True, alpha=0.3)
    unknown = f", {int((~known).sum())} with unknown image size left out" if (~known).any() else ""
    ax.set_title(f"box size relative to the image ({len(rel)} boxes{unknown})")
    return fig


def aspect_figure(wh: np.ndarray) -> Figure:
    ratio = wh[:, 0] / wh[:, 1]
    fig, axes = new_figure(1, sharex=False, width=8, row_height=3.6)
    ax = axes[0, 0]
    if ratio.size:
        lo, hi = min(ratio.min(), 0.25), max(ratio.max(), 4.0)
        ax.hist(ratio, bins=np.geomspace(lo, hi, 40), color="tab:blue", edgecolor="white")
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", linestyle=":")
        ax.set_title(f"box aspect ratio width/height (median {np.median(ratio):.2f}, {ratio.size} boxes)")
    else:
        ax.set_title("box aspect ratio: no valid boxes")
    ax.set_xlabel("width / height (log scale)")
    ax.set_ylabel("boxes")
    return fig


def pick_samples(index: DatasetIndex, n: int) -> list[Sample]:
    """Up to `n` samples with an image file, evenly spaced over the samples sorted by image id."""
    have = sorted((s for s in index.samples if s.image_path is not None), key=lambda s: s.image_id)
    if len(have) <= n:
        return have
    return [have[int(i)] for i in np.linspace(0, len(have) - 1, n).round()]


def _thumbnail(sample: Sample) -> tuple[np.ndarray | None, float, str]:
    """(RGB thumbnail or None, scale from annotation pixels to thumbnail pixels, why not readable)."""
    try:
        rgb = load_rgb(sample.image_path)
    except (ImageReadError, BoxforgeError, OSError) as exc:
        return None, 1.0, str(exc).rsplit(": ", 1)[-1][:60]
    step = max(1, math.ceil(max(rgb.shape[:2]) / THUMB_SIDE))
    if step > 1:
        rgb = np.asarray(Image.fromarray(rgb).reduce(step))
    return rgb, 1.0 / step, ""


def samples_figure(index: DatasetIndex, chosen: list[Sample]) -> Figure:
    cols = min(4, max(1, len(chosen)))
    rows = max(1, math.ceil(len(chosen) / cols))
    fig = Figure(figsize=(4 * cols, 3.4 * rows), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = [f"C{i}" for i in range(10)]
    for ax, sample in zip(axes, chosen):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(sample.image_id if index.task == "detect" or sample.label is None
                     else f"{sample.image_id}: {index.classes[sample.label]}", fontsize="small")
        img, scale, why = _thumbnail(sample)
        if img is None:
            ax.text(0.5, 0.5, f"cannot read image\n{why}", ha="center", va="center", transform=ax.transAxes,
                    color="tab:red", fontsize="small")
            continue
        ax.imshow(img)
        for box, label in zip(sample.boxes, sample.labels):
            if not np.isfinite(box).all():
                continue
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            colour = colours[int(label) % len(colours)]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
            name = index.classes[label] if 0 <= label < len(index.classes) else f"#{label}"
            ax.text(x1, y1, name, color="white", fontsize="x-small", va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    fig.suptitle(f"{len(chosen)} of {len(index)} images (evenly spaced by image id)")
    return fig


def plot_dataset(index: DatasetIndex, out_dir: str | Path, *, samples: int = 16) -> list[Path]:
    """Write the dataset's picture as PNGs into `out_dir` (created); returns the files written.

    Detection sets get all five figures; classification sets get the class histogram and samples.
    """
    out = Path(out_dir)
    written = [save(class_figure(index), out / CLASSES_PNG)]
    if index.task == "detect":
        wh, size, _ = _box_table(index)
        written.append(save(boxes_per_image_figure(index), out / BOXES_PNG))
        written.append(save(box_size_figure(wh, size), out / SIZES_PNG))
        written.append(save(aspect_figure(wh), out / ASPECT_PNG))
    chosen = pick_samples(index, samples)
    if chosen:
        written.append(save(samples_figure(index, chosen), out / SAMPLES_PNG))
    return written
