"""The call pool (csrc/include/pathrt/call_pool.h): helpers that spin only inside a session call run
pathrt's narrow parallel loops; every index once, errors raised in the caller, a late helper (other
work on its core) retired for a back-off, and session results bit-equal with the pool on and off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pathrt import _C
from pathrt.threads import COMMAND_WAIT_POLICY

ROOT = Path(__file__).resolve().parents[1]


def _loop_with_a_helper(n: int, caller_us: float, helper_us: float) -> tuple[dict, list[int], list[int]]:
    """(stats before, runs, on_helper) of the first of up to 4 loops that a helper took part in: after
    a late helper (an earlier test, or other work on this machine) the pool sits out up to 2 s. The
    indices spin, as work does (a caller that sleeps through its call looks contended to the pool)."""
    for attempt in range(4):
        before = _C.call_pool()
        runs, on_helper = _C.call_pool_loop(2, n, 1, caller_us=caller_us, helper_us=helper_us, spin=True)
        assert runs == [1] * n
        if any(on_helper) or attempt == 3:
            return before, runs, on_helper
        time.sleep(2.1)
    raise AssertionError("unreachable")


def test_a_loop_runs_every_index_once_on_the_caller_and_a_helper() -> None:
    before, _, on_helper = _loop_with_a_helper(64, 200.0, 200.0)
    assert 0 < sum(on_helper) < 64  # dynamic chunks: both threads took some
    after = _C.call_pool()
    assert after["jobs"] == before["jobs"] + 1 and after["helper_chunks"] > before["helper_chunks"]


def test_a_loop_within_its_grain_or_on_one_thread_stays_on_the_caller() -> None:
    before = _C.call_pool()
    assert _C.call_pool_loop(2, 8, 8) == ([1] * 8, [False] * 8)
    assert _C.call_pool_loop(1, 64, 1) == ([1] * 64, [False] * 64)
    assert _C.call_pool()["jobs"] == before["jobs"]


def test_an_error_in_a_chunk_reaches_the_caller_and_the_pool_goes_on() -> None:
    with pytest.raises(RuntimeError, match="failing at 40"):
        _C.call_pool_loop(2, 64, 1, caller_us=50.0, helper_us=50.0, fail_at=40, spin=True)
    # (a loaded machine may have preempted that call: then the next ones sit out a back-off first)
    before, runs, _ = _loop_with_a_helper(64, 50.0, 50.0)
    assert runs == [1] * 64 and _C.call_pool()["jobs"] == before["jobs"] + 1


def test_a_late_helper_is_waited_for_then_sits_out_a_back_off() -> None:
    """A helper that holds a chunk far longer than the caller's (here it is busy 20 ms per index, as a
    descheduled thread would hold it) makes the call wait for it, blocked; the next call runs alone."""
    before, _, on_helper = _loop_with_a_helper(16, 200.0, 20000.0)
    assert any(on_helper)
    late = _C.call_pool()
    assert late["late"] == before["late"] + 1
    runs, on_helper = _C.call_pool_loop(2, 16, 1, caller_us=10.0, helper_us=10.0, spin=True)
    assert runs == [1] * 16 and not any(on_helper)
    assert _C.call_pool()["suspended_scopes"] == late["suspended_scopes"] + 1


_CONTENDED = """
import json, os, subprocess, sys, time
from pathrt import _C
busy = None
if sys.argv[1] == "preempted":  # a busy process on the caller's only core
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    spin = ("import os, time\\nos.sched_setaffinity(0, {%d})\\nend = time.monotonic() + 60\\n"
            "while time.monotonic() < end: pass")
    busy = subprocess.Popen([sys.executable, "-c", spin % cpu])
try:
    time.sleep(0.5)
    before = _C.call_pool()
    # within its grain: 0.4 s on the caller, busy (and preempted), or blocked
    _C.call_pool_loop(2, 4, 4, caller_us=100000.0, spin=sys.argv[1] == "preempted")
    contended = _C.call_pool()
    runs, on_helper = _C.call_pool_loop(2, 16, 1, spin=True)
    print(json.dumps({"before": before, "contended": contended, "after": _C.call_pool(), "on_helper": on_helper}))
finally:
    if busy is not None:
        busy.kill()
        busy.wait()
"""


@pytest.mark.parametrize("how", ["preempted", "blocked"])
def test_a_call_that_met_other_work_makes_the_next_ones_sit_out(how: str) -> None:
    """A call whose calling thread is off its CPU for most of the call, preempted by a busy process on its
    only core or blocked (as at an OpenMP barrier on a descheduled peer): the pool counts it and the next
    call runs without helpers (and a session call on one thread, call_pool::contended)."""
    done = subprocess.run([sys.executable, "-c", _CONTENDED, how], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["contended"]["contended_scopes"] == out["before"]["contended_scopes"] + 1
    assert out["after"]["suspended_scopes"] == out["contended"]["suspended_scopes"] + 1
    assert not any(out["on_helper"])


_SESSION = """
import hashlib, json, torch
from pathrt import _C
from pathrt.opspec import parity
from pathrt.runtime import Explainer
from tests.conftest import torchvision_target, varied_generator

torch.set_num_threads(2)
torch.manual_seed(0)  # the same random target in both processes
target = torchvision_target("resnet18")
generator = varied_generator(target.spec, seed=5)
session, eager = Explainer(target, generator, backend="session"), Explainer(target, generator, backend="eager")
out = {}
for batch in (1, 2):
    x = torch.randn(batch, *target.spec.input_shape, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        result = session.engine.session.explain(x)
        report = parity.compare(result, eager.engine.explain(x))
    digest = hashlib.sha256()
    for key in ("masks", "logits", "pathway_logits", "scores"):
        digest.update(result[key].contiguous().numpy().tobytes())
    out[batch] = [report.ok, report.describe(), digest.hexdigest()]
print(json.dumps({"results": out, "pool": _C.call_pool()}))
"""


def _session_run(pool: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in COMMAND_WAIT_POLICY}
    env = {**clean, "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000", "PATHRT_CALL_POOL": pool}
    done = subprocess.run([sys.executable, "-c", _SESSION], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_session_gives_the_same_bits_with_the_pool_on_and_off() -> None:
    """ResNet-18 at batches 1 and 2 on 2 threads under the pathrt command's wait policy: with the pool,
    its helpers run chunks of the session's loops; without (PATHRT_CALL_POOL=0) none run. The results
    are bit-equal (each loop's chunks compute the same values wherever they run) and equal eager's."""
    on, off = _session_run("1"), _session_run("0")
    assert on["pool"]["enabled"] and on["pool"]["jobs"] > 0 and on["pool"]["helper_chunks"] > 0
    assert not off["pool"]["enabled"] and off["pool"]["jobs"] == 0
    for batch in ("1", "2"):
        ok, description, digest = on["results"][batch]
        assert ok, description
        assert digest == off["results"][batch][2]
