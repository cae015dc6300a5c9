"""Nothing hangs silently: a thread that ends a run whose steps stopped completing.

The loop calls `beat(stage)` as it moves (waiting for data, in the step, in
validation). When no beat arrives within `timeout` seconds the watchdog prints
which stage is stuck, dumps every thread's stack to `RUN_DIR/stall-<time>.txt`,
kills the data loader workers (SIGKILL works even on a SIGSTOPped worker, so
none is left behind) and exits with EXIT_STALL, so a scheduler can restart the
run with `--resume auto`.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

EXIT_STALL = 75  # EX_TEMPFAIL: "try again", which is what --resume auto does
_ABORTING = threading.Lock()


class Watchdog:
    def __init__(self, timeout: float, run_dir: Path | None, *, poll: float = 0.5) -> None:
        self.timeout = float(timeout)
        self.run_dir = Path(run_dir) if run_dir else None
        self.poll = poll
        self._stage = "starting"
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checks: list[Callable[[], str | None]] = []

    def add_check(self, check: Callable[[], str | None]) -> None:
        """A probe run every poll (e.g. "is a data loader worker dead?"); a message it returns ends the run."""
        self._checks.append(check)

    def beat(self, stage: str) -> None:
        """Record progress; `stage` names what the loop does next (for the stall message)."""
        self._stage = stage
        self._last = time.monotonic()

    def start(self) -> Watchdog:
        if self.timeout > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="boxforge-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            for check in list(self._checks):
                problem = check()
                if problem:
                    self.abort(f"boxforge watchdog: {problem}; stuck {self._stage}.")
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        self.abort(f"boxforge watchdog: no training progress for {idle:.0f} s (limit --stall-timeout "
                   f"{self.timeout:g} s); stuck {self._stage}.")

    def abort(self, message: str) -> None:
        """Dump stacks, kill the data loader workers and exit with EXIT_STALL (never returns).

        Once per process: the watchdog thread and the loop can both see a dead worker at the same moment;
        the second caller waits for the first one's exit instead of writing a second dump.
        """
        if not _ABORTING.acquire(blocking=False):
            while True:
                time.sleep(60)
        dump = self._dump_stacks(message)
        hint = f" Stacks of all threads: {dump}." if dump else ""
        print(f"{message}{hint} Exiting with status {EXIT_STALL}; restart with --resume auto.",
              file=sys.stderr, flush=True)
        kill_workers()
        os._exit(EXIT_STALL)

    def _dump_stacks(self, message: str) -> Path | None:
        if self.run_dir is None:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            return None
        path = self.run_dir / f"stall-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as fh:
                fh.write(message + "\n\n")
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
            return path
        except OSError:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            return None


def kill_workers() -> None:
    """SIGKILL every process this one started, directly or not: data loader workers and their forkserver.

    Walking /proc finds what `multiprocessing.active_children()` misses: a worker the forkserver forked
    while its Process object was still being started. Such a worker never notices our exit (its parent is
    the forkserver), and keeps the forkserver alive in turn, so both would stay forever.
    """
    for child in multiprocessing.active_children():
        try:
            child.kill()
        except (OSError, AttributeError):
            continue
    deadline = time.monotonic() + 3
    while (pids := _descendants(os.getpid())) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.05)
    for child in multiprocessing.active_children():
        child.join(timeout=2)


def _descendants(pid: int) -> list[int]:
    """Live (not zombie) descendants of `pid`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def dead_worker(iterator: Any) -> str | None:
    """Name the first data loader worker of `iterator` that died, or None.

    Forkserver workers are not our children, so no SIGCHLD tells the loader; polling
    their exit codes is what notices a worker killed by the kernel (OOM) or by hand.
    A worker the loader has already given up on (`_workers_status` False) still counts
    when it died abnormally: torch marks a dead worker so just before raising its own
    "exited unexpectedly", and the report must still name it at once. Only a clean
    exit (status 0) of such a worker is the loader's own shutdown.
    """
    workers = getattr(iterator, "_workers", []) or []
    status = getattr(iterator, "_workers_status", None) or [True] * len(workers)
    for number, worker in enumerate(workers):
        try:
            code = worker.exitcode
        except (OSError, ValueError):
            continue
        if code is not None and (code != 0 or status[number]):
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            return f"data loader worker {number} (pid {worker.pid}) {how}"
    return None
