"""`boxforge plot` on a generated 250 MB darknet log: wall time and peak memory (target: seconds, constant memory).

The log mimics `./darknet detector train ... 2>&1 | tee train.txt` of a YOLOv3 run with
subdivisions=16: per iteration a `Loaded:` line, 16 x 3 `Region 82/94/106` lines (some
with count 0 and -nan), then the loss line; pjreddie lines in the first half, AlexeyAB
`v3 (...)` lines and `avg loss` lines in the second, with a few nan, Syncing and garbage lines.
Peak RSS is measured in child processes running `plot_log` on this log and on a one-line log
(the interpreter, numpy and matplotlib alone): the difference is what the parse itself holds.
The CLI is timed too; it imports torch to build its `train` subcommand, which dominates its RSS.

Usage: python bench/plot_darknet.py [--mb 250] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from boxforge.plots.darknet_log import parse_darknet_log  # noqa: E402

LAYERS = (82, 94, 106)
SUBDIVISIONS = 16


def _region_pool(rng: random.Random, alexey: bool) -> list[str]:
    pool = []
    for _ in range(2000):
        layer = rng.choice(LAYERS)
        count = rng.choice((0, 0, 1, 2, 3, 5, 8))
        if alexey:
            vals = ("-nan",) * 2 if count == 0 else (f"{rng.random():.6f}", f"{rng.random():.6f}")
            rest = ("-nan", "-nan", "-nan", "-nan") if count == 0 else tuple(f"{rng.random():.6f}" for _ in range(4))
            pool.append(f"v3 (mse loss, Normalizer: (iou: 0.75, cls: 1.00) Region {layer} Avg (IOU: {vals[0]}, "
                        f"GIOU: {vals[1]}), Class: {rest[0]}, Obj: {rest[1]}, No Obj: 0.004512, .5R: {rest[2]}, "
                        f".75R: {rest[3]}, count: {count}, class_loss = 2.1, iou_loss = 0.4, total_loss = 2.5 ")
        elif count == 0:
            pool.append(f"Region {layer} Avg IOU: -nan, Class: -nan, Obj: -nan, No Obj: 0.000015, .5R: -nan, "
                        f".75R: -nan,  count: 0")
        else:
            v = [f"{rng.random():.6f}" for _ in range(6)]
            pool.append(f"Region {layer} Avg IOU: {v[0]}, Class: {v[1]}, Obj: {v[2]}, No Obj: {v[3]}, .5R: {v[4]}, "
                        f".75R: {v[5]},  count: {count}")
    return pool


def make_log(path: Path, megabytes: int) -> dict[str, int]:
    """Write the log, streaming; returns iteration and line counts."""
    rng = random.Random(0)
    pools = {False: _region_pool(rng, False), True: _region_pool(rng, True)}
    target = megabytes * 1_000_000
    size = iteration = lines = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("yolov3\nLearning Rate: 0.001, Momentum: 0.9, Decay: 0.0005\n")
        while size < target:
            iteration += 1
            alexey = size > target // 2
            block = ["Loaded: 0.000045 seconds"] + rng.choices(pools[alexey], k=SUBDIVISIONS * len(LAYERS))
            loss = 2000.0 / iteration + rng.random() * 0.2
            avg = "avg loss" if alexey else "avg"
            tail = ", 12.3 hours left" if alexey else ""
            if iteration % 997 == 0:
                block.append(f"{iteration}: -nan, -nan {avg}, 0.001000 rate, 3.1 seconds, {iteration * 64} images{tail}")
            else:
                block.append(f"{iteration}: {loss:.6f}, {loss * 1.1:.6f} {avg}, 0.001000 rate, 3.029000 seconds, "
                             f"{iteration * 64} images{tail}")
            if iteration % 500 == 0:
                block += ["Syncing... Done!", "\x00\x17garbage \xff line", "Resizing", "416"]
            text = "\n".join(block) + "\n"
            fh.write(text)
            size += len(text.encode("utf-8"))
            lines += len(block)
    return {"iterations": iteration, "lines": lines + 2, "bytes": path.stat().st_size}


def _child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a command run as a child process."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=250)
    parser.add_argument("--keep", type=Path, help="write the log here and keep it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    log = args.keep or tmp / "train.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    made = make_log(log, args.mb)
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    series = parse_darknet_log(log)
    parse_s = time.perf_counter() - start
    parse_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    api = [sys.executable, "-c", "import sys; from boxforge.plots import plot_log; plot_log(sys.argv[1], sys.argv[2])"]
    api_s, api_rss = _child(api + [str(log), str(tmp / "plots")])
    tiny = tmp / "tiny.txt"
    tiny.write_text("1: 5.0, 5.0 avg, 0.001 rate, 1.0 seconds, 64 images\n")
    tiny_s, tiny_rss = _child(api + [str(tiny), str(tmp / "tiny-plots")])
    cli_s, cli_rss = _child([str(Path(sys.executable).with_name("boxforge")), "plot", str(log), "--out",
                             str(tmp / "cli-plots")])
    doc = {"log": made, "generate_s": gen_s,
           "parse_s": parse_s, "parse_mb_per_s": made["bytes"] / 1e6 / parse_s,
           "plot_log_s": api_s, "plot_log_peak_rss_mib": api_rss,
           "tiny_log_plot_log_s": tiny_s, "tiny_log_peak_rss_mib": tiny_rss,
           "cli_s": cli_s, "cli_peak_rss_mib": cli_rss, "bench_process_peak_rss_mib": parse_rss,
           "parsed": {"loss_lines": series.loss_lines_total, "region_lines": series.region_lines_total,
                      "points": int(series.iteration.size), "bucket_width": series.bucket_width,
                      "skipped": dict(series.skipped)}}
    write("plot_darknet", doc, [
        ("log", f"{made['bytes'] / 1e6:.0f} MB, {made['lines']:,} lines, {made['iterations']:,} iterations"),
        ("parse only (in process)", f"{parse_s:.1f} s ({doc['parse_mb_per_s']:.0f} MB/s)"),
        ("plot_log (parse + PNG + CSV)", f"{api_s:.1f} s, peak RSS {api_rss:.0f} MiB"),
        ("plot_log on a 1-line log", f"{tiny_s:.1f} s, peak RSS {tiny_rss:.0f} MiB"),
        ("boxforge plot (CLI)", f"{cli_s:.1f} s, peak RSS {cli_rss:.0f} MiB (the CLI imports torch)"),
        ("points plotted", f"{series.iteration.size:,} (bucket width {series.bucket_width})"),
    ])
    if not args.keep:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()


if __name__ == "__main__":
    main()
