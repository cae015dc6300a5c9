"""Accuracy on every kind of dataset: boxforge's default against the Ultralytics nano models, seeds against seeds.

    python bench/accuracy_suite.py prepare                  # the derived sets, deterministic (~1 min)
    python bench/accuracy_suite.py run [--sets S ...] [--who W ...] [--seeds 0 1 2] [--minutes 15] [--shard K/N]
    python bench/accuracy_suite.py report                   # bench/results/accuracy_suite.json and a table
    python bench/accuracy_suite.py archive                  # file an older runs/ folder's jobs (run does it itself)

Sets (SETS; each trained on its train split and scored on its own held-out split):
  raccoon            ../shared/datasets/raccoon, official train.txt / test.txt (large objects, one class)
  microcontroller_fK ../shared/datasets/microcontroller, train/ and test/ pooled (149 photos, four classes) and
                     split into 5 seeded folds (its own 7-image test split is too small); K = 0..4, reported
                     as the mean over folds
  dense_synth        `boxforge synth --objects 20:40 --object-size 0.03:0.1` (many small shapes per image)
  dense_tiles        5 x 5 mosaics of the shared photos (raccoon and microcontroller), each photo shrunk into
                     a cell: real texture, many small objects, five classes; train tiles from train photos only,
                     test tiles from test photos only (no photo on both sides)

Who (WHO): `boxforge` is `boxforge train --data D --split TRAIN --val TEST --time M --seed S`, nothing else
(bench/accuracy.py's convention; last.pt scored, not best.pt, since the only held-out split is the test
split); `boxforge_pretrained` adds the offline pretrained start (`--model yolo_efficientnet_lite0
--weights-backbone IMAGENET1K`) and `ssdlite_pretrained` is its peer on the same backbone weights (`--model
ssdlite_efficientnet_lite0 --weights-backbone IMAGENET1K`). The Ultralytics peers `yolov8n` and `yolo26n` are Ultralytics' own yaml models from
scratch at imgsz 320 with its defaults and the same `time` budget, run as an external program (AGPL-3.0: never
imported by boxforge; install it apart, e.g. `pip install --target /tmp/ulsite --no-deps ultralytics
ultralytics-thop opencv-python-headless requests polars`, and pass --ultralytics /tmp/ulsite). Every job
writes its test-split predictions in boxforge's predictions format, so `report` scores all of them with
the same evaluator and runs the paired bootstrap over test images (COMPARISONS: the default against the
strongest Ultralytics peer of the set, the pretrained start against the default and against ssdlite_pretrained):
per resample, each side's metric is the mean over its seeds; P(better) is the share of resamples in which
ours beats theirs.

Levers (LEVERS; run only when named in --who): a runner's arguments with one setting changed, archived and
reported like the others and compared with the runner it varies (`LEVER_vs_BASE` in the report), so a
candidate default is measured on every set, seeds against seeds, before it becomes one.

Every finished job is also archived in bench/results/accuracy_suite_jobs/SET/WHO-sSEED.json.gz (committed;
bench/suite_archive.py), and `report` (bench/suite_report.py) reads the archive beside runs/, so seeds run in
different sessions or on different machines add up to one table; a set or a runner with no job archived keeps
its entry of the previous report, marked `from_report_of`, and a comparison is made only where both sides'
predictions are found. `archive` files the jobs of an older runs/ folder. Jobs are independent and resumable (a finished job's result.json is kept, and
an archived job is not run again unless --redo): `--shard K/N` runs every N-th
job from the K-th, so several sessions or machines can share the suite (4 sets x 5 runners x 3 seeds at 15
minutes is 15 CPU-hours with the microcontroller folds counted once; each fold is a job of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_archive import archive_job, archive_path, refile  # noqa: E402
from common import RESULTS  # noqa: E402
from suite_report import markdown, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
WORK = ROOT / "runs" / "accuracy-suite"
DATA = WORK / "data"
FOLDS = 5
PEER_IMGSZ = 320
WHO = {"boxforge": [], "boxforge_pretrained": ["--model", "yolo_efficientnet_lite0", "--weights-backbone", "IMAGENET1K"],
       "ssdlite_pretrained": ["--model", "ssdlite_efficientnet_lite0", "--weights-backbone", "IMAGENET1K"],
       "yolov8n": "yolov8n.yaml", "yolo26n": "yolo26n.yaml"}
PEERS = ("yolov8n", "yolo26n")
# lever runner -> (the runner it varies, the arguments it adds). boxforge_img608 / boxforge_img640: the default's
# input size on dense_synth / dense_tiles before --img-size auto was capped at the images' own size (it now
# chooses 352 / 416 there; on the other sets it is already below their size); boxforge_img320: a size below that
# cap on dense_synth. boxforge_pretrained_img320: the pretrained start's fixed size before its recipe took
# --img-size auto. Jobs run under an earlier default are refiled (`refile`) under the lever that names their
# setting, with the reason kept in the result.
LEVERS: dict[str, tuple[str, list[str]]] = {
    "boxforge_img608": ("boxforge", ["--img-size", "608"]),
    "boxforge_img640": ("boxforge", ["--img-size", "640"]),
    "boxforge_img320": ("boxforge", ["--img-size", "320"]),
    "boxforge_pretrained_img320": ("boxforge_pretrained", ["--img-size", "320"])}
RUNNERS = tuple(WHO)  # what `run` runs by default: the levers only when asked for
WHO.update({lever: [*WHO[base], *extra] for lever, (base, extra) in LEVERS.items()})


def sets() -> dict[str, tuple[Path, str, str]]:
    """name -> (DATA, train split, test split), as `boxforge train --split/--val` and `load_dataset` take them."""
    out = {"raccoon": (SHARED / "raccoon", "train", "test")}
    for k in range(FOLDS):
        folds = DATA / "microcontroller" / "folds"
        out[f"microcontroller_f{k}"] = (DATA / "microcontroller", str(folds / f"f{k}-train.txt"),
                                        str(folds / f"f{k}-test.txt"))
    out["dense_synth"] = (DATA / "dense_synth", "train", "test")
    out["dense_tiles"] = (DATA / "dense_tiles", "train", "test")
    return out


# ---- prepare -------------------------------------------------------------------------------------------------

def prepare() -> None:
    """Write the derived sets under runs/accuracy-suite/data (deterministic; rerun replaces them)."""
    import boxforge

    DATA.mkdir(parents=True, exist_ok=True)
    for name in sets():  # results on a previous build of a derived set would be scored against the new one
        if name != "raccoon" and (WORK / name).is_dir():
            shutil.rmtree(WORK / name)
            print(f"removed the earlier results of {name} (runs/accuracy-suite/{name})")
    _pool_microcontroller(DATA / "microcontroller")
    boxforge.synth(DATA / "dense_synth", images=400, classes=3, seed=0, objects=(20, 40), object_size=(0.03, 0.1))
    _tiles(DATA / "dense_tiles")
    for name, (data, train, test) in sets().items():
        n_train, n_test = (len(boxforge.load_dataset(str(data), split=s)) for s in (train, test))
        print(f"{name}: {data} train {n_train} images, test {n_test}")


def _pool_microcontroller(out: Path) -> None:
    """train/ + test/ copied into one folder (XML beside each photo) and 5 seeded folds of its image ids."""
    from boxforge.data.formats.detect import load_dataset

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source = SHARED / "microcontroller"
    for part in ("train", "test"):
        for f in sorted((source / part).iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".xml"):
                shutil.copy2(f, out / f.name)
    ids = sorted(s.image_id for s in load_dataset(str(out)).samples)
    order = np.random.default_rng(0).permutation(len(ids))
    (out / "folds").mkdir()
    for k in range(FOLDS):
        test = sorted(ids[i] for i in order[k::FOLDS])
        train = sorted(set(ids) - set(test))
        (out / "folds" / f"f{k}-train.txt").write_text("".join(f"{i}\n" for i in train))
        (out / "folds" / f"f{k}-test.txt").write_text("".join(f"{i}\n" for i in test))


def _tiles(out: Path, grid: int = 5, cell: int = 80, train_tiles: int = 240, test_tiles: int = 60) -> None:
    """5 x 5 mosaics of the shared photos, each shrunk to fit its cell (aspect kept, centred on grey), boxes
    scaled with it; a VOC root with train/test lists. Photos of a tile come from one side of the source split."""
    from PIL import Image

    from boxforge.data.formats.detect import load_dataset
    from boxforge.data.formats.voc import write_voc_annotation
    from boxforge.data.index import Sample

    if out.exists():
        shutil.rmtree(out)
    pools: dict[str, list[Any]] = {"train": [], "test": []}
    for side in ("train", "test"):
        pools[side] += [(s, "raccoon") for s in load_dataset(str(SHARED / "raccoon"), split=side).samples]
        micro = load_dataset(str(SHARED / "microcontroller" / side))
        pools[side] += [(s, micro.classes) for s in micro.samples]
    classes = ["raccoon", *load_dataset(str(SHARED / "microcontroller" / "train")).classes]
    rng = np.random.default_rng(0)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for side, count in (("train", train_tiles), ("test", test_tiles)):
        pool = pools[side]
        for t in range(count):
            canvas = Image.new("RGB", (grid * cell, grid * cell), (114, 114, 114))
            boxes, labels = [], []
            for j, pick in enumerate(rng.choice(len(pool), size=grid * grid, replace=len(pool) < grid * grid)):
                sample, names = pool[int(pick)]
                with Image.open(sample.image_path) as im:
                    photo = im.convert("RGB")
                scale = cell / max(photo.size)
                w, h = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
                x0, y0 = (j % grid) * cell + (cell - w) // 2, (j // grid) * cell + (cell - h) // 2
                canvas.paste(photo.resize((w, h), Image.Resampling.BILINEAR), (x0, y0))
                for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
                    b = [x0 + box[0] * scale, y0 + box[1] * scale, x0 + box[2] * scale, y0 + box[3] * scale]
                    if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
                        boxes.append(b)
                        labels.append(classes.index("raccoon" if names == "raccoon" else names[label]))
            image_id = f"{side}_{t:04d}"
            path = out / "JPEGImages" / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(path, quality=92)
            write_voc_annotation(out / "Annotations" / f"{image_id}.xml",
                                 Sample(image_id, path, width=canvas.width, height=canvas.height,
                                        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                                        labels=np.asarray(labels, np.int64)), classes)
            splits[side].append(image_id)
    for side, ids in splits.items():
        (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (out / "ImageSets" / "Main" / f"{side}.txt").write_text("".join(f"{i}\n" for i in ids))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))


# ---- run -----------------------------------------------------------------------------------------------------

def jobs(set_names: list[str], who: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    return [(s, w, seed) for s in set_names for w in who for seed in seeds]


def job_dir(set_name: str, who: str, seed: int) -> Path:
    return WORK / set_name / f"{who}-s{seed}"


def run_job(set_name: str, who: str, seed: int, minutes: float, ultralytics: str | None) -> dict[str, Any]:
    data, train, test = sets()[set_name]
    out = job_dir(set_name, who, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    if who in PEERS:
        if not ultralytics:
            raise SystemExit(f"{who}: a peer run needs --ultralytics SITE_PACKAGES (see the module docstring)")
        env = {**os.environ, "PYTHONPATH": ultralytics}
        cmd = [sys.executable, __file__, "_peer", "--set", set_name, "--yaml", WHO[who], "--minutes", str(minutes),
               "--seed", str(seed), "--out", str(out)]
        done = subprocess.run(cmd, text=True, capture_output=True, env=env)
        if done.returncode:
            raise SystemExit(f"[{set_name} {who} s{seed}] failed:\n{done.stderr[-3000:]}")
        extra = json.loads((out / "peer.json").read_text())
    else:
        cmd = [sys.executable, "-m", "boxforge", "train", "--data", str(data), "--split", train, "--val", test,
               "--time", str(minutes), "--seed", str(seed), "--out", str(out / "run"), *WHO[who]]
        done = subprocess.run(cmd, text=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode:
            raise SystemExit(f"[{set_name} {who} s{seed}] failed:\n{done.stderr[-3000:]}")
        rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = [r for r in rows if "img_per_s" in r]
        extra = {"img_per_s": round(steps[-1]["img_per_s"], 1) if steps else None,
                 "images_seen": steps[-1].get("images_seen") if steps else None,
                 "img_size": _our_predictions(out / "run" / "last.pt", data, test, out / "predictions.json")}
    result = {"set": set_name, "who": who, "seed": seed, "minutes": minutes, "wall_s": round(time.perf_counter() - start),
              "predictions": "predictions.json", **extra, "metrics": score(data, test, out / "predictions.json")}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _our_predictions(weights: Path, data: Path, test: str, path: Path) -> int | None:
    """Write the test split's predictions of `weights`; return the input size it was trained at (--img-size
    auto's choice is known only here)."""
    from boxforge.data.formats.detect import load_dataset
    from boxforge.evaluation.predictions import save_predictions
    from boxforge.inference.evaluate import model_predictions
    from boxforge.inference.load import load_model

    index = load_dataset(str(data), split=test)
    loaded = load_model(weights, "cpu")
    preds, _, _ = model_predictions(index, loaded.backend)
    save_predictions(preds, index.classes, path)
    return (loaded.state or {}).get("build_args", {}).get("img_size")


