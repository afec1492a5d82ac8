"""Threads and the OpenMP wait policy of pathrt's own processes (README "Threads").

torch's OpenMP pool (GNU libgomp) spins its idle threads for a while after every parallel region by
default. On a quiet machine that saves a few microseconds per op; on a host where other work runs
beside us it is ruinous: a batch-1 explanation of the embedded model took over 25 s instead of 8 ms
with one busy process per core beside it (measured, `pathrt bench`'s contention row). libgomp reads
OMP_WAIT_POLICY once, when torch loads, so it can only be chosen before `import torch`:

* the `pathrt` command (and its server) sets OMP_WAIT_POLICY=PASSIVE unless you set it yourself:
  safe on shared hosts. Waking a sleeping thread costs ~80 us per parallel region, so the C++
  session runs every step too small to pay for that on the calling thread alone
  (`pathrt._C.thread_policy()`), and a batch-1 call costs about what it costs with spinning
  threads; Python-side backends still pay it per op (OMP_WAIT_POLICY=ACTIVE pathrt ... restores
  spinning for a dedicated machine);
* a program that imports pathrt as a library keeps its own environment: set OMP_WAIT_POLICY before
  starting Python (or before importing torch).

This module imports nothing heavy: `pathrt/__init__.py` runs it before torch loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMMAND_WAIT_POLICY = "PASSIVE"


def invoked_as_command(argv: list[str] | None = None) -> bool:
    """Whether this process is the `pathrt` command: its console script, or `python -m pathrt.cli`."""
    argv = list(sys.orig_argv if argv is None else argv)
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] == "pathrt.cli":
        return True
    return len(argv) >= 2 and Path(argv[1]).name == "pathrt"


def choose_wait_policy() -> str | None:
    """Sets OMP_WAIT_POLICY=PASSIVE for the pathrt command when neither the user nor an earlier torch
    import decided it; returns the policy in effect (None: libgomp's default)."""
    if "torch" not in sys.modules and invoked_as_command():
        os.environ.setdefault("OMP_WAIT_POLICY", COMMAND_WAIT_POLICY)
    return os.environ.get("OMP_WAIT_POLICY")
