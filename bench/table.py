"""The README performance table, generated from bench/results/*.json.

Writes the markdown between the markers `<!-- bench:start -->` and `<!-- bench:end -->` in
README.md (or prints it with --print). Each row: the figure, boxforge, the baseline measured
in the same run, the ratio, the target and whether it is met. A result file that is missing
is left out, so the table never shows a number that was not measured.

    python bench/table.py [--readme README.md] [--print]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
Row = tuple[str, str, str, str, str]


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _met(flag: bool | None) -> str:
    return "" if flag is None else ("met" if flag else "**missed**")


def data_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for set_name, entry in doc["sets"].items():
        res = entry["results"]
        for workers in sorted({r["workers"] for r in res}):
            by = {r["variant"]: r for r in res if r["workers"] == workers}
            ref = by["reference (PIL, v2 ssdlite preset)"]["samples_per_s"]
            who = "1 process" if workers == 0 else f"{workers} workers"
            ours = by["boxforge, ssdlite augmentations"]["samples_per_s"]
            rows.append((f"data pipeline, {set_name} ({entry['images']} imgs), {who}, samples/s", f"{ours:.1f}",
                         f"{ref:.1f} (reference)", f"{ours / ref:.2f}x", ""))
            for variant in sorted(v for v in by if ", pack " in v):
                packed = by[variant]["samples_per_s"]
                rows.append((f"data pipeline, {set_name}, {who}, {variant.rsplit(', ', 1)[1]}, samples/s",
                             f"{packed:.1f}", f"{ours:.1f} (boxforge from JPEGs)", f"{packed / ours:.2f}x", ""))
            ssd_ref = by.get("reference (PIL, v2 ssd preset)")
            if ssd_ref:
                ours = by["boxforge, default ssd recipe"]["samples_per_s"]
                ratio = ours / ssd_ref["samples_per_s"]
                why = "**slower**: see `op_profile` in the JSON" if ratio < 1 else ""
                rows.append((f"data pipeline, {set_name}, {who}, `ssd` augmentations, samples/s", f"{ours:.1f}",
                             f"{ssd_ref['samples_per_s']:.1f} (reference)", f"{ratio:.2f}x", why))
                cand = by.get("boxforge, ssd recipe, colour jitter first (previous order)")
                if cand:
                    rows.append((f"data pipeline, {set_name}, {who}, `ssd` with colour jitter first (the reference "
                                 "order), samples/s", f"{cand['samples_per_s']:.1f}",
                                 f"{ssd_ref['samples_per_s']:.1f} (reference)",
                                 f"{cand['samples_per_s'] / ssd_ref['samples_per_s']:.2f}x", ""))
    return rows


def train_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for name, m in doc["models"].items():
        ref, ours = m["reference"], m["boxforge"]
        r = ref.get("median", ref.get("img_per_s"))
        o = ours.get("median", ours.get("img_per_s"))
        target = ""
        if name == "ssdlite320_mobilenet_v3_large":  # the training target
            target = f">= 1.5x: {_met(o / r >= 1.5)}" + ("" if o / r >= 1.5 else ", see \"Reading the training rows\"")
        rows.append((f"training {name} @{m['img_size']}, CPU, img/s", f"{o:.2f}", f"{r:.2f} (reference defaults)",
                     f"{o / r:.2f}x", target))
        one = m.get("reference_1_thread")
        if one:
            r1 = one.get("median", one.get("img_per_s"))
            why = "**not faster**: see \"Reading the training rows\" below" if o < 1.05 * r1 else ""
            rows.append((f"training {name}, vs the reference with 1 intra-op thread", f"{o:.2f}", f"{r1:.2f}",
                         f"{o / r1:.2f}x", why))
        if "voc12_map" in ours:
            ok = ours["voc12_map"] >= ref["voc12_map"] - 0.02
            rows.append((f"VOC12 mAP of {name} after {ours['images']} training images", f"{ours['voc12_map']:.3f}",
                         f"{ref['voc12_map']:.3f}", "", f"not below baseline - 0.02: {_met(ok)}"))
    return rows


def step_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/step_speed.py: the model step alone, the memory format fit() uses vs torch's default."""
    rows = []
    for name, m in doc["models"].items():
        r = m["img_per_s"]
        rows.append((f"training step {name} @{m['img_size']} batch {m['batch']}, channels-last fp32 (bf16), img/s",
                     f"{r['channels_last_fp32']:.1f} ({r['channels_last_bf16']:.1f})",
                     f"{r['contiguous_fp32']:.1f} (contiguous fp32)",
                     f"{r['channels_last_fp32'] / r['contiguous_fp32']:.2f}x", ""))
    return rows


