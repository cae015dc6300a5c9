"""Does `boxforge audit` find label mistakes? Plant known ones in real datasets and count how many it ranks first.

    python bench/audit.py                          # raccoon and microcontroller, 15 minutes each
    python bench/audit.py --sets raccoon --minutes 2 --quick
    python bench/audit.py --keep runs/audit-bench        # keep the planted sets, fold models and predictions
    python bench/audit.py --rescore runs/audit-bench     # rank those predictions again with the current rules

The planted-set recipe, with a seed, on every image of the set (its train and test images together):
delete 10% of the boxes (`missing_box`), shift 10% along x or y until their IoU with the truth is 0.3-0.6
(`bad_box`), add a box on nothing (IoU < 0.1 with every box, 10-30% of the image side) to 5% of the images
(`spurious_box`), and on a set of several classes give 10% of the boxes another class (`wrong_class`); no box
gets two mistakes. The planted set is written as a VOC folder and audited with the product's own command
(`boxforge audit DATA --time M`, its defaults otherwise), on 2 cores, one set at a time. The fold models never see
the labels they judge, so a change to the ranking rules alone is measured on the same predictions with
--rescore (no training; the JSON says `"rescored": true`).

A planted mistake is found by a suggestion of its kind on its object: a missing box by a `missing_box` whose
suggested box has IoU >= 0.5 with the deleted box; the others by an issue of their kind on the planted label
(its box, IoU > 0.99). recall@N: the share of planted mistakes found in the top N suggestions, N = the
number planted, and at 2N; precision@N: the share of the top N that is a planted mistake of any kind (real
mistakes in the original labels count against it). Baselines from the same run: the same suggestions in a
random order, and what users do by hand today, the images with the highest training loss (each image's loss
under its own fold model, with the planted labels), where reviewing an image finds every mistake in it: at N and
2N images (a generous measure: an image holds several boxes), and at as many images as the audit's top N and
2N suggestions touch (the same review effort in images).

Scoring rules compared at the image level, on the same out-of-fold predictions and the same review effort
(as many images as the audit's top N and 2N suggestions touch): the audit's own per-image score
(`issues.json` "images"), cleanlab's object-detection label quality score
(`cleanlab.object_detection.rank.get_label_quality_scores`, lowest first; a benchmark-only package, not a
dependency of boxforge), and the highest training loss.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"raccoon": SHARED / "raccoon", "microcontroller": SHARED / "microcontroller"}
RATES = {"missing_box": 0.10, "bad_box": 0.10, "spurious_box": 0.05, "wrong_class": 0.10}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    from boxforge.evaluation.errors import _iou

    return float(_iou(np.asarray(a, float).reshape(1, 4), np.asarray(b, float).reshape(1, 4))[0, 0])


def _shifted(box: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    """`box` moved along one axis so that its IoU with itself falls in 0.3-0.6, inside the image; None if it cannot."""
    target = rng.uniform(0.3, 0.6)
    fraction = (1 - target) / (1 + target)  # a shift of f of the side gives IoU (1 - f) / (1 + f)
    for axis in rng.permutation(2):
        side = box[2 + axis] - box[axis]
        for sign in rng.permutation([-1, 1]):
            moved = box.copy()
            moved[[axis, 2 + axis]] += sign * fraction * side
            limit = width if axis == 0 else height
            if moved[axis] >= 0 and moved[2 + axis] <= limit:
                return moved
    return None


def plant(index: Any, seed: int) -> tuple[Any, list[dict[str, Any]]]:
    """A copy of `index` with the mistakes of the module docstring, and the list of what was planted."""
    rng = np.random.default_rng(seed)
    bad = copy.deepcopy(index)
    objects = [(i, g) for i, s in enumerate(bad.samples) for g in range(s.num_objects)]
    order = rng.permutation(len(objects))
    kinds = ["missing_box", "bad_box"] + (["wrong_class"] if len(index.classes) > 1 else [])
    counts = {k: int(round(RATES[k] * len(objects))) for k in kinds}
    planted, drop = [], set()
    cursor = 0
    for kind in kinds:
        done = 0
        while done < counts[kind] and cursor < len(order):
            i, g = objects[order[cursor]]
            cursor += 1
            s = bad.samples[i]
            if kind == "missing_box":
                drop.add((i, g))
                planted.append({"image": s.image_id, "kind": kind, "box": s.boxes[g].tolist()})
            elif kind == "bad_box":
                moved = _shifted(s.boxes[g].astype(float), rng, s.width, s.height)
                if moved is None:
                    continue
                s.boxes[g] = moved
                planted.append({"image": s.image_id, "kind": kind, "box": moved.tolist()})
            else:
                s.labels[g] = (s.labels[g] + rng.integers(1, len(index.classes))) % len(index.classes)
                planted.append({"image": s.image_id, "kind": kind, "box": s.boxes[g].tolist(),
                                "truth": index.classes[int(index.samples[i].labels[g])]})
            done += 1
    for i in rng.permutation(len(bad.samples))[:int(round(RATES["spurious_box"] * len(bad.samples)))]:
        s = bad.samples[i]
        box = _empty_place(s, rng)
        if box is not None:
            s.boxes = np.concatenate([s.boxes, [box]])
            s.labels = np.concatenate([s.labels, [rng.integers(len(index.classes))]])
            s.difficult, s.truncated = np.concatenate([s.difficult, [False]]), np.concatenate([s.truncated, [False]])
            planted.append({"image": s.image_id, "kind": "spurious_box", "box": list(map(float, box))})
    for i, s in enumerate(bad.samples):
        keep = np.array([(i, g) not in drop for g in range(s.num_objects)], dtype=bool)
        s.boxes, s.labels, s.difficult, s.truncated = s.boxes[keep], s.labels[keep], s.difficult[keep], s.truncated[keep]
        s.__post_init__()
    return bad, planted


def _empty_place(s: Any, rng: np.random.Generator) -> list[float] | None:
    for _ in range(50):
        side = rng.uniform(0.1, 0.3) * min(s.width, s.height)
        x, y = rng.uniform(0, s.width - side), rng.uniform(0, s.height - side)
        box = [x, y, x + side, y + side]
        if all(iou(box, b) < 0.1 for b in s.boxes):
            return box
    return None


def found_by(issue: dict[str, Any], mistake: dict[str, Any]) -> bool:
    if issue["image"] != mistake["image"] or issue["kind"] != mistake["kind"]:
        return False
    if mistake["kind"] == "missing_box":
        return iou(issue["suggested_box"], mistake["box"]) >= 0.5
    return iou(issue["label_box"], mistake["box"]) > 0.99


def on_a_mistake(issue: dict[str, Any], planted: list[dict[str, Any]]) -> bool:
    for m in planted:
        if issue["image"] != m["image"]:
            continue
        box = issue["suggested_box"] if issue["kind"] == "missing_box" else issue["label_box"]
        if box is not None and iou(box, m["box"]) >= (0.5 if m["kind"] == "missing_box" else 0.99):
            return True
    return False


def scores(ranked: list[dict[str, Any]], planted: list[dict[str, Any]]) -> dict[str, Any]:
    """recall@N, recall@2N (overall and per kind) and precision@N of a ranked suggestion list."""
    n = len(planted)
    out: dict[str, Any] = {}
    for label, top in (("recall_at_n", ranked[:n]), ("recall_at_2n", ranked[:2 * n])):
        hits = [any(found_by(i, m) for i in top) for m in planted]
        out[label] = float(np.mean(hits)) if hits else float("nan")
        out[f"{label}_per_kind"] = {k: float(np.mean([h for h, m in zip(hits, planted) if m["kind"] == k]))
                                    for k in sorted({m["kind"] for m in planted})}
    out["precision_at_n"] = float(np.mean([on_a_mistake(i, planted) for i in ranked[:n]])) if n else float("nan")
    return out


def image_loss_ranking(index: Any, audit_dir: Path, folds: np.ndarray) -> list[str]:
    """Images ordered by their training loss under their own fold model (highest first)."""
    import torch

    from boxforge.data.loading import DetectionDataset
    from boxforge.data.transforms import detection_transforms
    from boxforge.inference.load import load_detector

    losses: dict[str, float] = {}
    for k in range(int(folds.max()) + 1):
        model, _ = load_detector(audit_dir / "folds" / f"fold-{k}" / "last.pt", "cpu")
        held = index.subset(np.flatnonzero(folds == k))
        dataset = DetectionDataset(held, detection_transforms(False, model.img_size))
        model.train()
        for module in model.modules():  # loss in train mode, but BatchNorm with its running statistics
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        with torch.no_grad():
            for j in range(len(dataset)):
                image, target = dataset[j]
                loss = model([image.as_subclass(torch.Tensor)], [target])
                losses[target["image_id"]] = float(sum(loss.values()))
    return sorted(losses, key=lambda image: -losses[image])


def oof_predictions(index: Any, audit_dir: Path) -> Any:
    """The audit's own out-of-fold predictions, every fold's file merged (labels index `index.classes`)."""
    from boxforge.evaluation.predictions import Predictions, load_predictions

    merged = Predictions(list(index.classes))
    for path in sorted((audit_dir / "folds").glob("fold-*/predictions.json")):
        for image_id, p in load_predictions(path, index).images.items():
            merged.add(image_id, p.boxes, p.scores, p.labels)
    return merged


def cleanlab_ranking(index: Any, preds: Any) -> list[str] | str:
    """Images by cleanlab's object-detection label quality (lowest first), from the same out-of-fold
    predictions as the audit; or why it could not run (cleanlab is a benchmark-only package)."""
    try:
        from cleanlab.object_detection.rank import get_label_quality_scores
    except ImportError as exc:
        return f"not run: {exc} (pip install cleanlab)"
    labels, predictions = [], []
    for s in index.samples:
        labels.append({"bboxes": np.asarray(s.boxes, float).reshape(-1, 4), "labels": np.asarray(s.labels, int)})
        p = preds.images.get(s.image_id)
        per_class = []
        for c in range(len(index.classes)):
            if p is None or not len(p):
                per_class.append(np.zeros((0, 5), np.float32))
                continue
            keep = p.labels == c
            per_class.append(np.concatenate([p.boxes[keep], p.scores[keep, None]], axis=1).astype(np.float32))
        predictions.append(per_class)
    quality = get_label_quality_scores(labels, predictions)
    return [index.samples[i].image_id for i in np.argsort(quality, kind="stable")]


def image_review(ranking: list[str], planted: list[dict[str, Any]], efforts: dict[str, int]) -> dict[str, Any]:
    """Recall when a person reviews the first images of `ranking` and finds every mistake in them."""
    return {label: float(np.mean([m["image"] in set(ranking[:top]) for m in planted])) for label, top in efforts.items()}


def run_set(name: str, minutes: float, seed: int, tmp: Path, flags: list[str], rescore: bool = False) -> dict[str, Any]:
    """Plant, audit (or, with `rescore`, rank the out-of-fold predictions an earlier run kept in `tmp` again with
    the current rules, no training), and score the ranking against the planted mistakes and the baselines."""
    from boxforge.audit.folds import plan_folds
    from boxforge.audit.rank import rank_issues
    from boxforge.data.convert import convert
    from boxforge.data.formats.detect import load_dataset

    index = load_dataset(SETS[name])
    bad, planted = plant(index, seed)
    data = tmp / f"{name}-planted"
    out = tmp / f"{name}-audit"
    if rescore:
        if not (out / "issues.json").is_file():
            raise SystemExit(f"--rescore: {out} holds no audit (run with --keep {tmp} first)")
        audited = load_dataset(data)
        written = json.loads((out / "issues.json").read_text())
        issues_found, image_scores, written["confident"] = rank_issues(audited, oof_predictions(audited, out))
        written["issues"] = [i.to_json() for i in issues_found]
        written["images"] = image_scores
    else:
        convert(bad, data, "voc")
        cmd = [sys.executable, "-m", "boxforge", "audit", str(data), "--out", str(out), "--time", str(minutes),
               "--seed", str(seed), *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
        written = json.loads((out / "issues.json").read_text())
        audited = load_dataset(data)
    issues = written["issues"]
    rng = np.random.default_rng(seed)
    shuffled = [issues[i] for i in rng.permutation(len(issues))]
    folds = plan_folds(len(audited), minutes, seed=seed).folds
    by_loss = image_loss_ranking(audited, out, folds)
    n = len(planted)
    loss_hits = {label: float(np.mean([m["image"] in set(by_loss[:top]) for m in planted]))
                 for label, top in (("recall_at_n", n), ("recall_at_2n", 2 * n))}
    for label, top in (("same_images_as_top_n", n), ("same_images_as_top_2n", 2 * n)):
        touched = len({i["image"] for i in issues[:top]})  # the review effort of the audit's top suggestions
        loss_hits[label] = float(np.mean([m["image"] in set(by_loss[:touched]) for m in planted]))
        loss_hits[f"{label}_images"] = touched
    # Image-level rules on the same out-of-fold predictions and the same review effort (images looked at):
    # the audit's per-image score against cleanlab's label quality score (the library the issue names).
    efforts = {f"at_{loss_hits['same_images_as_top_n_images']}_images": loss_hits["same_images_as_top_n_images"],
               f"at_{loss_hits['same_images_as_top_2n_images']}_images": loss_hits["same_images_as_top_2n_images"]}
    by_audit = [entry["image"] for entry in written["images"]]
    by_cleanlab = cleanlab_ranking(audited, oof_predictions(audited, out))
    images_compared = {"audit_image_score": image_review(by_audit, planted, efforts),
                       "cleanlab_label_quality": (image_review(by_cleanlab, planted, efforts)
                                                  if isinstance(by_cleanlab, list) else by_cleanlab),
                       "highest_loss": image_review(by_loss, planted, efforts)}
    counts = {k: sum(m["kind"] == k for m in planted) for k in RATES}
    return {"flags": flags, "images": len(index), "objects": index.num_objects, "classes": len(index.classes),
            "planted": counts, "planted_total": n, "suggestions": len(issues), "minutes": minutes,
            "rescored": rescore, "audit": scores(issues, planted), "random_order": scores(shuffled, planted),
            "image_loss_baseline": loss_hits, "images_reviewed": images_compared, "plan": written["plan"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=sorted(SETS))
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: results go to audit-quick.json")
    ap.add_argument("--flags", default="", help="more `boxforge audit` options for the fold models, one string "
                    "(e.g. '--model yolo_efficientnet_lite0 --weights-backbone IMAGENET1K')")
    ap.add_argument("--tag", help="write audit-TAG.json instead of audit.json (a variant beside the default run)")
    ap.add_argument("--rescore", type=Path, metavar="DIR", help="rank the out-of-fold predictions kept in DIR "
                    "(an earlier --keep DIR) again with the current rules; no training")
    ap.add_argument("--keep", type=Path, help="keep the planted sets and audit folders here (default: a temporary "
                    "folder); a later --rescore DIR ranks their saved out-of-fold predictions again without training")
    args = ap.parse_args()
    doc: dict[str, Any] = {"recipe": {"rates": RATES, "bad_box_iou": [0.3, 0.6], "seed": args.seed}, "sets": {}}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.rescore or args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for name in args.sets:
            result = run_set(name, args.minutes, args.seed, tmp, args.flags.split(), rescore=args.rescore is not None)
            doc["sets"][name] = result
            a, r, b = result["audit"], result["random_order"], result["image_loss_baseline"]
            rows.append((f"{name}: {result['planted_total']} planted, recall@N / @2N, precision@N",
                         f"audit {a['recall_at_n']:.2f} / {a['recall_at_2n']:.2f}, {a['precision_at_n']:.2f}; "
                         f"random order {r['recall_at_n']:.2f} / {r['recall_at_2n']:.2f}; "
                         f"highest-loss images {b['recall_at_n']:.2f} / {b['recall_at_2n']:.2f} (at the audit's "
                         f"{b['same_images_as_top_n_images']} / {b['same_images_as_top_2n_images']} images: "
                         f"{b['same_images_as_top_n']:.2f} / {b['same_images_as_top_2n']:.2f})"))
            rows.append((f"{name}: recall@2N per kind", ", ".join(f"{k} {v:.2f}" for k, v in
                                                                 a["recall_at_2n_per_kind"].items())))
            rows.append((f"{name}: images reviewed in score order, recall",
                         "; ".join(f"{rule} " + (", ".join(f"{k} {v:.2f}" for k, v in r.items()) if isinstance(r, dict)
                                                 else r) for rule, r in result["images_reviewed"].items())))
            print(*rows[-3:], sep="\n", flush=True)
    write("audit-quick" if args.quick else f"audit-{args.tag}" if args.tag else "audit", doc, rows)


if __name__ == "__main__":
    main()
