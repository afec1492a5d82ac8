"""Progress bars of pathrt's long loops: live on a terminal, a few lines a minute in logs."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar; redraws at most every 10 s when stderr is not a terminal (CI logs, files)."""
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=interval, **kwargs)