def thread_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/thread_split.py: boxforge's default thread count beside --threads auto and fixed ones, idle and
    with one core busy. (Results written before the default stopped following the load name it `autox2`.)"""
    rows = []
    for name, m in doc["models"].items():
        for load in ("idle", "one core busy"):
            by = m.get(load)
            key = "defaultx2" if by and "defaultx2" in by else "autox2"
            if not by or key not in by:
                continue
            default = by[key]
            others = ", ".join(f"{k.split('x')[0]}{'' if k.startswith('auto') else ' thr'} {v['median']:.1f}"
                               for k, v in by.items() if k not in (key, "reference"))
            base = by.get("reference")
            rows.append((f"training {name} @{m['img_size']}, 2 workers, {load}: default "
                         f"({'/'.join(map(str, sorted(set(default['threads'] or []))))} thr), img/s",
                         f"{default['median']:.2f} ({others})",
                         f"{base['median']:.2f} (reference defaults)" if base else "",
                         f"{default['median'] / base['median']:.2f}x" if base else "", ""))
    return rows


def storage_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/slow_storage.py: a pack on local disk vs JPEGs on a store with per-read latency (simulated)."""
    return [(f"data pipeline, {doc['workers']} workers, JPEGs on a store with {c['latency_ms']:g} ms per image read "
             "(simulated) vs a local pack, samples/s", f"{c['pack']['samples_per_s']:.1f}",
             f"{c['jpegs']['samples_per_s']:.1f} (JPEGs)", f"{c['pack_vs_jpegs']:.2f}x", "")
            for c in doc["cases"]]


