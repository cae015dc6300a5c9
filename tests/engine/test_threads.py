"""The thread count of a training run: its share of the cores whatever the load (so a seeded run repeats),
less the busy cores only with --threads auto; kept on resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boxforge.checkpoint import load_checkpoint
from boxforge.config import TrainConfig
from boxforge.engine.distributed import DistInfo
from boxforge.engine.threads import busy_cores, keep_checkpoint_threads, set_threads
from tests.engine.conftest import run_cli, train_args


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch: pytest.MonkeyPatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(before)


def _threads(monkeypatch: pytest.MonkeyPatch, cores: int, busy: float | None, workers: int = 2,
             device: str = "cpu", local_ranks: int | None = None,
             threads: int | str | None = None) -> tuple[int, str | None]:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    if local_ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    else:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    note = set_threads(TrainConfig(data=["x"], workers=workers, threads=threads), DistInfo(), torch.device(device),
                       probe=lambda cpus: busy)
    return torch.get_num_threads(), note


def test_idle_cores_all_go_to_training_even_beside_workers(monkeypatch) -> None:
    assert _threads(monkeypatch, cores=4, busy=0.2) == (4, None)  # a light background load does not count
    assert _threads(monkeypatch, cores=4, busy=None) == (4, None)  # no /proc/stat: assume idle
    assert _threads(monkeypatch, cores=4, busy=0.0, local_ranks=2) == (2, None)  # cores split between local ranks
    assert _threads(monkeypatch, cores=4, busy=0.0, device="cuda") == (2, None)  # on a GPU the workers come first


def test_load_at_start_is_reported_but_does_not_change_the_default_count(monkeypatch) -> None:
    threads, note = _threads(monkeypatch, cores=2, busy=0.9)
    assert threads == 2  # the same command, the same seed: the same weights, busy or not
    assert "0.9 of the 2 cores" in note and "--threads auto would take 1" in note and "repeats exactly" in note
    assert _threads(monkeypatch, cores=2, busy=0.9, threads=2) == (2, None)  # --threads wins, no probe talk


def test_threads_auto_leaves_out_cores_busy_elsewhere_and_says_it_is_not_bit_identical(monkeypatch) -> None:
    threads, note = _threads(monkeypatch, cores=2, busy=0.9, threads="auto")
    assert threads == 1
    assert "threads 1 of 2 (--threads auto)" in note and "not bit-identical" in note and "--threads 2" in note
    assert _threads(monkeypatch, cores=2, busy=2.0, threads="auto")[0] == 1  # never below one
    assert _threads(monkeypatch, cores=4, busy=0.2, threads="auto") == (4, None)  # a light load does not count


def test_busy_cores_reads_per_cpu_ticks_of_our_cpus_only(tmp_path: Path, monkeypatch) -> None:
    stat = tmp_path / "stat"
    # cpu0 busy for 90 of 100 ticks, cpu1 for 10 of 100, cpu2 (not ours) fully busy
    ticks = iter([
        "cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0\ncpu2 100 0 0 0 0 0 0 0\n",
        "cpu  0 0 0 0 0 0 0 0\ncpu0 180 0 10 110 0 0 0 0\ncpu1 105 0 5 190 0 0 0 0\ncpu2 200 0 0 0 0 0 0 0\n"])
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: next(ticks) if self == stat else real_read(self, *a, **k))
    assert busy_cores({0, 1}, seconds=0, stat=stat) == pytest.approx(1.0)
    assert busy_cores({0}, seconds=0, stat=tmp_path / "missing") is None
    live = busy_cores(os.sched_getaffinity(0), seconds=0.05)
    assert live is not None and 0.0 <= live <= len(os.sched_getaffinity(0))


def test_a_resumed_run_keeps_the_checkpoints_thread_count(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    torch.set_num_threads(1)
    assert "as the checkpoint was trained" in keep_checkpoint_threads(TrainConfig(data=["x"]), 2)
    assert torch.get_num_threads() == 2
    assert keep_checkpoint_threads(TrainConfig(data=["x"]), 2) is None  # already so
    assert keep_checkpoint_threads(TrainConfig(data=["x"], threads=1), 1) is None  # --threads wins
    assert keep_checkpoint_threads(TrainConfig(data=["x"]), None) is None  # an older checkpoint
    assert "will not be bit-identical" in keep_checkpoint_threads(TrainConfig(data=["x"]), 16)
    assert torch.get_num_threads() == 2


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_a_seeded_run_gives_identical_weights_idle_and_beside_a_busy_process(synth_set: Path, tmp_path: Path) -> None:
    """The issue's measurement, as a test: the same 12-step command, once on quiet cores and once with one core
    kept busy by a spinning process, must end with bit-identical weights (it ended 0.063 apart when the count
    followed the load)."""
    cores = len(os.sched_getaffinity(0))

    def run(out: Path, busy: bool) -> subprocess.CompletedProcess:
        args = train_args(synth_set, out, "--iterations", "12")
        del args[args.index("--threads"):args.index("--threads") + 2]
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            return run_cli(args)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()

    quiet, loaded = run(tmp_path / "quiet", busy=False), run(tmp_path / "busy", busy=True)
    assert quiet.returncode == 0 and loaded.returncode == 0, quiet.stderr + loaded.stderr
    assert f"threads {cores}" in quiet.stdout and f"threads {cores}" in loaded.stdout
    if cores > 1:  # the log names the load and the flag that would adapt to it
        assert "--threads auto would take" in loaded.stdout + loaded.stderr
    a, b = _weights(tmp_path / "quiet" / "last.pt"), _weights(tmp_path / "busy" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a seeded run changed with the machine's load"
    assert load_checkpoint(tmp_path / "busy" / "last.pt")["threads"] == cores


def test_boxforge_train_threads_auto_leaves_out_a_core_kept_busy_and_records_it(synth_set: Path, tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    args = train_args(synth_set, tmp_path / "run", "--iterations", "1", "--workers", "1")
    args[args.index("--threads") + 1] = "auto"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = run_cli(args)
    finally:
        spinner.kill()
        spinner.wait()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    expected = max(1, cores - 1)
    assert f"threads {expected}" in out
    if expected < cores:
        assert f"threads {expected} of {cores} (--threads auto): other processes kept" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["threads"] == expected
