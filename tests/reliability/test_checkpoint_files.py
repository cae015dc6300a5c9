"""Checkpoints: atomic writes, refusal of unsafe or broken files, fallback to the previous good one, and a
full disk that loses nothing. (Moved here from tests/engine/test_checkpoint.py and extended.)"""

from __future__ import annotations

import os
import random
import pickle
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from boxforge.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, find_resume, load_checkpoint, prune_snapshots,
                                 save_checkpoint)
from tests.reliability.conftest import run_cli, train_args


def state(step: int) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model": {"w": torch.full((3,), float(step))}, "epoch": 0,
            "iteration": step, "global_step": step}


def test_save_and_load_round_trip(tmp_path):
    path = save_checkpoint(state(5), tmp_path / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["global_step"] == 5 and torch.equal(loaded["model"]["w"], torch.full((3,), 5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    torch.save({"model": Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused|not a readable checkpoint"):
            load_checkpoint(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_random_files_are_refused(tmp_path):
    save_checkpoint(state(1), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(random.Random(0).randbytes(4096))
    for name in ("trunc.pt", "noise.pt"):
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(tmp_path / name)
    # noise behind a pickle header drives torch's restricted unpickler into many exception types
    # (IndexError "pop from empty list", TypeError, struct.error, ...): each is the same clear error
    rng = random.Random(1)
    for i in range(300):
        (tmp_path / "n.pt").write_bytes(b"\x80\x02" + rng.randbytes(rng.randint(1, 64)) if i % 2 else
                                        rng.randbytes(rng.randint(1, 256)))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "n.pt")


def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path):
    save_checkpoint(state(4), tmp_path / "step-4.pt")
    save_checkpoint(state(8), tmp_path / "step-8.pt")
    (tmp_path / "last.pt").write_bytes(b"garbage")
    messages = []
    path, loaded = find_resume(tmp_path, log=messages.append)
    assert path.name == "step-8.pt" and loaded["global_step"] == 8
    assert any("last.pt" in m for m in messages)


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 10):
        save_checkpoint(state(step), tmp_path / f"step-{step}.pt")
    removed = prune_snapshots(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step-1.pt", "step-2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10.pt", "step-3.pt"]


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    """A file-size limit makes the write fail like a full disk; the old last.pt must survive intact."""
    save_checkpoint(state(1), tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, torch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from boxforge.checkpoint import save_checkpoint, DiskFullError, CHECKPOINT_FORMAT
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        try:
            save_checkpoint({{"format": CHECKPOINT_FORMAT, "model": {{"w": torch.zeros(100000)}}}}, r"{tmp_path / 'last.pt'}")
        except DiskFullError as exc:
            print("DISKFULL", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "DISKFULL" in out.stdout and "disk full" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _bad_last(kind: str, folder: Path) -> None:
    good = (folder / "step-8.pt").read_bytes()
    if kind == "truncated":
        (folder / "last.pt").write_bytes(good[: len(good) // 3])
    elif kind == "random":
        (folder / "last.pt").write_bytes(random.Random(2).randbytes(len(good)))
    else:
        torch.save({**state(12), "model": Evil()}, folder / "last.pt")


@pytest.mark.parametrize("kind", ["truncated", "random", "pickle_with_code"])
def test_each_kind_of_bad_checkpoint_is_refused_and_resume_falls_back(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(state(4), tmp_path / "step-4.pt")
    save_checkpoint(state(8), tmp_path / "step-8.pt")
    _bad_last(kind, tmp_path)
    messages: list[str] = []
    path, loaded = find_resume(tmp_path, log=messages.append)
    assert path.name == "step-8.pt" and loaded["global_step"] == 8
    [message] = messages
    assert message.startswith(f"skipping {tmp_path / 'last.pt'}: ")
    expected = "refused: the file needs pickled code" if kind == "pickle_with_code" else "not a readable checkpoint"
    assert expected in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_disk_full_during_training_stops_cleanly_or_continues_per_flag(synth_set, tmp_path):
    run = tmp_path / "run"
    first = run_cli(train_args(synth_set, run, "--iterations", "4", "--val-every", "100"))
    assert first.returncode == 0, first.stderr
    before = (run / "last.pt").read_bytes()
    assert len(before) > 2_000_000  # so a 2 MB file-size limit stops every checkpoint write
    more = train_args(synth_set, run, "--iterations", "8", "--val-every", "100", "--resume", "auto")

    stop = run_cli(more, preexec_fn=_limit_file_size(2_000_000))
    assert stop.returncode == 2, stop.stderr
    assert "Traceback" not in stop.stderr
    assert "disk full while saving the checkpoint; the previous checkpoint is intact" in stop.stderr
    assert str(run / "last.pt") in stop.stderr
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp-*"))

    go_on = run_cli(more + ["--on-disk-full", "continue"], preexec_fn=_limit_file_size(2_000_000))
    assert go_on.returncode == 0, go_on.stderr
    assert "training continues (--on-disk-full continue)" in go_on.stdout
    assert "done: 8 steps" in go_on.stdout
    assert (run / "last.pt").read_bytes() == before  # every later save failed; the old one is untouched
    assert not list(run.glob(".*.tmp-*"))
