"""Dataset layouts built the way their owners publish them, for the split-policy and reader tests.

Each builder writes tiny images with distinct content (so a content comparison can tell them apart)
and annotation files in the publisher's own shape: VOCdevkit with VOC2007 (train, val, trainval,
test and per-class lists) and VOC2012 (no test), COCO2017 folders, a YOLO data.yaml with three
keys, a darknet obj.data, a Roboflow VOC export (train/ valid/ test/ folders), a VOC root with all
four lists. Not written by boxforge's own writer, so a reader is tested against the layout itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

VOC_NAMES = ("cat", "dog", "person")


def jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A small JPEG whose pixels depend on `seed` (distinct files have distinct bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def devkit_xml(folder: str, filename: str, size: tuple[int, int], objects: list[tuple[str, float, float, float, float]]) -> str:
    """An annotation as the VOC devkit writes one (source, owner, pose, truncated, difficult, 1-based pixels)."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x1:g}</xmin><ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>{folder}</folder><filename>{filename}</filename><source><database>The VOC Database"
            f"</database><annotation>PASCAL VOC</annotation><image>flickr</image></source><owner><name>?</name></owner>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objs}</annotation>")


def _voc_year(root: Path, year: str, ids: list[str], lists: dict[str, list[str]], seed: int) -> Path:
    """One year of a VOCdevkit: JPEGImages, Annotations, ImageSets/Main (+ per-class lists), Segmentation."""
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(f"{ids[0]}\n")
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for n, image_id in enumerate(ids):
        jpeg(root / "JPEGImages" / f"{image_id}.jpg", seed + n)
        name = VOC_NAMES[n % len(VOC_NAMES)]
        other = VOC_NAMES[(n + 1) % len(VOC_NAMES)]
        objects = [(name, 5 + n % 7, 6, 40, 40), (other, 20.5, 10, 60, 44)]
        (root / "Annotations" / f"{image_id}.xml").write_text(devkit_xml(year, f"{image_id}.jpg", (64, 48), objects))
    for split, members in lists.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
        for cls in VOC_NAMES:  # per-class lists: `id  1` / `id -1`, which readers must not take for splits
            (main / f"{cls}_{split}.txt").write_text("".join(f"{i} {1 if n % 3 == 0 else -1}\n"
                                                             for n, i in enumerate(members)))
    return root


def vocdevkit_0712(tmp: Path, n2007: int = 8, n2012: int = 6) -> Path:
    """VOCdevkit/VOC2007 (train, val, trainval, test) and VOCdevkit/VOC2012 (train, val, trainval; no test),
    the layout of the MXNet and MindSpore SSD guides. Returns the VOCdevkit folder."""
    devkit = tmp / "VOCdevkit"
    ids07 = [f"{i:06d}" for i in range(1, n2007 + 1)]
    half = n2007 // 2
    train07, val07, test07 = ids07[: half // 2 + 1], ids07[half // 2 + 1: half], ids07[half:]
    _voc_year(devkit / "VOC2007", "VOC2007", ids07,
              {"train": train07, "val": val07, "trainval": train07 + val07, "test": test07}, seed=100)
    ids12 = [f"2008_{i:06d}" for i in range(1, n2012 + 1)]
    _voc_year(devkit / "VOC2012", "VOC2012", ids12,
              {"train": ids12[: n2012 // 2], "val": ids12[n2012 // 2:], "trainval": ids12}, seed=200)
    return devkit


def voc_four_lists(tmp: Path, n: int = 8) -> Path:
    """A single VOC root with train, val, trainval and test lists (VOC2007 itself, a LabelImg or Roboflow
    VOC project exported with all four)."""
    ids = [f"img{i:03d}" for i in range(n)]
    train, val, test = ids[: n // 2], ids[n // 2: 3 * n // 4], ids[3 * n // 4:]
    return _voc_year(tmp / "voc4", "voc4", ids, {"train": train, "val": val, "trainval": train + val, "test": test},
                     seed=300)


def roboflow_voc(tmp: Path) -> Path:
    """A Roboflow "Pascal VOC" export: train/, valid/, test/ folders, each JPEG with its XML beside it."""
    root = tmp / "roboflow-voc"
    for s, (split, count) in enumerate((("train", 5), ("valid", 2), ("test", 2))):
        for n in range(count):
            name = f"frame_{n:03d}_jpg.rf.{s}{n}abc.jpg"
            jpeg(root / split / name, 400 + 10 * s + n)
            (root / split / name.replace(".jpg", ".xml")).write_text(
                devkit_xml(split, name, (64, 48), [(VOC_NAMES[n % 2], 3.5, 4, 30.25, 40)]))
    return root


def coco2017(tmp: Path, n_train: int = 6, n_val: int = 3) -> Path:
    """COCO2017 as downloaded: annotations/instances_{train,val}2017.json, train2017/, val2017/, gapped ids."""
    root = tmp / "coco"
    categories = [{"supercategory": "animal", "id": 17, "name": "cat"},
                  {"supercategory": "animal", "id": 18, "name": "dog"},
                  {"supercategory": "person", "id": 1, "name": "person"}]
    ann_id = 1000
    for split, count, base in (("train2017", n_train, 9), ("val2017", n_val, 139)):
        images, annotations = [], []
        for n in range(count):
            image_id = base + 37 * n
            name = f"{image_id:012d}.jpg"
            jpeg(root / split / name, image_id)
            images.append({"license": 1, "file_name": name, "coco_url": "", "height": 48, "width": 64,
                           "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": image_id})
            for k, cat in enumerate(categories[: 1 + n % 3]):
                x, y, w, h = 3.17 + 5 * k, 4.02, 20.45, 30.5
                annotations.append({"segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "area": w * h * 0.83,
                                    "iscrowd": 0, "image_id": image_id, "bbox": [x, y, w, h],
                                    "category_id": cat["id"], "id": ann_id})
                ann_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"info": {"description": "COCO 2017 Dataset"}, "licenses": [], "images": images,
             "annotations": annotations, "categories": categories}))
    return root


def _yolo_split(root: Path, split: str, count: int, seed: int) -> None:
    for n in range(count):
        jpeg(root / "images" / split / f"im{n:03d}.jpg", seed + n)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"im{n:03d}.txt").write_text(f"{n % 2} 0.5 0.5 0.4 0.3\n1 0.25 0.3 0.2 0.2\n")


def yolo_yaml_three(tmp: Path) -> Path:
    """An Ultralytics data.yaml with `path`, `train`, `val` and `test` keys and images/labels per split; the
    same file names recur in every split, as in Roboflow's YOLO exports. Returns the data.yaml path."""
    root = tmp / "yolo"
    for split, count, seed in (("train", 5, 500), ("val", 2, 600), ("test", 2, 700)):
        _yolo_split(root, split, count, seed)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\n"
                                    "names:\n  0: cat\n  1: dog\n")
    return root / "data.yaml"


def darknet_obj_data(tmp: Path) -> Path:
    """darknet's obj.data with train, valid and names, list files of image paths. Returns obj.data."""
    root = tmp / "darknet"
    for split, count, seed in (("train", 4, 800), ("valid", 2, 900)):
        for n in range(count):
            jpeg(root / "obj" / f"{split}_{n}.jpg", seed + n)
            (root / "obj" / f"{split}_{n}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
        (root / f"{split}.txt").write_text("".join(f"data/obj/{split}_{n}.jpg\n" for n in range(count)))
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "obj.data").write_text("classes = 2\ntrain = data/train.txt\nvalid = data/valid.txt\n"
                                   "names = data/obj.names\nbackup = backup/\n")
    return root / "obj.data"
