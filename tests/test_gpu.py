"""The CUDA and Triton paths on a GPU (`gpu`-marked: they skip, saying why, where torch sees no CUDA
device, and run in `make gpu-check` on the GPU machine), and the GPU check itself on the CPU: its
parity harness must catch wrong kernels, its ptxas report must read nvcc's, and its dry run
(slow) must run every phase that can run without a GPU and say which could not."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pathrt.benchmarks import gpu_e2e, gpu_parity
from pathrt.runtime import ops
from tests.conftest import ROOT

CUDA = torch.device("cuda")
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@functools.cache
def _script():
    """benchmarks/gpu_check.py as a module (it is a script, outside the package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["native", "triton"])
def test_ops_on_cuda_match_the_cpu_reference(impl: str) -> None:
    table = gpu_parity.implementations(CUDA)[impl]
    names = gpu_parity.NATIVE_OPS if impl == "native" else gpu_parity.TRITON_OPS
    results = [gpu_parity.check_case(impl, table[c.op], c) for c in gpu_parity.cases(CUDA, names, (1, 64))]
    bad = [f"{r.op} [{r.case}, batch {r.batch}]: {r.problem}" for r in results if not r.ok]
    assert not bad, "\n".join(bad[:20])


@pytest.mark.gpu
def test_mask_ops_on_cuda_past_2_31_bits() -> None:
    bad = [f"{r.op} {r.case}: {r.problem}" for r in gpu_parity.large_cases(CUDA) if not r.ok]
    assert not bad, bad


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_explain_on_cuda_matches_cpu_eager(backend: str) -> None:
    torch.backends.cudnn.allow_tf32 = False
    for model in (gpu_e2e.tiny_model(), *gpu_e2e.models(ROOT / "runs" / "demo", ("embedded",))):
        x = model.inputs(8)
        row = gpu_e2e.compare(model, backend, "cuda", x, model.explainer.explain(x))
        assert row.ok, f"{model.name}: {row.problem}"


@pytest.mark.gpu
def test_native_on_cuda_runs_the_cuda_generator_ops() -> None:
    """One code path: the CUDA explainer runs the fused generator ops' CUDA kernels, no module fallback."""
    explainer = gpu_e2e.tiny_model().backend("native", "cuda")
    assert not isinstance(explainer, str), explainer
    assert explainer.engine.fused.ops is torch.ops.pathrt
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        explainer.explain(torch.randn(2, 3, 16, 16, device="cuda"))
    names = {e.key for e in prof.key_averages()}
    # the generator's fused ops always; its convs are the strategy policy's choice (on the first GPU run
    # the tiny model's pathway convs went dense and union, through cuDNN)
    assert {"pathrt::rfe_tail", "pathrt::pdn_encoder_layer", "pathrt::rpd_decode"} <= names, sorted(names)


def _wrong_masked_bias_relu(x, bias, mask, fill=None):
    """Forgets the mask: removed channels keep their values (and never hold the fill)."""
    return torch.relu(x + bias[:, None, None]) if bias is not None else torch.relu(x)


def test_parity_references_run_on_cpu_copies_of_every_argument() -> None:
    """The references read CPU copies of a case's arguments, NaN as 0, lists and tuples included (on
    the first GPU run a tuple passed through unconverted and the reference ran on the device)."""
    nan = torch.tensor([1.0, float("nan")])
    copied = gpu_parity._cpu((nan, [nan], 3))
    assert isinstance(copied, tuple) and copied[2] == 3
    for t in (copied[0], copied[1][0]):
        assert t.device.type == "cpu" and t.tolist() == [1.0, 0.0]


def test_parity_harness_catches_wrong_kernels() -> None:
    cpu = torch.device("cpu")
    kinds = ("keep0.5",)
    results = [gpu_parity.check_case("wrong", _wrong_masked_bias_relu, c)
               for c in gpu_parity.cases(cpu, ("masked_bias_relu",), (3,), kinds)]
    assert results and all("removed output channels are not exactly 0" in r.problem for r in results)

    def unwritten(x, bias, mask, fill=None):  # leaves the last sample unwritten
        out = ops.masked_bias_relu(x, bias, mask, fill=fill)
        out[-1] = float("nan")
        return out

    results = [gpu_parity.check_case("wrong", unwritten, c)
               for c in gpu_parity.cases(cpu, ("masked_bias_relu",), (3,), kinds)]
    assert all(not r.written for r in results)
    calls = []

    def racy(x, bias, mask, fill=None):  # right on the first call, one element off on the second (as a race gives)
        calls.append(1)
        out = ops.masked_bias_relu(x, bias, mask, fill=fill)
        if len(calls) % 2 == 0:
            out.view(-1)[out.view(-1).nonzero()[0]] += 1e-3
        return out

    results = [gpu_parity.check_case("racy", racy, c)
               for c in gpu_parity.cases(cpu, ("masked_bias_relu",), (3,), kinds)]
    assert all("two runs differ bitwise" in r.problem for r in results)
    good = [gpu_parity.check_case("native", ops.pathway_conv2d, c)
            for c in gpu_parity.cases(cpu, ("pathway_conv2d",), (3,), kinds)]
    assert good and all(r.ok and r.repeatable for r in good), [r.problem for r in good]
    native = gpu_parity.implementations(cpu)["native"]["masked_bias_relu"]
    filled = [gpu_parity.check_case("native", native, c)
              for c in gpu_parity.cases(cpu, ("masked_bias_relu",), (3,), kinds) if "fill=True" in c.name]
    assert filled and all(r.ok for r in filled), [r.problem for r in filled]

    def zero_instead_of_fill(x, bias, mask, fill=None):  # ignores the fill: removed channels 0
        return ops.masked_bias_relu(x, bias, mask)

    results = [gpu_parity.check_case("wrong", zero_instead_of_fill, c)
               for c in gpu_parity.cases(cpu, ("masked_bias_relu",), (3,), kinds) if "fill=True" in c.name]
    assert results and all("removed output channels are not exactly 0 (or their fill value)" in r.problem
                           for r in results)


