"""One audit, start to end: the out-of-fold predictions (trained, or the user's), the ranking, issues.json and
review.html. `api.audit` loads the dataset and calls `run_audit`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxforge.audit.folds import plan_folds
from boxforge.audit.oof import out_of_fold
from boxforge.audit.rank import Issue, rank_issues
from boxforge.audit.review import write_review
from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError
from boxforge.evaluation.predictions import load_predictions
from boxforge.files import write_json


@dataclass
class AuditReport:
    """What `audit` wrote: issues.json (every suspected mistake, ranked), review.html, the fold plan."""

    out: Path
    issues: list[Issue]
    images: int
    plan: str

    def summary(self) -> str:
        counts = Counter(issue.kind for issue in self.issues)
        kinds = ", ".join(f"{kind} {counts[kind]}" for kind in sorted(counts)) or "none"
        return (f"{len(self.issues)} suspected label mistakes in {self.images} images ({kinds})\n"
                f"ranked: {self.out / 'issues.json'}\nreview: {self.out / 'review.html'} (A accept, R reject, "
                f"S save; then boxforge audit --apply decisions.json --data DATA --out NEW)")


def run_audit(index: DatasetIndex, *, name: str, out: Path, time: float | None, folds: int | None,
              predictions: str | Path | None, seed: int, settings: dict[str, Any]) -> AuditReport:
    if index.task != "detect" or not len(index):
        raise BoxforgeError(f"{name}: audit needs a detection set with images; this one has {len(index)} "
                            f"{index.task} images")
    if predictions is not None:
        if time is not None or folds is not None:
            raise BoxforgeError("--predictions gives the out-of-fold predictions: --time and --folds train models")
        preds, plan_text = load_predictions(predictions, index), f"out-of-fold predictions from {predictions}"
    else:
        if time is None:
            raise BoxforgeError("audit needs --time MINUTES (the budget for the fold models) or --predictions FILE")
        plan = plan_folds(len(index), time, k=folds, seed=seed)
        plan_text = plan.describe(time)
        print(plan_text, flush=True)
        preds = out_of_fold(index, plan, data=name, out=out, settings=settings)
    issues, images = rank_issues(index, preds)
    write_json(out / "issues.json", {"dataset": name, "classes": list(index.classes), "plan": plan_text,
                                     "issues": [dict(id=n, **i.to_json()) for n, i in enumerate(issues)],
                                     "images": images}, indent=1)
    write_review(index, issues, out / "review.html", dataset=name)
    return AuditReport(out, issues, len(index), plan_text)
