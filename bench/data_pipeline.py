"""Data pipeline: decoded + augmented + resized training samples per second, boxforge vs the torchvision reference way.

Same images, same batch size, same output (a (3, S, S) float32 sample and its boxes):

- reference: PIL decode, transforms v2 `ssdlite` preset on the PIL image, then the model-side
  resize (bench/reference.py), default DataLoader (fork, workers restarted every epoch);
- boxforge ssdlite-equivalent: the same augmentations (IoU crop, flip) on uint8 tensors from
  torchvision.io, resized once, to float last; make_loader (forkserver, persistent workers);
- boxforge default: its `ssd` recipe (zoom out, IoU crop, flip, resize, then colour jitter),
  against the reference `ssd` preset (the same augmentations on PIL, colour jitter first);
  and boxforge's recipe in the reference order, as it was before (colour jitter first);
- boxforge from a pack (`boxforge pack`): the same pipeline without JPEG decoding, full size
  (identical pixels) and pre-resized to --pack-side.

Per worker: workers=0 (the main process does everything, one thread). All workers:
--workers processes. Each repeat times one full epoch (after one warm-up epoch, so
persistent workers are started; the reference's non-persistent workers restart each epoch,
as they do for its users); variants are interleaved repeat by repeat so that load from
other processes hits all of them alike.

    python bench/data_pipeline.py [--synthetic 300 --size 320 --batch 8 --workers 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402
from common import write  # noqa: E402

from boxforge import load_dataset  # noqa: E402
from boxforge.data.loading import DetectionDataset, make_loader  # noqa: E402
from boxforge.data.pack import write_pack  # noqa: E402
from boxforge.data.synth import synthesize_detection  # noqa: E402
from boxforge.data.transforms import SafeIoUCrop, detection_transforms, target_tensors  # noqa: E402

RACCOON = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "raccoon"


def ssdlite_like(size: int) -> v2.Compose:
    """boxforge's uint8 pipeline with the reference `ssdlite` augmentations: IoU crop, flip, one resize."""
    return v2.Compose([SafeIoUCrop(), v2.RandomHorizontalFlip(p=0.5), v2.Resize((size, size), antialias=True),
                       v2.SanitizeBoundingBoxes(labels_getter=target_tensors), v2.ToDtype(torch.float32, scale=True)])


def ssd_jitter_before_resize(size: int) -> v2.Compose:
    """boxforge's `ssd` recipe in the reference's order (colour jitter first, on the full-size image),
    as boxforge had it before: the measured cost of that order."""
    from boxforge.data.transforms import SSD_FILL

    return v2.Compose([v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=list(SSD_FILL), side_range=(1.0, 4.0),
                                                                            p=0.5),
                       SafeIoUCrop(), v2.RandomHorizontalFlip(p=0.5), v2.Resize((size, size), antialias=True),
                       v2.SanitizeBoundingBoxes(labels_getter=target_tensors), v2.ToDtype(torch.float32, scale=True)])


def epoch_seconds(loader: Any) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return time.perf_counter() - start, n


def variants(index: Any, packs: dict[str, Any], size: int) -> dict[str, Callable[[int, int], Any]]:
    """name -> make(batch, workers) returning a loader over the same images."""
    def ref(preset: str) -> Callable[[int, int], Any]:
        def make(batch: int, workers: int) -> Any:
            data = reference.ReferenceDataset(index, reference.WithModelResize(reference.train_preset(preset), size))
            return reference.loader(data, batch, workers)
        return make

    def ours(idx: Any, transform: Any) -> Callable[[int, int], Any]:
        return lambda batch, workers: make_loader(DetectionDataset(idx, transform), batch, shuffle=True,
                                                  workers=workers)

    out = {"reference (PIL, v2 ssdlite preset)": ref("ssdlite"),
           "boxforge, ssdlite augmentations": ours(index, ssdlite_like(size)),
           "reference (PIL, v2 ssd preset)": ref("ssd"),
           "boxforge, default ssd recipe": ours(index, detection_transforms(True, size)),
           "boxforge, ssd recipe, colour jitter first (previous order)": ours(index, ssd_jitter_before_resize(size))}
    for name, packed in packs.items():
        out[f"boxforge, ssdlite augmentations, {name}"] = ours(packed, ssdlite_like(size))
    return out


