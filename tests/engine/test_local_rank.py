"""`python -m torch.distributed.launch` passes `--local-rank=N` (torch >= 2.0) or `--local_rank=N` before the
script's own arguments when --use-env is not given: `boxforge train` accepts both spellings, in both places."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from boxforge.cli import main
from boxforge.engine.distributed import DistInfo, from_env
from boxforge.errors import BoxforgeError
from tests.engine.conftest import train_args


@pytest.mark.parametrize("where", ["after train: --local-rank 0", "before train: --local_rank=0"])
def test_a_single_process_run_with_local_rank_trains(synth_set: Path, tmp_path: Path, where: str, capsys) -> None:
    args = train_args(synth_set, tmp_path / "run", "--iterations", "2", "--val-every", "100")
    args = [*args, "--local-rank", "0"] if where.startswith("after") else ["--local_rank=0", *args]
    assert main(args) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt").is_file()
    assert "local_rank" not in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # not a setting


def test_torch_distributed_launch_itself(synth_set: Path, tmp_path: Path) -> None:
    """The launcher as users run it (one process, no --use-env): it inserts `--local-rank=0` before `train`."""
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "1", "-m", "boxforge",
           *train_args(synth_set, tmp_path / "run", "--iterations", "1", "--val-every", "100")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 1 steps" in done.stdout


def test_the_argument_stands_in_for_a_missing_local_rank_variable(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert from_env(1) == DistInfo(rank=1, local_rank=1, world_size=2)
    assert from_env() == DistInfo(rank=1, local_rank=0, world_size=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env(0).local_rank == 1  # the environment wins
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env(3) == DistInfo()  # one process: nothing to place
    with pytest.raises(BoxforgeError, match="--local-rank -1: allowed an integer >= 0"):
        from_env(-1)


def test_local_rank_on_another_command_is_one_error(tmp_path: Path, capsys) -> None:
    assert main(["--local-rank=0", "check", str(tmp_path)]) == 2
    assert "--local-rank is for train" in capsys.readouterr().err
