"""Thread split: training img/s for intra-op threads x data workers, on idle cores and with one core busy.

`boxforge train` chooses how many intra-op threads the training process gets (engine/threads.py):
by default its share of the cores whatever the load (so a seeded run repeats bit-identically), and
with `--threads auto` that share less the cores other processes keep busy as the run starts. This
measures both beside fixed choices, each as `boxforge train --threads T --workers W`, in two
conditions in the same run:

- idle: nothing else runs;
- one core busy: a background process spins on one core for the whole run (another job on
  a shared laptop or CI box), the case where a thread sharing its core with it holds up every
  parallel region of the others.

Settings are THREADSxWORKERS[:spin|:passive], THREADS a number, `default` (no --threads) or `auto`
(--threads auto). The OpenMP wait policy suffix sets GOMP_SPINCOUNT=300000 (libgomp's default) or
OMP_WAIT_POLICY=PASSIVE for the run; results/thread_split_wait_policy.json is the run that
compared them (passive waits helped ssdlite320 under load but cost yolo_csp 20% on idle cores,
so boxforge does not ask for them). The reference loop at its defaults (torch's one thread per
core, 2 workers) runs beside it in both conditions, so each figure has its baseline from the
same minute. Runs are interleaved, repeats give the spread.

    python bench/thread_split.py [--models ssdlite320_mobilenet_v3_large ssd_tiny yolo_csp --repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from train_speed import PRESET, SIZE, run_reference, timed_train  # noqa: E402

from boxforge import load_dataset  # noqa: E402
from boxforge.checkpoint import load_checkpoint  # noqa: E402
from boxforge.data.synth import synthesize_detection  # noqa: E402


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """A background process that spins on one core while the block runs (nothing when `on` is False)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def wait_policy(name: str) -> Iterator[None]:
    """The OpenMP wait policy of the `boxforge train` subprocesses started in the block ("" leaves it alone)."""
    env = {"spin": {"GOMP_SPINCOUNT": "300000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "": {}}[name]
    saved = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ssdlite320_mobilenet_v3_large", "ssd_tiny", "yolo_csp"],
                    help="models; those without a reference recipe are compared with the first setting")
    ap.add_argument("--splits", nargs="+", default=["defaultx2", "autox2", "1x2", "2x2"],
                    help="THREADSxWORKERS[:spin|:passive] settings of boxforge train; THREADS default: no "
                         "--threads; auto: --threads auto")
    ap.add_argument("--name", default="thread_split", help="results/NAME.json")
    ap.add_argument("--images", type=int, default=200, help="synthetic images (80%% train)")
    ap.add_argument("--iters", type=int, default=12, help="training steps per run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of img/s")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    doc: dict[str, Any] = {"cores": cores, "batch": args.batch, "iterations": args.iters, "models": {}}
    rows = []
    ref_args = argparse.Namespace(batch=args.batch, vgg_batch=args.batch, workers=2, skip=args.skip, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synthesize_detection(root, images=args.images, classes=3, seed=args.seed)
        train = load_dataset(root, split="train")
        for model in args.models:
            rates: dict[str, dict[str, list[float]]] = {}
            chosen: dict[str, dict[str, list[int]]] = {}  # the thread count each run trained with
            for r in range(args.repeats):
                for load in ("idle", "one core busy"):
                    with busy_core(load != "idle"):
                        if model in PRESET:
                            ref = run_reference(model, train, None, ref_args, 1, args.iters * args.batch)
                            rates.setdefault(load, {}).setdefault("reference", []).append(ref["img_per_s"])
                        for split in args.splits:
                            threads, workers = split.split(":")[0].split("x")
                            with wait_policy(split.partition(":")[2]):
                                out, _ = timed_train(["--data", str(root), "--model", model,
                                                      "--img-size", str(SIZE.get(model, 320)),
                                                      "--batch-size", str(args.batch), "--iterations", str(args.iters),
                                                      "--seed", str(args.seed), "--workers", workers,
                                                      *([] if threads == "default" else ["--threads", threads])],
                                                     Path(tmp) / f"{model}-{split}-{load[0]}-{r}", args.skip)
                            rates.setdefault(load, {}).setdefault(split, []).append(out["img_per_s"])
                            used = load_checkpoint(Path(tmp) / f"{model}-{split}-{load[0]}-{r}" / "last.pt")["threads"]
                            chosen.setdefault(load, {}).setdefault(split, []).append(used)
                    print(model, load, {k: round(v[-1], 2) for k, v in rates[load].items()}, flush=True)
            entry = {}
            for load, by in rates.items():
                ref_median = statistics.median(by.get("reference", by[args.splits[0]]))
                entry[load] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v,
                                   "vs_reference": statistics.median(v) / ref_median,
                                   "threads": chosen[load].get(k)} for k, v in by.items()}
                rows.append((f"{model}, {load}", "  ".join(
                    f"{k}{'' if k == 'reference' else ' ' + '/'.join(map(str, chosen[load][k])) + 'thr'} "
                    f"{statistics.median(v):.2f} (x{statistics.median(v) / ref_median:.2f})"
                    for k, v in by.items())))
            doc["models"][model] = {"img_size": SIZE.get(model, 320),
                                    "baseline": "reference" if model in PRESET else args.splits[0], **entry}
    write(args.name, doc, rows)


if __name__ == "__main__":
    main()
