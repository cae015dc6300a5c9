"""The accuracy suite's report (bench/accuracy_suite.py `report`): every finished job scored with one evaluator,
mean and spread over seeds per set and runner, and the paired comparisons of COMPARISONS, plus each lever
runner (a runner's arguments with one setting changed, bench/accuracy_suite.py LEVERS) against the runner it varies.

The suite is run in pieces (one 15-minute job at a time, across sessions and machines), so a report must add
the new jobs to what is known without losing the rest:
- a set none of whose jobs is found (archived or in runs/) keeps its whole entry of the previous report;
- a runner of a set that has new jobs, but none of its own, keeps its previous figures;
- a comparison is computed only from predictions found now (a paired bootstrap needs both sides' predictions
  on the same test images); where both sides are kept it is kept, where only one side is found it is not
  made up: the row says which side's predictions are missing.
Everything kept is marked `from_report_of` (when it was measured), so the table never passes an old figure off
as new.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from accuracy import paired_bootstrap
from common import RESULTS, machine
from suite_archive import finished_jobs

# (ours, theirs, the entry's key): the default against the strongest Ultralytics peer (picked per set), the
# pretrained start against the from-scratch default and against the SSDLite-on-the-same-backbone peer
COMPARISONS = (("boxforge", "strongest peer", "vs_strongest_peer"),
               ("boxforge_pretrained", "boxforge", "pretrained_vs_scratch"),
               ("boxforge_pretrained", "ssdlite_pretrained", "pretrained_vs_ssdlite"))
METRICS = ("coco_ap", "coco_ap50", "coco_ap75", "coco_aps", "voc12")


def _smallest_class(index: Any) -> str | None:
    """The class whose test boxes are smallest (median sqrt(area) in px), the one the goal asks to hold level."""
    sizes: dict[int, list[float]] = {}
    for s in index.samples:
        wh = np.clip(s.boxes[:, 2:] - s.boxes[:, :2], 0, None)
        for label, side in zip(s.labels.tolist(), np.sqrt(wh[:, 0] * wh[:, 1]).tolist()):
            sizes.setdefault(label, []).append(side)
    if len(sizes) < 2:
        return None
    return index.classes[min(sizes, key=lambda k: float(np.median(sizes[k])))]


def _runner(rs: list[dict[str, Any]], smallest: str | None) -> dict[str, Any]:
    """One runner's entry from its jobs on a set: per metric the mean, min and max over seeds."""
    m = {k: [r["metrics"][k] for r in rs] for k in METRICS}
    # pycocotools' -1: no ground truth in that area range (raccoon has no small objects): not a score
    entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "img_per_s": [r.get("img_per_s") for r in rs],
                             "img_size": [r.get("img_size") for r in rs],
                             **{k: ({"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))}
                                    if min(v) >= 0 else None) for k, v in m.items()}}
    small = [r["metrics"]["per_class_coco_ap"].get(smallest) for r in rs]
    entry["smallest_class_coco_ap"] = float(np.mean(small)) if smallest and None not in small else None
    return entry


def _row(set_name: str, who: str, run: dict[str, Any], smallest: str | None) -> tuple[str, str]:
    ap = run["coco_ap"]
    aps = f"{run['coco_aps']['mean']:.3f}" if run.get("coco_aps") else "n/a (no small objects)"
    small_ap = run.get("smallest_class_coco_ap")
    kept = f"  (kept from the report of {run['from_report_of']})" if run.get("from_report_of") else ""
    return (f"{set_name} {who} ({len(run['seeds'])} seeds)",
            f"COCO AP {ap['mean']:.3f} [{ap['min']:.3f}, {ap['max']:.3f}]  VOC12 {run['voc12']['mean']:.3f}  "
            f"APs {aps}" + (f"  {smallest} AP {small_ap:.3f}" if small_ap is not None else "") + kept)


def _bootstrap(index: Any, jobs_found: dict, set_name: str, runs: list[dict], repeats: int) -> dict[str, Any]:
    """Every listed job's metrics over the same `repeats` resamples of the test images, each job scored once
    (a runner in several comparisons is not scored again: paired_bootstrap's resamples depend only on the seed
    and the number of images, so one call over all of them gives each pair what two calls would)."""
    from boxforge.evaluation.predictions import predictions_from_doc

    preds = {f"{r['who']}-s{r['seed']}": predictions_from_doc(jobs_found[(set_name, r["who"], r["seed"])][1], index,
                                                              source=f"{set_name} {r['who']} s{r['seed']}")
             for r in runs}
    return paired_bootstrap(index, preds, repeats) if preds else {}


