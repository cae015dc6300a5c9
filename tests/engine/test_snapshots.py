"""--snapshot-every-epochs N keeps epoch-N.pt beside the step-N.pt snapshots; --keep prunes each kind on its own."""

from __future__ import annotations

from pathlib import Path

from boxforge.checkpoint import find_resume, load_checkpoint
from boxforge.cli import main
from tests.engine.conftest import train_args


def test_epoch_snapshots_are_kept_and_pruned_apart_from_step_snapshots(synth_set: Path, tmp_path: Path,
                                                                      capsys) -> None:
    run = tmp_path / "run"
    args = train_args(synth_set, run, "--epochs", "4", "--snapshot-every-epochs", "1", "--snapshot-every", "2",
                      "--keep", "2", "--val-every", "100", "--no-report")
    assert main(args) == 0
    capsys.readouterr()
    last = load_checkpoint(run / "last.pt")
    steps_per_epoch = last["global_step"] // 4
    epochs = sorted(p.name for p in run.glob("epoch-*.pt"))
    assert epochs == ["epoch-3.pt", "epoch-4.pt"]  # epochs 1 and 2 pruned by --keep 2
    for name in epochs:
        saved = load_checkpoint(run / name)
        n = int(name[len("epoch-"):-3])
        assert (saved["epoch"], saved["iteration"], saved["global_step"]) == (n, 0, n * steps_per_epoch)
    steps = sorted(int(p.name[5:-3]) for p in run.glob("step-*.pt"))
    top = last["global_step"] - last["global_step"] % 2
    assert steps == [top - 2, top]  # the step kind keeps its own two newest
    path, _ = find_resume(run)
    assert path.name == "last.pt"