def score(data: Path, test: str, predictions: Path) -> dict[str, Any]:
    """COCO AP, AP50, AP75, APs, VOC12 mAP and per-class COCO AP of a predictions file on the test split."""
    import contextlib
    import io

    from boxforge.data.formats.detect import load_dataset
    from boxforge.evaluation import evaluate_detections
    from boxforge.evaluation.predictions import load_predictions

    index = load_dataset(str(data), split=test)
    preds = load_predictions(predictions, index)
    with contextlib.redirect_stdout(io.StringIO()):
        res = evaluate_detections(index, preds, ("voc12", "coco"))
    stats = res["coco"]["stats"]
    per_class = res["coco"].get("per_class", {})
    return {"coco_ap": float(stats[0]), "coco_ap50": float(stats[1]), "coco_ap75": float(stats[2]),
            "coco_aps": float(stats[3]), "voc12": float(res["voc12"]["map"]),
            "per_class_coco_ap": {k: (float(v) if v == v else None) for k, v in per_class.items()},
            "test_images": len(index.samples)}


def peer(set_name: str, yaml: str, minutes: float, seed: int, out: Path) -> None:
    """(runs under PYTHONPATH=ultralytics) convert the set to YOLO, train the yaml from scratch, predict the test
    split at the benchmark convention (score >= 0.001, <= 100 per image) into boxforge's predictions format."""
    import csv

    from ultralytics import YOLO

    from boxforge.data.formats.detect import load_dataset
    from boxforge.evaluation.predictions import Predictions, save_predictions

    data, train, test = sets()[set_name]
    yolo = out / "yolo-data"
    for name, split in (("train", train), ("test", test)):
        subprocess.run([sys.executable, "-m", "boxforge", "convert", str(data), str(yolo / name), "--to", "yolo",
                        "--split", split], check=True, capture_output=True)
    classes = load_dataset(str(data), split=test).classes
    names = "".join(f"  {i}: {json.dumps(c)}\n" for i, c in enumerate(classes))
    (yolo / "data.yaml").write_text(f"path: {yolo.resolve()}\ntrain: train/images\nval: test/images\nnames:\n{names}")
    start = time.perf_counter()
    # plots=False: its plots fetch a font from the internet, which this machine cannot reach
    YOLO(yaml).train(data=str(yolo / "data.yaml"), imgsz=PEER_IMGSZ, time=minutes / 60, device="cpu", workers=2,
                     plots=False, project=str(out.resolve()), name="train", exist_ok=True, seed=seed, verbose=False)
    train_s = time.perf_counter() - start
    epochs = sum(1 for _ in csv.reader((out / "train" / "results.csv").open())) - 1
    n_train = len(load_dataset(str(data), split=train))
    index = load_dataset(str(data), split=test)
    model = YOLO(str(out / "train" / "weights" / "last.pt"))
    preds = Predictions(list(index.classes))
    for sample in index.samples:
        (result,) = model.predict(source=str(sample.image_path), imgsz=PEER_IMGSZ, conf=0.001, iou=0.7, max_det=100,
                                  device="cpu", verbose=False)
        b = result.boxes
        preds.add(sample.image_id, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64))
    save_predictions(preds, index.classes, out / "predictions.json")
    import ultralytics

    (out / "peer.json").write_text(json.dumps({"epochs": epochs, "images_seen": epochs * n_train,
                                               "img_per_s": round(epochs * n_train / train_s, 1),
                                               "img_size": PEER_IMGSZ, "ultralytics": ultralytics.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("run")
    r.add_argument("--sets", nargs="+", default=list(sets()))
    r.add_argument("--who", nargs="+", default=list(RUNNERS), choices=list(WHO),
                   help=f"runners (default: {' '.join(RUNNERS)}; levers: {' '.join(LEVERS)})")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--minutes", type=float, default=15.0)
    r.add_argument("--shard", default="0/1", metavar="K/N")
    r.add_argument("--ultralytics", help="a site-packages folder holding ultralytics (for the peers)")
    r.add_argument("--redo", action="store_true", help="rerun jobs that already have a result.json")
    p = sub.add_parser("_peer")
    p.add_argument("--set", required=True)
    p.add_argument("--yaml", required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    sub.add_parser("archive", help="file every finished job of runs/accuracy-suite in "
                   "bench/results/accuracy_suite_jobs")
    f = sub.add_parser("refile", help="file an archived job under another runner's name (a default changed)")
    f.add_argument("set")
    f.add_argument("who")
    f.add_argument("seed", type=int)
    f.add_argument("new_who", choices=list(WHO))
    f.add_argument("--why", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--repeats", type=int, default=200)
    rep.add_argument("--markdown", action="store_true",
                     help="print the README's tables from bench/results/accuracy_suite.json, scoring nothing")
    args = ap.parse_args()
    if args.command == "prepare":
        prepare()
    elif args.command == "_peer":
        peer(args.set, args.yaml, args.minutes, args.seed, args.out)
    elif args.command == "report" and args.markdown:
        print(markdown(json.loads((RESULTS / "accuracy_suite.json").read_text())), end="")
    elif args.command == "report":
        report(args.repeats, WORK, sets(), PEERS, levers={lever: base for lever, (base, _) in LEVERS.items()})
    elif args.command == "refile":
        print(f"refiled as {refile(args.set, args.who, args.seed, args.new_who, args.why)}")
    elif args.command == "archive":
        for path in sorted(WORK.glob("*/*/result.json")):
            print(f"archived {archive_job(json.loads(path.read_text()), path.parent)}")
    else:
        unknown = sorted(set(args.sets) - set(sets()))
        if unknown:
            raise SystemExit(f"--sets {unknown[0]}: choose from {', '.join(sets())}")
        k, n = (int(x) for x in args.shard.split("/"))
        todo = jobs(args.sets, args.who, args.seeds)[k::n]
        for set_name, who, seed in todo:
            if not args.redo and ((job_dir(set_name, who, seed) / "result.json").exists()
                                  or archive_path(set_name, who, seed).exists()):
                print(f"[{set_name} {who} s{seed}] done already", flush=True)
                continue
            result = run_job(set_name, who, seed, args.minutes, args.ultralytics)
            archive_job(result, job_dir(set_name, who, seed))
            m = result["metrics"]
            print(f"[{set_name} {who} s{seed}] COCO AP {m['coco_ap']:.3f} VOC12 {m['voc12']:.3f} "
                  f"({result.get('img_per_s')} img/s, {result['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
