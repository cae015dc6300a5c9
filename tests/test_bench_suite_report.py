"""bench/suite_report.py: the accuracy suite's report adds new jobs to the previous report without losing or
passing off the rest: a runner with no job found keeps its figures, marked as older; a comparison needs both
sides' predictions now; a set with no job at all is kept whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_voc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import suite_report  # noqa: E402

BOXES = {"a": (5, 6, 30, 40), "b": (10, 4, 60, 40), "c": (2, 2, 20, 30), "d": (30, 10, 62, 46)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = {i: [("cat", *box)] for i, box in BOXES.items()}
    return make_voc(tmp_path_factory.mktemp("suite") / "voc", items, splits={"test": list(BOXES)})


def _job(who: str, seed: int, shift: float, coco_ap: float) -> tuple[tuple[str, str, int], tuple[dict, dict]]:
    """A finished job: its result (metrics as a job records them) and its predictions, boxes moved by `shift`."""
    preds = [{"image": i, "label": "cat", "score": 0.9, "box": [v + shift for v in box]} for i, box in BOXES.items()]
    metrics = {"coco_ap": coco_ap, "coco_ap50": coco_ap, "coco_ap75": coco_ap, "coco_aps": -1.0, "voc12": coco_ap,
               "per_class_coco_ap": {"cat": coco_ap}}
    result = {"set": "s", "who": who, "seed": seed, "img_per_s": 10.0, "metrics": metrics}
    return ("s", who, seed), (result, {"classes": ["cat"], "predictions": preds})


def _kept_run(coco_ap: float) -> dict[str, Any]:
    m = {"mean": coco_ap, "min": coco_ap, "max": coco_ap}
    return {"seeds": [0], "img_per_s": [5.0], "coco_ap": m, "coco_ap50": m, "coco_ap75": m, "coco_aps": None,
            "voc12": m}


def test_new_jobs_join_the_previous_report_and_only_paired_predictions_are_compared(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "accuracy_suite.json"
    path.write_text(json.dumps({"measured_at": "2026-01-01T00:00:00Z", "sets": {
        "s": {"runs": {"boxforge": _kept_run(0.1), "yolo26n": _kept_run(0.05)},
              "vs_strongest_peer": {"peer": "yolo26n", "paired_p_better": {"coco_ap": 1.0, "voc12": 1.0},
                                    "mean_difference": {"coco_ap": 0.05, "voc12": 0.05}}},
        "gone": {"runs": {"boxforge": _kept_run(0.3)}}}}))
    jobs = dict([_job("boxforge_pretrained", 0, 0.0, 0.9), _job("ssdlite_pretrained", 0, 6.0, 0.4)])
    doc = suite_report.report(5, tmp_path, {"s": (data, "train", "test")}, ("yolov8n", "yolo26n"), path=path,
                              jobs=lambda work: jobs)
    entry = doc["sets"]["s"]
    assert entry["runs"]["boxforge_pretrained"]["coco_ap"]["mean"] == 0.9
    assert "from_report_of" not in entry["runs"]["boxforge_pretrained"]
    assert entry["runs"]["boxforge"]["coco_ap"]["mean"] == 0.1  # kept, and said to be older
    assert entry["runs"]["boxforge"]["from_report_of"] == "2026-01-01T00:00:00Z"
    # both sides found: a real paired bootstrap (exact boxes against boxes moved 6 px on 20-50 px objects)
    assert entry["pretrained_vs_ssdlite"]["paired_p_better"]["coco_ap"] == 1.0
    assert entry["pretrained_vs_ssdlite"]["mean_difference"]["coco_ap"] > 0.3
    # one side only found: no figure is made up
    assert entry["pretrained_vs_scratch"] == {"ours": "boxforge_pretrained", "peer": "boxforge",
                                              "not_paired": "boxforge's predictions are not archived"}
    # neither side found: the previous comparison stays, marked
    assert entry["vs_strongest_peer"]["paired_p_better"]["coco_ap"] == 1.0
    assert entry["vs_strongest_peer"]["from_report_of"] == "2026-01-01T00:00:00Z"
    assert doc["sets"]["gone"]["from_report_of"] == "2026-01-01T00:00:00Z"
    assert json.loads(path.read_text())["sets"] == doc["sets"]
    out = capsys.readouterr().out
    assert "boxforge_pretrained vs boxforge" in out and "not paired" in out


def test_fresh_jobs_replace_the_figures_they_measure(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "accuracy_suite.json"
    path.write_text(json.dumps({"measured_at": "2026-01-01T00:00:00Z",
                                "sets": {"s": {"runs": {"boxforge": _kept_run(0.1), "yolo26n": _kept_run(0.05)}}}}))
    jobs = dict([_job("boxforge", 0, 0.0, 0.8), _job("boxforge", 1, 1.0, 0.7), _job("yolo26n", 0, 8.0, 0.2)])
    entry = suite_report.report(5, tmp_path, {"s": (data, "train", "test")}, ("yolov8n", "yolo26n"), path=path,
                                jobs=lambda work: jobs)["sets"]["s"]
    assert entry["runs"]["boxforge"]["seeds"] == [0, 1]
    assert entry["runs"]["boxforge"]["coco_ap"] == pytest.approx({"mean": 0.75, "min": 0.7, "max": 0.8})
    assert not any("from_report_of" in run for run in entry["runs"].values())
    assert entry["vs_strongest_peer"]["peer"] == "yolo26n"
    assert "from_report_of" not in entry["vs_strongest_peer"]
    assert entry["vs_strongest_peer"]["paired_p_better"]["coco_ap"] == 1.0


def test_a_lever_is_compared_with_the_runner_it_varies(data: Path, tmp_path: Path) -> None:
    jobs = dict([_job("boxforge_pretrained", 0, 6.0, 0.4), _job("boxforge_pretrained_auto", 0, 0.0, 0.9),
                 _job("boxforge", 0, 0.0, 0.8)])
    entry = suite_report.report(5, tmp_path, {"s": (data, "train", "test")}, ("yolov8n", "yolo26n"),
                                path=tmp_path / "accuracy_suite.json", jobs=lambda work: jobs,
                                levers={"boxforge_pretrained_auto": "boxforge_pretrained",
                                        "boxforge_unrun": "boxforge"})["sets"]["s"]
    lever = entry["boxforge_pretrained_auto_vs_boxforge_pretrained"]
    assert (lever["ours"], lever["peer"]) == ("boxforge_pretrained_auto", "boxforge_pretrained")
    assert lever["paired_p_better"]["coco_ap"] == 1.0 and lever["mean_difference"]["coco_ap"] > 0.3
    assert "boxforge_unrun_vs_boxforge" not in entry  # a lever with no job makes no row
    assert entry["runs"]["boxforge_pretrained_auto"]["coco_ap"]["mean"] == 0.9


def test_markdown_tables_follow_the_report(data: Path, tmp_path: Path) -> None:
    jobs = dict([_job("boxforge", 0, 0.0, 0.8), _job("boxforge", 1, 1.0, 0.7), _job("yolo26n", 0, 8.0, 0.2)])
    jobs[("s", "boxforge", 0)][0]["img_size"] = 352
    doc = suite_report.report(5, tmp_path, {"s": (data, "train", "test")}, ("yolov8n", "yolo26n"),
                              path=tmp_path / "accuracy_suite.json", jobs=lambda work: jobs)
    doc["sets"]["s"]["runs"]["old"] = {**_kept_run(0.3), "from_report_of": "2026-01-01T00:00:00Z"}
    lines = suite_report.markdown(doc).splitlines()
    assert "| s | boxforge | 0, 1 | 0.750 [0.700, 0.800] | 0.750 | n/a |  | 10.0, 10.0 | 352, ? |" in lines
    assert "| s | old (older report) | 0 | 0.300 | 0.300 | n/a |  | 5.0 | ? |" in lines
    assert any(line.startswith("| s | boxforge vs yolo26n | 1.00 / 1.00 | +") for line in lines)
