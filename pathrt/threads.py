"""Threads and the OpenMP wait policy of pathrt's own processes (README "Threads and shared hosts").

torch's OpenMP pool (GNU libgomp) spins its idle threads for ~3 ms after every parallel region by
default. On a quiet machine that saves the wake-up (~80 us on 2 cores) per op; beside other
multi-threaded workers on the same cores the spinning threads take their CPU time (a batch-1 session
call of the embedded model beside a batch-64 pathrt worker: 1.7 ms sleeping, 34 ms with threads that
spin ~300 us and run the call's small steps in parallel). libgomp reads OMP_WAIT_POLICY and
GOMP_SPINCOUNT once, when torch loads, so they can only be chosen before `import torch`:

* the `pathrt` command (and its server) sets OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT=3000 unless
  you set either yourself: idle threads spin briefly (tens of microseconds) and then sleep. Back-to-
  back parallel ops (batch 64, the Python-side backends) find the threads still awake, a neighbour
  loses at most that spin per region, and the C++ session runs the steps too small to pay for a full
  wake-up on the calling thread alone (`pathrt._C.thread_policy()`). Measured against plain PASSIVE
  (no spin): session at batch 64 29 -> 21 ms, native at batch 1 6.3 -> 2.3 ms, batch-1 session calls
  unchanged beside busy processes and beside another pathrt worker. OMP_WAIT_POLICY=ACTIVE pathrt ...
  spins for good on a dedicated machine;
* a program that imports pathrt as a library keeps its own environment: set them before starting
  Python (or before importing torch).

This module imports nothing heavy: `pathrt/__init__.py` runs it before torch loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMMAND_WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}


def invoked_as_command(argv: list[str] | None = None) -> bool:
    """Whether this process is the `pathrt` command: its console script, or `python -m pathrt.cli`."""
    argv = list(sys.orig_argv if argv is None else argv)
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] == "pathrt.cli":
        return True
    return len(argv) >= 2 and Path(argv[1]).name == "pathrt"


def choose_wait_policy() -> None:
    """Sets the command's wait policy (COMMAND_WAIT_POLICY) for the pathrt command when neither the
    user (either variable) nor an earlier torch import decided it (`wait_policy()` reads the result)."""
    if "torch" not in sys.modules and invoked_as_command() and not COMMAND_WAIT_POLICY.keys() & os.environ.keys():
        os.environ.update(COMMAND_WAIT_POLICY)


def wait_policy() -> dict[str, str | None]:
    """OMP_WAIT_POLICY and GOMP_SPINCOUNT as this process's environment has them (None: unset)."""
    return {name: os.environ.get(name) for name in COMMAND_WAIT_POLICY}


def worker_wait_policy() -> dict[str, str]:
    """The environment for pathrt's own worker processes (Ray actors): this process's choice where
    it made one, else the command's."""
    return {name: value for name, value in wait_policy().items() if value} or dict(COMMAND_WAIT_POLICY)


def describe_wait_policy(policy: dict[str, str | None] | None = None) -> str:
    """One line for reports: `OMP_WAIT_POLICY PASSIVE, GOMP_SPINCOUNT 3000` (unset: libgomp's default)."""
    policy = wait_policy() if policy is None else policy
    return ", ".join(f"{name} {value or 'unset'}" for name, value in policy.items()) + (
        " (libgomp's default: spin ~3 ms)" if not any(policy.values()) else "")