def gpu_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/gpu_train.py; its machine (a lent GPU box) is named in the row, not in the CPU footnote."""
    gpu, m = doc.get("gpu", {}), doc.get("machine", {})
    anchor = "724 (SSD300-RN50, A100, DALI; published)"
    if "ssd300_vgg16_amp" not in gpu:
        return [("training ssd300_vgg16 AMP on GPU, img/s", "no GPU here", anchor, "", "")]
    where = f"{gpu['device']}, batch {gpu['batch']}, {gpu['workers']} CPU workers, torch {m.get('torch')}"
    ref = gpu.get("reference_ssd300_vgg16_amp")
    ours = gpu["ssd300_vgg16_amp"]["img_per_s"]
    rows = [(f"training ssd300_vgg16 AMP on {where}, img/s", f"{ours:.0f}",
             f"{ref['img_per_s']:.0f} (reference loop)" if ref else "reference loop failed (see gpu_train.json)",
             f"{ours / ref['img_per_s']:.2f}x" if ref else "", f"anchor {anchor}")]
    if "yolo_csp_default" in gpu:
        rows.append((f"training yolo_csp at its defaults on {gpu['device']}, img/s",
                     f"{gpu['yolo_csp_default']['img_per_s']:.0f}", "", "", ""))
    return rows


def eval_rows(doc: dict[str, Any]) -> list[Row]:
    cases = {c["case"]: c for c in doc["cases"]}
    voc = cases["voc07+voc12 (boxforge numpy)"]
    rows = [(f"VOC07+12 AP, {voc['images']} imgs x {voc['classes']} classes x {voc['detections'] // voc['images']} "
             "dets, s", f"{voc['median_s']:.2f}", "", "", f"< 1 s: {_met(voc['median_s'] < 1.0)}")]
    if "coco" in doc:
        fast, plain = cases["coco (boxforge evaluate_coco)"], cases["coco (plain pycocotools)"]
        rows.append((f"COCO AP, {fast['images']} imgs ({doc['coco']['backend']}), s", f"{fast['median_s']:.2f}",
                     f"{plain['median_s']:.2f}", f"{doc['coco']['speedup']:.2f}x",
                     f">= 3x: {_met(doc['coco']['met'])}"))
    return rows


def inference_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    by = {(r["model"], r["batch"], r["backend"]): r for r in doc["results"]}
    targets = {t["model"]: t for t in doc.get("batch1_targets", [])}
    for model, batch in sorted({(m, b) for m, b, _ in by}):
        ort, eager = by[(model, batch, "onnxruntime")], by[(model, batch, "pytorch")]
        target = ""
        if batch == 1:
            met = targets[model]["met"] if model in targets else eager["ms_per_image"] / ort["ms_per_image"] >= 2
            target = f">= 2x: {_met(met)}"
        rows.append((f"inference {model} batch {batch}, ms/img (onnxruntime vs eager)", f"{ort['ms_per_image']:.1f}",
                     f"{eager['ms_per_image']:.1f}", f"{eager['ms_per_image'] / ort['ms_per_image']:.2f}x", target))
    return rows


def _run_name(weights: str) -> str:
    """A checkpoint's run as the table names it: RUN of RUN/last.pt, or SET/JOB of an accuracy_suite job's
    runs/accuracy-suite/SET/JOB/run/last.pt."""
    parent = Path(weights).parent
    return f"{parent.parent.parent.name}/{parent.parent.name}" if parent.name == "run" else parent.name


def deploy_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/deploy_speed.py: each export format of each trained model against its PyTorch eager at the same
    input size, same run; then the peers' ONNX files, with the verdict of the default model's exports on them."""
    rows = []
    for model in doc["models"]:
        eager, goal = model["results"][0], model["goal"]
        for e in model["results"][1:]:
            for b, t in e["timing"].items():
                target = ""
                if b == "b1" and e["format"] == goal.get("fastest_within_1_point"):
                    target = f">= 3x at <= 1 AP point lost: {_met(goal['met'])}"
                rows.append((f"deploy {_run_name(model['weights'])} ({model['model']}) {e['img_size']} px {b}, ms/img, "
                             f"{e['format']}, COCO AP {e['coco_AP']:.3f} vs {eager['coco_AP']:.3f}",
                             f"{t['ms_per_image']:.1f}", f"{eager['timing'][b]['ms_per_image']:.1f} (eager)",
                             f"{t['speedup_vs_eager']:.2f}x", target))
    for peer in doc["peers"]:
        beside = doc["models"][peer["timed_beside"]]  # the model whose formats were timed in the same rounds
        verdict = doc["peer_goals"].get(peer["peer"])
        for b, t in peer["timing"].items():
            target = ""
            if b == "b1" and verdict:
                parts = []
                for key, where in (("equal_size", f"at {peer['img_size']} px"), ("any_size", "at any size")):
                    v = verdict[key]
                    parts.append(f"{where}: {_met(v['met'])}" + (
                        f" ({v['ours']} {v['ours_img_size']} px, {v['ours_ms_b1']:.1f} ms, AP {v['ours_coco_AP']:.3f})"
                        if v["ours"] else " (none as accurate)"))
                target = "an export of ours as accurate and faster, " + "; ".join(parts)
            ap = f", COCO AP {peer['coco_AP']:.3f}" if "coco_AP" in peer else ", not scored"
            rows.append((f"deploy peer {peer['peer']} {peer['img_size']} px {b}, ms/img, onnxruntime{ap}",
                         f"{t['ms_per_image']:.1f}",
                         f"{beside['results'][0]['timing'][b]['ms_per_image']:.1f} (eager {beside['model']} "
                         f"{beside['img_size']} px)", f"{t['speedup_vs_eager']:.2f}x", target))
    return rows