@pytest.mark.skipif(_script().NVCC is None, reason="needs nvcc")
def test_ptxas_report_reads_nvcc_output(tmp_path: Path) -> None:
    script = _script()
    source = ROOT / "csrc" / "cuda" / "mask_kernels.cu"
    done = subprocess.run([script.NVCC, "-c", "-arch=sm_90", "-std=c++17", f"-I{ROOT / 'csrc' / 'include'}",
                           "-Xptxas", "-v", str(source), "-o", str(tmp_path / "k.o")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = script.ptxas_report(done.stdout + done.stderr)
    assert {r["kernel"] for r in rows} >= {"pack_masks_kernel"}, rows
    assert all(r["arch"] == "sm_90" and r["registers"] > 0 and r["spill_stores"] is not None for r in rows)


def _no_phase_left() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(SCRIPT) in line and "--phase" in line]


def test_gpu_check_kills_a_phase_past_its_cap(tmp_path: Path) -> None:
    """A phase stuck past its cap is killed and reported. The parity phase is made to hang (a
    sitecustomize that sleeps in that phase's process only): a real one stops itself at its own
    deadline (cap - 5 s, already past at a 3 s cap) once its imports are done, so whether the kill
    came first depended on how fast torch imported."""
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text(
        "import sys, time\nif '--phase' in sys.argv and 'parity' in sys.argv:\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(hang), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--dry-run", "--phases",
                           "env", "parity", "--cap", "parity=3"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| env | ok |" in summary and "| parity | timeout |" in summary and "killed after its cap of 3 s" in summary
    assert done.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the summary is printed last
    assert not _no_phase_left()


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """Every phase runs on the CPU (Triton interpreted), the GPU-only parts say why they were skipped."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in ("env.json", "build.txt", "ptxas.txt", "parity.csv", "sanitizer.txt", "e2e.csv", "tests.txt",
                 "timings.csv", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "phases").glob("*.json")}
    assert set(records) == set(_script().PHASES) and all(r["status"] == "ok" for r in records.values())
    skipped = " ".join(s for r in records.values() for s in r["skipped"])
    assert "compute-sanitizer: no GPU" in skipped and "rebuilding pathrt._C" in skipped and "gpu tests" in skipped
    parity = (tmp_path / "parity.csv").read_text().splitlines()
    assert len(parity) > 200 and all(line.endswith(",True") for line in parity[1:])
    assert {"native", "triton"} <= {line.split(",")[0] for line in parity[1:]}
    e2e = (tmp_path / "e2e.csv").read_text()
    assert "tiny,triton,cpu" in e2e and "resnet18@64,native,cpu" in e2e
    assert done.stdout.rstrip().endswith((tmp_path / "summary.md").read_text().rstrip())
    assert "# pathrt gpu-check summary (CPU dry run" in done.stdout


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel providing module `name` (what `make gpu-wheels` brings, in small)."""
    import zipfile

    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": "VALUE = 7\n",
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n"}
    files[f"{name}-1.0.dist-info/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{name}-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for file, text in files.items():
            z.writestr(file, text)
    return path


def test_gpu_check_installs_brought_wheels_for_missing_modules(tmp_path: Path, monkeypatch) -> None:
    script = _script()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "pathrt_fake_dep")
    monkeypatch.setitem(script.DEPENDENCIES, "pathrt_fake_dep", "pathrt_fake_dep")
    ctx = script.Context(tmp_path / "out", False, tmp_path, wheels, 0.0)
    assert script._install_wheels(ctx, ["pathrt_fake_dep"]) == ["pathrt_fake_dep-1.0-py3-none-any.whl"]
    assert not ctx.failed and (tmp_path / "out" / "site" / "pathrt_fake_dep" / "__init__.py").exists()
    monkeypatch.setitem(script.DEPENDENCIES, "absent_dep", "absent_dep")
    script._install_wheels(ctx, ["absent_dep"])
    assert "no wheel for absent_dep" in ctx.failed[-1] and "make gpu-wheels" in ctx.failed[-1]


def test_gpu_check_brings_openssl_where_libssl_dev_is_missing(tmp_path: Path, monkeypatch) -> None:
    """The extension links libcrypto: a GPU machine without libssl-dev builds with the brought copy."""
    script = _script()
    wheels, system = tmp_path / "wheels", tmp_path / "system"
    (wheels / "include" / "openssl").mkdir(parents=True)
    (wheels / "include" / "openssl" / "evp.h").write_text("")
    system.mkdir()
    (system / "libcrypto.so.3").write_text("")
    monkeypatch.setattr(script, "SYSTEM_INCLUDES", (str(tmp_path / "none"),))
    monkeypatch.setattr(script, "_system_libcrypto", lambda: system / "libcrypto.so.3")
    env = script.native_env(wheels, tmp_path / "out")[0]
    assert env["CPATH"].split(os.pathsep)[0] == str(wheels / "include")
    link = Path(env["LIBRARY_PATH"].split(os.pathsep)[0]) / "libcrypto.so"
    assert link.resolve() == system / "libcrypto.so.3" and str(system) in env["LD_LIBRARY_PATH"]
    (wheels / "include" / "openssl" / "evp.h").unlink()
    assert any("will fail" in n for n in script.native_env(wheels, tmp_path / "out")[1])
