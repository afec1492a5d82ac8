"""`pathrt profile`: per-phase and per-op breakdown with a trace, on every CPU backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pathrt.benchmarks.harness import build_models
from pathrt.benchmarks.profile import run_profile
from pathrt.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _check(out: Path, phases: list[str]) -> dict:
    data = json.loads((out / "profile.json").read_text())
    assert [p["name"] for p in data["phases"]] == phases
    assert all(p["ms"] > 0 and p["flops"] > 0 and p["bytes"] > 0 and p["gflops_per_s"] > 0 for p in data["phases"])
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])  # real ops, from C++ too
    text = (out / "profile.md").read_text()
    assert "## Phases" in text and "## Ops" in text and "% of matmul peak" in text
    return data


def test_profile_command_on_the_session(tmp_path: Path) -> None:
    out = tmp_path / "profile"
    result = subprocess.run([sys.executable, "-m", "pathrt.cli", "profile", "--backend", "session", "--batch", "2",
                             "--repeats", "2", "--ops", "200", "--workdir", str(tmp_path / "no-demo"),
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    data = _check(out, ["plain", "generator", "pathway"])
    assert data["backend"] == "session"
    # the generator's own phases, in µs, fit inside the generator phase
    generator_ms = next(p["ms"] for p in data["phases"] if p["name"] == "generator")
    assert set(data["generator_phases_us"]) == {"rfe_convs", "rfe_tail", "encoder", "decoder"}
    assert 0 < sum(data["generator_phases_us"].values()) <= 1e3 * generator_ms * 1.5
    assert "The generator's own phases" in (out / "profile.md").read_text()
    # the session's phases are ranges of the trace (Perfetto shows which ops belong to which phase)
    names = {e.get("name") for e in json.loads((out / "trace.json").read_text())["traceEvents"]}
    assert {"pathrt.session.plain", "pathrt.session.generator", "pathrt.session.pathway"} <= names
    # and so is each step, named by the target's module: the convs of the plain pass, those after the
    # first pathway layer on the pathway pass (it reuses the first conv's output), the classifier's
    # linears in the joint tail; --ops 200 lists them all in the table
    steps = {f"pathrt.plain.features.{i}" for i in (0, 4, 8, 11, 15)}
    steps |= {f"pathrt.pathway.features.{i}" for i in (4, 8, 11, 15)}
    steps |= {"pathrt.tail.classifier.0", "pathrt.tail.classifier.3"}
    assert steps <= names
    table = (out / "profile.md").read_text()
    assert all(f"| {step} |" in table for step in steps)


@pytest.mark.parametrize(("backend", "phases"), [("native", ["plain", "generator", "pathway"]),
                                                 ("eager", ["plain", "generator", "pathway"]),
                                                 ("onnx", ["whole (one ONNX Runtime call)"])])
def test_profile_splits_each_backend(tmp_path: Path, backend: str, phases: list[str]) -> None:
    model = build_models(["embedded"], tmp_path / "no-demo", 0.6, 1)[0]
    run_profile(model, backend, 2, tmp_path, warmup=1, repeats=2)
    _check(tmp_path, phases)


def test_profile_refuses_bad_settings(tmp_path: Path) -> None:
    model = build_models(["embedded"], tmp_path / "no-demo", 0.6, 1)[0]
    with pytest.raises(InputError, match="--batch"):
        run_profile(model, "session", 0, tmp_path)
    with pytest.raises(InputError, match="--ops"):
        run_profile(model, "session", 1, tmp_path, ops=0)
    with pytest.raises(InputError, match="cannot run here"):
        run_profile(model, "triton", 1, tmp_path)
