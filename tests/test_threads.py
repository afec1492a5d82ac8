"""Threads and contention: the command's OpenMP wait policy, num_threads of the session and onnx
backends, ONNX Runtime's session options, the packed convs' parity at every batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pathrt.errors import InputError
from pathrt.runtime import Explainer
from pathrt.threads import COMMAND_WAIT_POLICY, invoked_as_command
from tests.conftest import torchvision_target, varied_generator

ROOT = Path(__file__).resolve().parents[1]


def _environment(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in COMMAND_WAIT_POLICY}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**clean, **env})


def test_invoked_as_command_knows_the_console_script_and_module_form() -> None:
    assert invoked_as_command(["/venv/bin/python", "/venv/bin/pathrt", "bench"])
    assert invoked_as_command(["python", "-m", "pathrt.cli", "demo"])
    assert not invoked_as_command(["python", "-c", "import pathrt"])
    assert not invoked_as_command(["python", "my_server.py"])
    assert not invoked_as_command(["python"])


def test_the_command_spins_briefly_but_a_library_user_decides() -> None:
    """`pathrt` sets OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT=3000 before torch loads unless the
    user chose either (then it sets neither); importing pathrt as a library leaves the environment
    alone."""
    command = _environment("-m", "pathrt.cli", "info", "--json")
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout)["threads"]["wait_policy"] == {"OMP_WAIT_POLICY": "PASSIVE",
                                                                     "GOMP_SPINCOUNT": "3000"}
    chosen = _environment("-m", "pathrt.cli", "info", "--json", OMP_WAIT_POLICY="ACTIVE")
    assert json.loads(chosen.stdout)["threads"]["wait_policy"] == {"OMP_WAIT_POLICY": "ACTIVE",
                                                                    "GOMP_SPINCOUNT": None}
    spin = _environment("-m", "pathrt.cli", "info", GOMP_SPINCOUNT="0")
    assert "OMP_WAIT_POLICY unset, GOMP_SPINCOUNT 0" in spin.stdout
    library = _environment("-c", "import os, pathrt; print(os.environ.get('OMP_WAIT_POLICY'), "
                                 "os.environ.get('GOMP_SPINCOUNT'))")
    assert library.returncode == 0, library.stderr
    assert library.stdout.strip() == "None None"


def test_only_the_explain_commands_own_process_fixes_the_heap_threshold(monkeypatch, tmp_path: Path) -> None:
    """`pathrt explain` fixes glibc's mmap threshold (pathrt.heap) for its whole process; main() called in
    a program's process leaves the allocator alone (the test suite's own in-process calls once made its
    later training 2x slower)."""
    import pathrt.cli as cli

    calls: list[bool] = []
    monkeypatch.setattr(cli, "limit_heap_growth", lambda: calls.append(True) or True)
    argv = ["explain", "--target", str(tmp_path / "none"), "--generator", str(tmp_path / "none"), "--no-progress"]
    assert cli.main(argv) != 0 and calls == []  # in a program's process (the target is missing: an error)
    monkeypatch.setattr(cli, "invoked_as_command", lambda: True)
    assert cli.main(["info"]) == 0 and calls == []  # the command, another subcommand
    assert cli.main(argv) != 0 and calls == [True]  # the command's own process


def test_onnx_runtime_sessions_use_torchs_threads_without_spinning() -> None:
    from pathrt.export import session_options

    options = session_options()
    assert options.intra_op_num_threads == torch.get_num_threads() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(1).intra_op_num_threads == 1
    with pytest.raises(InputError, match="num_threads"):
        session_options(-1)


def test_num_threads_reaches_the_session_and_is_checked() -> None:
    target = torchvision_target("resnet18")
    generator = varied_generator(target.spec)
    explainer = Explainer(target, generator, backend="session", num_threads=1)
    assert explainer.engine.session.num_threads == 1
    with pytest.raises(InputError, match="num_threads must be >= 0"):
        Explainer(target, generator, backend="session", num_threads=-1)


_SLEEPING_THREADS = """
import json, torch
from pathrt import _C
from pathrt.opspec import parity
from pathrt.runtime import Explainer
from tests.conftest import torchvision_target, varied_generator

torch.set_num_threads(2)
policy = _C.thread_policy()
target = torchvision_target("resnet18")
generator = varied_generator(target.spec, seed=3)
session, eager = Explainer(target, generator, backend="session"), Explainer(target, generator, backend="eager")
reports = []
for batch in (1, 16):
    x = torch.randn(batch, *target.spec.input_shape, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        report = parity.compare(session.engine.session.explain(x), eager.engine.explain(x))
    reports.append([report.ok, report.describe()])
after = torch.get_num_threads()
torch.set_num_threads(1)
print(json.dumps({"policy": policy, "reports": reports, "after": after, "one": _C.thread_policy()}))
"""


def test_the_session_runs_small_steps_on_one_thread_when_threads_sleep() -> None:
    """When idle threads sleep (PASSIVE after pathrt's own short spin, GOMP_SPINCOUNT=3000) waking
    them costs 10-80 us (11.8-14.2 on an AVX-512 Xeon, 40-80 on an EPYC), so the session runs the
    steps whose work is below the measured threshold on the caller's thread alone: at batch 1 nearly
    all of ResNet-18's, at batch 16 some of each. Both still equal eager (SPEC §8), and the caller's
    thread count is restored after the call. The wake-up is measured after 300 us of serial work, as
    a parallel step after serial ones meets the team: a spin shorter than that must not pass for
    spinning threads (~1 us, OMP_WAIT_POLICY=ACTIVE). The spin is counted in pause instructions, whose
    length differs between CPUs: 10000 of them outlasted the 300 us on the Xeon (4.1 us measured)."""
    done = _environment("-c", _SLEEPING_THREADS, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="3000")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    policy = result["policy"]
    assert policy["threads"] == 2 and policy["wake_us"] > 5  # 5x a spinning team's
    assert policy["parallel_work"] == int(256e3 * policy["wake_us"])
    for ok, description in result["reports"]:
        assert ok, description
    assert result["after"] == 2
    assert result["one"] == {"threads": 1, "wake_us": 0.0, "parallel_work": 0}


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_packed_convs_keep_the_session_equal_to_eager(batch: int) -> None:
    """The session's prepacked oneDNN convs (fused bias, residual add and ReLU) are taken above a size
    and at::conv2d below it: both sides of that line, with residual blocks, hold SPEC §8."""
    from pathrt.opspec import parity

    target = torchvision_target("resnet18")
    generator = varied_generator(target.spec, seed=batch)
    x = torch.randn(batch, *target.spec.input_shape, generator=torch.Generator().manual_seed(batch))
    session = Explainer(target, generator, backend="session")
    eager = Explainer(target, generator, backend="eager")
    with torch.no_grad():
        report = parity.compare(session.engine.session.explain(x), eager.engine.explain(x))
    assert report.ok, report.describe()
