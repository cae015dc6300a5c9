"""The accuracy suite's archive: every finished job's result and test predictions, committed, so that seeds run
in different sessions or on different machines add up to one table (bench/accuracy_suite.py `report`).

A job's runs/ folder is lost with the checkout it ran in; its archive file, `ARCHIVE/SET/WHO-sSEED.json.gz`,
is not. The bytes depend only on the job (gzip without a time stamp, boxes rounded to 0.01 px and scores to
1e-6, far below what any metric resolves), so re-archiving a job changes nothing in git.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from common import RESULTS

ARCHIVE = RESULTS / "accuracy_suite_jobs"
Job = tuple[str, str, int]  # (set, who, seed)


def archive_path(set_name: str, who: str, seed: int) -> Path:
    return ARCHIVE / set_name / f"{who}-s{seed}.json.gz"


def archive_job(result: dict[str, Any], job_folder: Path) -> Path:
    """File a finished job (its result and the predictions file beside it in `job_folder`) in ARCHIVE."""
    predictions = json.loads((job_folder / result["predictions"]).read_text())
    for entry in predictions["predictions"]:
        entry["score"] = round(entry["score"], 6)
        entry["box"] = [round(v, 2) for v in entry["box"]]
    path = archive_path(result["set"], result["who"], result["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps({"result": result, "predictions": predictions}, separators=(",", ":")).encode())
    return path


def finished_jobs(work: Path) -> dict[Job, tuple[dict[str, Any], Any]]:
    """(set, who, seed) -> (result, the predictions document) of every finished job: the archived ones, and
    those under `work` (runs/accuracy-suite) not archived (an archived job's own runs/ copy is the same job)."""
    found: dict[Job, tuple[dict[str, Any], Any]] = {}
    for path in sorted(ARCHIVE.glob("*/*.json.gz")):
        with gzip.open(path, "rt") as f:
            doc = json.load(f)
        r = doc["result"]
        found[(r["set"], r["who"], r["seed"])] = (r, doc["predictions"])
    for path in sorted(work.glob("*/*/result.json")):
        r = json.loads(path.read_text())
        key = (r["set"], r["who"], r["seed"])
        if key not in found:
            found[key] = (r, json.loads((path.parent / r["predictions"]).read_text()))
    return found


def refile(set_name: str, who: str, seed: int, new_who: str, why: str) -> Path:
    """File an archived job under another runner's name, when a default change makes its settings another
    runner's: the old default becomes a lever that names its setting, and a lever whose setting the new default
    chooses becomes the default's job. The result keeps the trail (`refiled`: from whom, why), nothing else
    changes; the old file is removed, so the job is counted once."""
    old, new = archive_path(set_name, who, seed), archive_path(set_name, new_who, seed)
    if new.exists():
        raise SystemExit(f"{new} exists: refile that job first")
    with gzip.open(old, "rt") as f:
        doc = json.load(f)
    doc["result"]["who"] = new_who
    doc["result"].setdefault("refiled", []).append({"from": who, "why": why})
    with gzip.GzipFile(new, "wb", mtime=0) as f:
        f.write(json.dumps(doc, separators=(",", ":")).encode())
    old.unlink()
    return new