def measure(index: Any, packs: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    makers = variants(index, packs, args.size)
    results = []
    for workers in (0, args.workers):
        loaders = {name: make(args.batch, workers) for name, make in makers.items()}
        times: dict[str, list[float]] = {name: [] for name in loaders}
        counts = {}
        for name, loader in loaders.items():  # warm-up epoch: starts persistent workers, fills caches
            epoch_seconds(loader)
        for _ in range(args.repeats):
            for name, loader in loaders.items():
                seconds, counts[name] = epoch_seconds(loader)
                times[name].append(seconds)
        for name, ts in times.items():
            rates = [counts[name] / t for t in ts]
            results.append({"variant": name, "workers": workers, "samples": counts[name],
                            "samples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                            "epoch_s": ts, "repeats": args.repeats})
        del loaders
    return results


def op_profile(repeats: int = 10) -> dict[str, dict[str, float]]:
    """ms per call of each augmentation on a 500x375 image, uint8 tensor vs PIL, one thread.

    Explains where the `ssd` recipe spends its time: colour jitter (hue above all) runs
    on the full-size image, and torchvision's tensor kernels for it are slower than PIL's.
    """
    from torchvision.transforms.v2 import functional as F

    x = torch.randint(0, 255, (3, 375, 500), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pil = F.to_pil_image(x)
    ops = {"adjust_brightness": lambda im: F.adjust_brightness(im, 1.2),
           "adjust_contrast": lambda im: F.adjust_contrast(im, 1.2),
           "adjust_saturation": lambda im: F.adjust_saturation(im, 1.2),
           "adjust_hue": lambda im: F.adjust_hue(im, 0.03),
           "zoom_out_x2": lambda im: F.pad(im, [250, 188, 250, 188], fill=[123, 117, 104]),
           "hflip": F.horizontal_flip}
    out = {}
    for name, op in ops.items():
        row = {}
        for kind, image in (("uint8_tensor_ms", x), ("pil_ms", pil)):
            start = time.perf_counter()
            for _ in range(repeats):
                op(image)
            row[kind] = 1000 * (time.perf_counter() - start) / repeats
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=300, help="images in the synthetic set (500x375 JPEGs)")
    ap.add_argument("--raccoon", type=Path, default=RACCOON)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pack-side", type=int, default=480, help="longer side of the pre-resized pack")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per data process, as each DataLoader worker has
    doc: dict[str, Any] = {"size": args.size, "batch": args.batch, "workers": args.workers, "sets": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"synthetic": synthesize_detection(Path(tmp) / "synth", images=args.synthetic, classes=3, seed=0,
                                                  image_size=(500, 375))}
        if args.raccoon.is_dir():
            sets["raccoon"] = load_dataset(args.raccoon)
        for set_name, index in sets.items():
            packs, pack_s = {}, {}
            for label, side in (("pack full size", None), (f"pack max side {args.pack_side}", args.pack_side)):
                start = time.perf_counter()
                write_pack(index, Path(tmp) / f"{set_name}-{side}", max_side=side)
                pack_s[label] = time.perf_counter() - start
                packs[label] = load_dataset(Path(tmp) / f"{set_name}-{side}")
            results = measure(index, packs, args)
            doc["sets"][set_name] = {"images": len(index), "pack_write_s": pack_s, "results": results}
            base = {(r["workers"], "ssd preset" in r["variant"]): r["samples_per_s"]
                    for r in results if r["variant"].startswith("reference")}
            for r in results:
                ssd = "ssd preset" in r["variant"] or "ssd recipe" in r["variant"]
                r["vs_reference"] = r["samples_per_s"] / base[(r["workers"], ssd)]
                rows.append((f"{set_name:<9} w{r['workers']} {r['variant']}",
                             f"{r['samples_per_s']:7.1f} samples/s  ({r['min']:.1f}-{r['max']:.1f})  "
                             f"x{r['vs_reference']:.2f} vs reference {'ssd' if ssd else 'ssdlite'}"))
    doc["op_profile_500x375"] = op_profile()
    for name, row in doc["op_profile_500x375"].items():
        rows.append((f"op {name} (500x375)", f"uint8 tensor {row['uint8_tensor_ms']:.1f} ms  PIL {row['pil_ms']:.1f} ms"))
    write("data_pipeline", doc, rows)


if __name__ == "__main__":
    main()
