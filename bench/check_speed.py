"""`boxforge check` on a 20,000-image VOC set (target: under 30 s on 2 cores, header reads only).

Usage: python bench/check_speed.py [--images 20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write  # noqa: E402

from boxforge import check, load_dataset  # noqa: E402


def make_set(root: Path, n: int) -> None:
    """n small JPEGs of varied size with 1-3 boxes each, in a VOC devkit layout."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for i in range(n):
        w, h = int(rng.integers(100, 128)), int(rng.integers(70, 96))
        img = base[:h, :w].copy()
        img[0, :8] = np.frombuffer(i.to_bytes(8, "little") * 3, dtype=np.uint8)[:8, None]
        Image.fromarray(img).save(root / "JPEGImages" / f"{i:06d}.jpg", quality=80)
        objs = "".join(f"<object><name>c{k}</name><difficult>0</difficult><bndbox><xmin>{1 + k}</xmin><ymin>2</ymin>"
                       f"<xmax>{30 + k}</xmax><ymax>40</ymax></bndbox></object>" for k in range(1 + i % 3))
        (root / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation><filename>{i:06d}.jpg</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "voc"
        make_set(root, args.images)
        load = timed(lambda: load_dataset(root), repeats=3)
        full = timed(lambda: check(root), repeats=3)
        report = check(root)
        assert report.images == args.images and not report.errors, report.errors[:3]
    doc = {"images": args.images, "load": load, "check": full, "target_s": 30.0}
    write("check_speed", doc, [("images", str(args.images)), ("read index (median s)", f"{load['median_s']:.2f}"),
                               ("check incl. read (median s)", f"{full['median_s']:.2f}"),
                               ("target", "< 30 s"), ("met", str(full["median_s"] < 30.0))])


if __name__ == "__main__":
    main()