def _compare(boot: dict[str, Any], ours: str, theirs: str, by_who: dict[str, list[dict]]) -> dict[str, Any]:
    """`ours` against `theirs` on the resamples of `boot`: per resample, each side's metric is the mean over its
    seeds; P(better) is the share of resamples in which ours is higher."""
    side = {w: {k: np.mean([boot[f"{w}-s{r['seed']}"][k] for r in by_who[w]], axis=0) for k in ("coco_ap", "voc12")}
            for w in (ours, theirs)}
    return {"paired_p_better": {k: float((side[ours][k] > side[theirs][k]).mean()) for k in side[ours]},
            "mean_difference": {k: float((side[ours][k] - side[theirs][k]).mean()) for k in side[ours]}}


def _set_entry(set_name: str, index: Any, jobs_found: dict, by_who: dict[str, list[dict]],
               before: dict[str, Any], before_at: str | None, peers: tuple[str, ...], repeats: int,
               rows: list[tuple[str, str]], comparisons: tuple[tuple[str, str, str], ...]) -> dict[str, Any]:
    """A set with jobs found: fresh runners from them, the other runners and comparisons kept from `before`
    (the set's entry in the previous report, measured at `before_at`)."""
    smallest = _smallest_class(index)
    entry: dict[str, Any] = {"runs": {}, "smallest_class": smallest}
    for who, rs in by_who.items():
        entry["runs"][who] = _runner(rs, smallest)
    for who, run in before.get("runs", {}).items():
        if who not in entry["runs"]:
            entry["runs"][who] = {**run, "from_report_of": run.get("from_report_of")
                                  or before.get("from_report_of") or before_at}
    entry["runs"] = dict(sorted(entry["runs"].items()))
    for who, run in entry["runs"].items():
        rows.append(_row(set_name, who, run, smallest))
    present = [w for w in entry["runs"] if w in peers]
    strongest = max(present, key=lambda w: entry["runs"][w]["coco_ap"]["mean"]) if present else None
    pairs = [(ours, strongest if theirs == "strongest peer" else theirs, key) for ours, theirs, key in comparisons]
    pairs = [(o, t, k) for o, t, k in pairs if t is not None and o in entry["runs"] and t in entry["runs"]]
    paired = sorted({w for o, t, _ in pairs if o in by_who and t in by_who for w in (o, t)})
    boot = _bootstrap(index, jobs_found, set_name, [r for w in paired for r in by_who[w]], repeats)
    for ours, theirs, key in pairs:
        fresh = {w: w in by_who for w in (ours, theirs)}
        if all(fresh.values()):
            entry[key] = {"ours": ours, "peer": theirs, **_compare(boot, ours, theirs, by_who)}
        elif any(fresh.values()):
            missing = next(w for w, f in fresh.items() if not f)
            entry[key] = {"ours": ours, "peer": theirs, "not_paired": f"{missing}'s predictions are not archived"}
        else:
            old = before.get(key)
            if not old or old.get("peer") != theirs or old.get("ours", ours) != ours:
                continue
            entry[key] = {**old, "ours": ours,
                          "from_report_of": old.get("from_report_of") or before.get("from_report_of") or before_at}
        c = entry[key]
        if "not_paired" in c:
            rows.append((f"{set_name} {ours} vs {theirs}", f"not paired: {c['not_paired']}"))
        else:
            p = c["paired_p_better"]
            rows.append((f"{set_name} {ours} vs {theirs}", f"P(better) COCO AP {p['coco_ap']:.2f}, VOC12 "
                         f"{p['voc12']:.2f}" + (f"  (kept from the report of {c['from_report_of']})"
                                                if c.get("from_report_of") else "")))
    return entry


