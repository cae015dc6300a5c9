"""bench/suite_archive.py: refiling an archived job when a default changes keeps the job, names its setting,
and leaves the trail in the result; it never overwrites another job."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import suite_archive  # noqa: E402


def _archive_one(tmp_path: Path, who: str) -> Path:
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    preds = [{"image": "a", "label": "cat", "score": 0.91234567, "box": [1.234, 2, 3, 4]}]
    (job / "predictions.json").write_text(json.dumps({"classes": ["cat"], "predictions": preds}))
    result = {"set": "s", "who": who, "seed": 0, "predictions": "predictions.json", "metrics": {"coco_ap": 0.5}}
    return suite_archive.archive_job(result, job)


def test_refile_moves_the_job_under_the_lever_that_names_its_setting(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite_archive, "ARCHIVE", tmp_path / "archive")
    old = _archive_one(tmp_path, "boxforge")
    new = suite_archive.refile("s", "boxforge", 0, "boxforge_img640", why="auto chose 640 then")
    assert not old.exists() and new == tmp_path / "archive" / "s" / "boxforge_img640-s0.json.gz"
    with gzip.open(new, "rt") as f:
        doc = json.load(f)
    assert doc["result"]["who"] == "boxforge_img640" and doc["result"]["metrics"] == {"coco_ap": 0.5}
    assert doc["result"]["refiled"] == [{"from": "boxforge", "why": "auto chose 640 then"}]
    assert doc["predictions"]["predictions"][0] == {"image": "a", "label": "cat", "score": 0.912346,
                                                    "box": [1.23, 2, 3, 4]}
    found = suite_archive.finished_jobs(tmp_path / "no-runs")
    assert list(found) == [("s", "boxforge_img640", 0)]


def test_refile_never_overwrites_a_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite_archive, "ARCHIVE", tmp_path / "archive")
    first = _archive_one(tmp_path, "boxforge")
    second = _archive_one(tmp_path, "boxforge_img416")
    with pytest.raises(SystemExit, match="exists"):
        suite_archive.refile("s", "boxforge_img416", 0, "boxforge", why="x")
    assert first.exists() and second.exists()
