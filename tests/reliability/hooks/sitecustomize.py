"""Fault injection for the reliability tests, active only in processes started with these variables set.

tests/reliability/conftest.py `start_training(hooks=...)` puts this folder on PYTHONPATH, so Python imports
this file at start-up in the training process and in its forkserver (hence in every data loader worker).
Nothing here is part of boxforge; without the variables it does nothing.

BOXFORGE_TEST_KILL_AFTER_SAVE=N  SIGKILL the process right after its N-th checkpoint save returned.
BOXFORGE_TEST_KILL_IN_SAVE=N     during the N-th save, once the temp file is written: cut it to half its size
                                 (a torn write) and SIGKILL the process before it is synced or renamed.
BOXFORGE_TEST_STALL_READ=FILE    once FILE exists, a data loader worker that reads an image blocks forever
                                 in a read(2) on a pipe nobody writes to (a hung network file system).
"""

import os
import signal

if os.environ.get("BOXFORGE_TEST_KILL_AFTER_SAVE") or os.environ.get("BOXFORGE_TEST_KILL_IN_SAVE"):
    import boxforge.checkpoint as _ckpt

    _after = int(os.environ.get("BOXFORGE_TEST_KILL_AFTER_SAVE") or 0)
    _during = int(os.environ.get("BOXFORGE_TEST_KILL_IN_SAVE") or 0)
    _saves = [0]
    _real_save = _ckpt.save_checkpoint

    class _TornOs:
        """`os` for boxforge.files (the atomic writer) only: fsync of the N-th save's temp file tears it and kills us."""

        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if _saves[0] + 1 == _during and ".pt.tmp-" in os.path.basename(target):  # a checkpoint's temp
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return os.fsync(fd)

    def _save(state, path):
        result = _real_save(state, path)
        _saves[0] += 1
        if _saves[0] == _after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    import boxforge.files as _files

    _files.os = _TornOs()
    _ckpt.save_checkpoint = _save

if os.environ.get("BOXFORGE_TEST_STALL_READ"):
    import multiprocessing

    import boxforge.data.cache as _cache
    import boxforge.data.loading as _loading

    _flag = os.environ["BOXFORGE_TEST_STALL_READ"]
    _real_read = _loading.read_image

    def _read_image(path, *args, **kwargs):
        if multiprocessing.parent_process() is not None and os.path.exists(_flag):
            reader, _writer = os.pipe()
            os.read(reader, 1)  # blocks in the kernel: no writer ever writes
        return _real_read(path, *args, **kwargs)

    _loading.read_image = _read_image  # uncached reads
    _cache.read_image = _read_image  # a --cache ram/auto first read