def report(repeats: int, work: Path, sets: dict[str, tuple[Path, str, str]], peers: tuple[str, ...],
           path: Path = RESULTS / "accuracy_suite.json",
           jobs: Callable[[Path], dict] = finished_jobs, levers: dict[str, str] | None = None) -> dict[str, Any]:
    """Write `path` from every finished job (archived or under `work`) and the previous report; print a table.

    `sets` maps a set's name to (data, train split, test split); `peers` names the Ultralytics runners, among
    which the strongest on each set is the one the default is compared with; `levers` maps a lever runner to
    the runner it varies, compared as `LEVER_vs_BASE` wherever either has jobs."""
    comparisons = COMPARISONS + tuple((lever, base, f"{lever}_vs_{base}") for lever, base in (levers or {}).items())
    from boxforge.data.formats.detect import load_dataset

    jobs_found = jobs(work)
    found = [r for r, _ in jobs_found.values()]
    previous = json.loads(path.read_text()) if path.exists() else {}
    doc: dict[str, Any] = {"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "bootstrap_resamples": repeats, "sets": {}}
    rows: list[tuple[str, str]] = []
    for set_name in sorted({r["set"] for r in found}):
        _, _, test = sets[set_name]
        index = load_dataset(str(sets[set_name][0]), split=test)
        by_who: dict[str, list[dict]] = {}
        for r in sorted((r for r in found if r["set"] == set_name), key=lambda r: (r["who"], r["seed"])):
            by_who.setdefault(r["who"], []).append(r)
        doc["sets"][set_name] = _set_entry(set_name, index, jobs_found, by_who, previous.get("sets", {}).get(set_name, {}),
                                           previous.get("measured_at"), peers, repeats, rows, comparisons)
    for set_name, entry in previous.get("sets", {}).items():
        if set_name not in doc["sets"]:  # none of its jobs' predictions is here: its figures stay, said to be older
            doc["sets"][set_name] = {**entry, "from_report_of": entry.get("from_report_of", previous.get("measured_at"))}
            rows.append((f"{set_name}", f"kept from the report of {doc['sets'][set_name]['from_report_of']} "
                         "(no job of it archived)"))
    doc["sets"] = dict(sorted(doc["sets"].items()))
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for a, b in rows:
        print(f"  {a:<48} {b}")
    print(f"  (written to {path})")
    return doc


def markdown(doc: dict[str, Any]) -> str:
    """The README's tables from a report: every runner of every set (mean [min, max] over seeds), then every
    comparison. A figure kept from an older report says so; an input size not recorded is '?'."""
    def fmt(m: dict[str, float] | None, spread: bool = False) -> str:
        if not m:
            return "n/a"
        return f"{m['mean']:.3f}" + (f" [{m['min']:.3f}, {m['max']:.3f}]" if spread and m["min"] != m["max"] else "")

    runs = ["| set | runner | seeds | COCO AP mean [min, max] | VOC12 | APs | smallest class AP | img/s | input px |",
            "|---|---|---|---|---|---|---|---|---|"]
    pairs = ["| set | ours vs theirs | P(better) COCO AP / VOC12 | mean difference COCO AP / VOC12 |",
             "|---|---|---|---|"]
    for set_name, entry in doc["sets"].items():
        for who, r in entry.get("runs", {}).items():
            small = r.get("smallest_class_coco_ap")
            kept = " (older report)" if r.get("from_report_of") else ""
            sizes = ", ".join("?" if x is None else str(x) for x in r.get("img_size", [None] * len(r["seeds"])))
            runs.append(f"| {set_name} | {who}{kept} | {', '.join(map(str, r['seeds']))} | {fmt(r['coco_ap'], True)} "
                        f"| {fmt(r['voc12'])} | {fmt(r.get('coco_aps'))} | "
                        f"{'' if small is None else f'{small:.3f}'} | "
                        f"{', '.join(str(x) for x in r['img_per_s'])} | {sizes} |")
        for key, c in entry.items():
            if not isinstance(c, dict) or "peer" not in c:
                continue
            if "not_paired" in c:
                pairs.append(f"| {set_name} | {c['ours']} vs {c['peer']} | not paired | {c['not_paired']} |")
                continue
            p, d = c["paired_p_better"], c["mean_difference"]
            kept = " (older report)" if c.get("from_report_of") else ""
            pairs.append(f"| {set_name} | {c['ours']} vs {c['peer']}{kept} | {p['coco_ap']:.2f} / {p['voc12']:.2f} "
                         f"| {d['coco_ap']:+.3f} / {d['voc12']:+.3f} |")
    return "\n".join(runs) + "\n\n" + "\n".join(pairs) + "\n"
