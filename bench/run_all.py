"""`make bench`: every benchmark in turn at the sizes the suite promises (< 30 min on 2 cores), then the README table.

Each script prints its table and writes bench/results/<name>.json; this writes
bench/results/suite.json with each script's wall time and the total. A script that fails
is reported and the rest still run (exit status 1 at the end).

    python bench/run_all.py [--only data_pipeline train_speed ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = [
    ("check_speed", ["--images", "20000"]),
    ("eval_speed", ["--images", "5000", "--classes", "20", "--dets", "100", "--coco-images", "500", "--repeats", "3"]),
    # one thread per backend: on 2 shared cores, 2-thread eager timings swung 3-10x run to run (OpenMP spin-waits)
    ("inference_speed", ["--threads", "1", "--repeats", "20"]),
    ("data_pipeline", ["--synthetic", "150", "--workers", "2", "--repeats", "3"]),
    ("decode_speed", []),  # TorchCodec against torchvision.io and PIL: read_image's decoder (~1 min)
    ("slow_storage", []),  # the pack's purpose: JPEGs on a store with per-read latency (simulated) vs a local pack
    ("train_speed", ["--images", "200", "--epochs", "5", "--ssdlite-iters", "8", "--vgg-iters", "4"]),
    # the default thread count idle and with one core busy (the full sweep: thread_split.py at its defaults, ~15 min)
    ("thread_split", ["--models", "ssdlite320_mobilenet_v3_large", "--repeats", "1"]),
    ("step_speed", []),
    ("gpu_train", []),  # without CUDA: keeps a recorded GPU figure, else writes "no GPU"
    ("memory_rss", ["--epochs", "4", "--images", "160", "--index-size", "60000"]),
    ("plot_darknet", []),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="run only these scripts")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::UserWarning"}
    times, failed = {}, []
    start = time.perf_counter()
    for name, extra in SUITE:
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        print(f"--- {name} {' '.join(extra)}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *extra], env=env)
        times[name] = round(time.perf_counter() - t, 1)
        if code:
            failed.append(name)
            print(f"--- {name} FAILED (exit {code})", flush=True)
    total = round(time.perf_counter() - start, 1)
    subprocess.call([sys.executable, str(HERE / "table.py")])
    if not args.only:
        doc = {"scripts_s": times, "total_s": total, "target_s": 1800, "failed": failed,
               "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "note": os.environ.get("BENCH_NOTE")}
        (HERE / "results" / "suite.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"make bench: {total:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
