"""A pseudo-terminal for tests whose output must go to a terminal (progress bars) rather than a pipe.

The terminal is raw (no "\\n" -> "\\r\\n" translation), so every carriage return in the output is one the
program wrote, and it reports a size, as a real terminal does.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import tty
from typing import TextIO


class Terminal:
    """`fd` (or `open_writer()`) is the terminal side a program writes to; `close()` returns all it wrote."""

    def __init__(self, columns: int = 100, rows: int = 24) -> None:
        self._master, self.fd = os.openpty()
        tty.setraw(self.fd)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)  # a full pty would block the writer
        self._reader.start()
        self._writer: TextIO | None = None

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every writer has closed its end
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def open_writer(self) -> TextIO:
        """A line-buffered text file on the terminal (`isatty()` is True), e.g. to stand in for sys.stdout."""
        self._writer = os.fdopen(self.fd, "w", buffering=1, encoding="utf-8")
        return self._writer

    def close(self) -> str:
        """Close this side (a subprocess writing to `fd` must have exited) and return everything written."""
        if self._writer is not None:
            self._writer.close()
        else:
            os.close(self.fd)
        self._reader.join(timeout=30)
        os.close(self._master)
        return b"".join(self._chunks).decode("utf-8", errors="replace")
