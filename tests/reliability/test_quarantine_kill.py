"""`check --fix` killed midway loses nothing: the manifest, written before the first move, describes every
file the run may have moved, and `check --undo` puts every one back byte-identical.

(Replaces tests/data/test_check.py's in-process simulation with a real SIGKILL of the command.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from boxforge.cli import main
from tests.data.test_check import _broken_voc, _tree_digest

# Runs `boxforge check ROOT --fix --quarantine Q` and SIGKILLs itself at move number KILL_AT (0-based):
# "before" that move starts, or "inside" it, after the file was copied to the quarantine and before the
# original is removed (the path shutil.move takes across file systems, forced here with EXDEV).
SCRIPT = textwrap.dedent("""
    import errno, os, shutil, signal, sys
    root, qdir, kill_at, where = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    moves = [0]
    real_move, real_unlink = shutil.move, os.unlink

    def move(src, dst):
        if moves[0] == kill_at and where == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        moves[0] += 1
        return real_move(src, dst)

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def unlink(path, *args, **kwargs):
        if moves[0] - 1 == kill_at and str(path).startswith(root):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_unlink(path, *args, **kwargs)

    shutil.move = move
    if where == "inside":
        os.rename, os.unlink = cross_device, unlink
    from boxforge.cli import main
    sys.exit(main(["check", root, "--fix", "--quarantine", qdir]))
""")


@pytest.mark.parametrize("kill_at,where", [(0, "before"), (5, "before"), (3, "inside")])
def test_fix_killed_midway_can_be_undone_completely(tmp_path, kill_at, where):
    root = _broken_voc(tmp_path / "voc")
    before = _tree_digest(root)
    q = tmp_path / "q"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(q), str(kill_at), where],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    moves = json.loads((q / "manifest.json").read_text())["moves"]
    assert len(moves) > 5  # every planned move is described, not just those done before the kill
    sources = {Path(m["source"]) for m in moves}
    missing = {Path(root, p) for p in before} - {p for p in root.rglob("*") if p.is_file()}
    assert missing <= sources, "a file left the dataset without a manifest entry"
    assert len(missing) == kill_at  # the moves finished before the kill (an interrupted copy keeps its source)
    assert main(["check", "--undo", str(q / "manifest.json")]) == 0
    assert _tree_digest(root) == before
    assert not [p for p in q.rglob("*") if p.is_file() and p.name != "manifest.json"], "a quarantined copy left"
