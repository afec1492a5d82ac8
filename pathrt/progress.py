"""Progress of pathrt's long loops: a live tqdm bar on a terminal; elsewhere (CI logs, files, pipes)
one plain line every few seconds and one at the end. A bar written to a file turns every redraw
into a line (tqdm's `set_postfix` redraws at once, whatever `mininterval` says): hundreds of lines
for one training run."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 5.0


class LogProgress:
    """tqdm's `update` / `set_postfix` / `close` as a line at most every `interval` seconds."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it", interval: float = LOG_INTERVAL_S,
                 file: TextIO | None = None) -> None:
        self.total, self.desc, self.n, self.unit, self.interval = total, desc, initial, unit, interval
        self.file = file if file is not None else sys.stderr
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{share}{postfix}, {elapsed:.0f} s", file=self.file,
              flush=True)
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it",
                 **kwargs: Any) -> tqdm | LogProgress:
    """A tqdm bar when stderr is a terminal, else a `LogProgress` (a line every few seconds); with
    `enabled` False a disabled bar (prints nothing)."""
    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, disable=not enabled, initial=initial, unit=unit, mininterval=0.1,
                    **kwargs)
    return LogProgress(total, desc, initial, unit)
