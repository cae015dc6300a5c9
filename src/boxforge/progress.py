"""Progress a person can see: a tqdm bar on a terminal, periodic plain lines otherwise.

The one place in boxforge that decides how long work shows itself. A command opens
`progress(total, label=..., unit=...)` around its loop, calls `update()` as items finish and
`write()` for any other line it prints meanwhile; how that looks is chosen here, once per
progress, from where the output goes:

- "bar": the output is a terminal. tqdm draws the bar (percentage, count, rate, elapsed<left,
  the caller's postfix) and `write()` goes through `tqdm.write`, so log lines appear above the
  bar instead of tearing it.
- "lines": the output is a file, a pipe, CI, `nohup`. No carriage returns: logs stay greppable.
  Either the caller's own line (`update(line=...)`, e.g. training's `epoch 3 iter 120/500 ...`,
  printed exactly when the caller gives it), or with `every` a generic
  `label: done/total images, rate img/s` at most every `every` seconds. A run shorter than that
  prints nothing, so short commands say exactly what they said before progress existed.
- "off": no progress at all; `write()` lines still print.

`BOXFORGE_PROGRESS=bar|lines|off` overrides the choice (unset or empty: a bar exactly when the
stream is a terminal). tqdm is imported only when a bar is drawn; torch never is, so commands that
need no model still start without it (tests/test_cli_startup.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from boxforge.errors import SettingError

ENV = "BOXFORGE_PROGRESS"
MODES = ("bar", "lines", "off")
EVERY_S = 5.0  # seconds between generic plain lines
# A count's unit (plural, as in "12/60 images") -> the short form in a rate ("3.4 img/s").
_RATE_UNIT = {"images": "img", "batches": "batch", "archives": "archive"}

NO_RATE = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"  # tqdm's bar less its rate
FALLBACK_SIZE = (100, 24)  # a terminal that reports no size (0x0, as some containers' ttys): tqdm would draw nothing

T = TypeVar("T")


def progress_setting() -> str | None:
    """The mode BOXFORGE_PROGRESS asks for, None when unset or empty; an unknown value is an error."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if not chosen:
        return None
    if chosen not in MODES:
        raise SettingError(f"{ENV}={os.environ[ENV]!r}: allowed {', '.join(MODES)} "
                           "(or unset: a bar on a terminal, plain lines otherwise)")
    return chosen


def progress_mode(stream: TextIO) -> str:
    """"bar", "lines" or "off" for output going to `stream`: the setting, else a bar exactly on a terminal."""
    chosen = progress_setting()
    if chosen is not None:
        return chosen
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty else "lines"


def _has_size(stream: TextIO) -> bool:
    """Whether the terminal reports its columns and lines (tqdm sizes its bar from them)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return size.columns > 0 and size.lines > 0


class Progress:
    """The progress of `total` items (see the module docstring); use as a context manager.

    label: what is done ("eval", "epoch 3"). unit: the items, plural ("images", "batches").
    stream: where progress goes (default: sys.stderr at construction). initial: items already done
    (a resumed epoch). every: seconds between generic plain lines; None when the caller gives its
    own lines through `update(line=...)`. minimum: eval's and predict's rule: a total below it shows
    no plain lines, one at or above it also gets a closing line at the end, however quick; None: a
    closing line only after a periodic one (a short run stays silent). enabled: False shows nothing
    but `write()` lines (what `progress=False` and ranks > 0 ask for); so does a total of 0. rate: False
    leaves tqdm's items/s out of the bar, for a caller whose postfix has the rate that matters (training's
    img/s beside a bar of batches), so the bar keeps its width.
    """

    def __init__(self, total: int, *, label: str, unit: str = "images", stream: TextIO | None = None,
                 initial: int = 0, every: float | None = EVERY_S, minimum: int | None = None,
                 enabled: bool = True, rate: bool = True) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr  # looked up now, so redirections apply
        self.mode = progress_mode(self.stream) if enabled and total > 0 else "off"  # nothing to do: nothing shown
        self.done = initial
        self.every, self.minimum = every, minimum
        self._start = self._last = time.perf_counter()
        self._printed = self._finished = self._closed = False  # _printed: a progress line was shown
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            size = {"dynamic_ncols": True} if _has_size(self.stream) else dict(zip(("ncols", "nrows"), FALLBACK_SIZE))
            shape = {} if rate else {"bar_format": NO_RATE}
            self._bar = tqdm(total=total, initial=initial, desc=label, unit=self.rate_unit, file=self.stream,
                             leave=True, **size, **shape)

    @property
    def rate_unit(self) -> str:
        return _RATE_UNIT.get(self.unit, self.unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, *, line: str | None = None, **postfix: Any) -> None:
        """`n` more items done. line: the caller's plain line for this moment, shown only as lines;
        postfix: name -> value shown beside the bar (loss, lr, ...), only with a bar."""
        self.done += n
        if self.mode == "bar":
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            if line is not None:
                self._print(line, progress_line=True)
            elif self.every is not None:
                self._maybe_line()

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Each of `items`, counting one done as the next is asked for (and the last when the loop ends)."""
        for item in items:
            yield item
            self.update(1)

    def write(self, line: str) -> None:
        """A log line (not progress): above the bar while one is drawn, else printed as it is."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
            self.stream.flush()
        else:
            self._print(line)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _maybe_line(self) -> None:
        """The generic plain line, at most every `every` seconds, and the closing one (see the class)."""
        now = time.perf_counter()
        if self._finished or (self.minimum is not None and self.total < self.minimum):
            return
        self._finished = self.done >= self.total
        closing = self._finished and (self.minimum is not None or self._printed)
        if now - self._last < self.every and not closing:
            return
        self._last = now
        seconds = now - self._start
        rate = self.done / seconds if seconds > 0 else float("nan")
        self._print(f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.rate_unit}/s",
                    progress_line=True)

    def _print(self, line: str, progress_line: bool = False) -> None:
        print(line, file=self.stream, flush=True)
        self._printed = self._printed or progress_line


def progress(total: int, *, label: str, unit: str = "images", stream: TextIO | None = None,
             **options: Any) -> Progress:
    """A `Progress` (options: initial, every, minimum, enabled, rate); `with progress(...) as shown: ...`."""
    return Progress(total, label=label, unit=unit, stream=stream, **options)