def decode_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for set_name, entry in doc["speed"].items():
        if "real" not in set_name:
            continue
        d = entry["decoders"]
        ours, ref = d["torchcodec"], d["torchvision.io"]
        same = doc["pixels"][set_name]["decoders"]["torchcodec"]["vs torchvision.io"]["images_differing"] == 0
        fastest = ref["min_s"] / ours["min_s"]  # the fastest passes: the least load noise
        met = same and fastest >= 0.95
        rows.append((f"image decoding, {set_name} ({entry['images']} imgs), images/s (TorchCodec)",
                     f"{ours['images_per_s']:.0f}", f"{ref['images_per_s']:.0f} (torchvision.io)",
                     f"{ours['speed_vs_torchvision']:.2f}x", f"same pixels, >= 0.95x: {_met(met)}"))
    return rows


def check_rows(doc: dict[str, Any]) -> list[Row]:
    s = doc["check"]["median_s"]
    return [(f"`boxforge check` of {doc['images']} images, s", f"{s:.1f}", "", "", f"< 30 s: {_met(s < 30)}")]


def memory_rows(doc: dict[str, Any]) -> list[Row]:
    t = doc["training"]
    g = max(abs(v) for v in t["growth_last_vs_second"].values())
    rows = [(f"training RSS, last vs 2nd of {t['epochs']} epochs (2 workers)", f"{100 * g:+.1f}%", "", "",
             f"within 5%: {_met(t['met'])}")]
    c = doc["copy_on_read"]
    ours = c["boxforge (numpy arrays, forkserver)"]
    ref = c["reference (list of dicts, fork)"]
    rows.append((f"per-worker memory growth over one epoch of a {c['samples']}-sample index, MiB (USS at the end)",
                 f"{max(ours['growth_mib']):.1f} ({max(ours['uss_peak_mib']):.0f})",
                 f"{max(ref['growth_mib']):.1f} ({max(ref['uss_peak_mib']):.0f}), list of dicts + fork", "",
                 f"no copy-on-read: {_met(max(ours['growth_mib']) < 0.05 * max(ours['uss_peak_mib']))}"))
    return rows


def table() -> str:
    rows: list[Row] = []
    machines = []
    for name, fn in (("data_pipeline", data_rows), ("slow_storage", storage_rows), ("decode_speed", decode_rows),
                     ("train_speed", train_rows),
                     ("thread_split", thread_rows),
                     ("step_speed", step_rows),
                     ("eval_speed", eval_rows),
                     ("inference_speed", inference_rows), ("deploy_speed", deploy_rows),
                     ("check_speed", check_rows), ("memory_rss", memory_rows)):
        doc = load(name)
        if doc is not None:
            rows += fn(doc)
            machines.append(doc["machine"])
    gpu = load("gpu_train")
    if gpu is not None:
        rows += gpu_rows(gpu)
    lines = ["| figure | boxforge | baseline, same run | ratio | target |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    if machines:
        m = machines[0]
        loads = [x.get("load_avg_1m_at_write") for x in machines if x.get("load_avg_1m_at_write") is not None]
        note = next((x["note"] for x in machines if x.get("note")), None)
        lines.append("")
        lines.append(f"Measured by `make bench` on {m.get('cores', m.get('cpus_usable'))} CPU cores, torch "
                     f"{m.get('torch')}" + (f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} when the "
                                             "results were written" if loads else "") + (f"; {note}" if note else "")
                     + ". Baselines: bench/reference.py; details and spreads in bench/results/*.json.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    ap.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    args = ap.parse_args()
    text = table()
    if args.print:
        print(text)
        return
    readme = args.readme.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{args.readme}: no {START} ... {END} markers; add them where the table belongs")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    args.readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", readme, count=1), encoding="utf-8")
    print(f"performance table written to {args.readme}")


if __name__ == "__main__":
    main()
