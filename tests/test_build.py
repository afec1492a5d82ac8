"""The compiled extension: build info, CUDA kernels compiled (no GPU needed), and the CMake build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pathrt import opspec
from pathrt.kernels import native as extension
from pathrt.runtime.info import environment, format_environment
from tests.conftest import ROOT, TRAINED_TARGET_ENV, assert_python_ok

NVCC = "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else shutil.which("nvcc")
CUDA_TOOLCHAIN = NVCC is not None and torch.version.cuda is not None


def test_build_info_describes_the_extension() -> None:
    info = extension.build_info()
    assert info is not None
    assert info["torch"] == torch.__version__.split("+")[0]
    assert info["openmp"] is not None and info["openmp_max_threads"] >= 1
    assert info["call_pool"] == (os.environ.get("PATHRT_CALL_POOL") != "0")
    assert isinstance(info["cpu_features"]["avx2"], bool)
    assert info["cuda"] == CUDA_TOOLCHAIN, "setup.py must compile the CUDA kernels wherever nvcc exists"
    if info["cuda"]:
        assert info["cuda_archs"] == "8.0,9.0"


def test_pathrt_info_lists_ops_and_cuda_status() -> None:
    text = format_environment(environment())
    for name in opspec.OPS:
        assert name in text
    if CUDA_TOOLCHAIN:
        assert "CUDA kernels: compiled for sm_80, sm_90" in text


@pytest.mark.skipif(not CUDA_TOOLCHAIN, reason="needs nvcc")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu")))
def test_cuda_kernels_compile_for_arch(arch: str, name: str, tmp_path: Path) -> None:
    source = ROOT / "csrc" / "cuda" / name
    result = subprocess.run(
        [NVCC, "-c", f"-arch={arch}", "-O3", "-std=c++17", f"-I{ROOT / 'csrc' / 'include'}", str(source),
         "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.o").stat().st_size > 0


@pytest.mark.slow
def test_cmake_build(tmp_path: Path, embedded) -> None:
    """CMakeLists.txt builds the same module (with CUDA kernels where nvcc exists), the C++ runtime
    library pathrt_runtime and the example pathrt_explain; all of them work."""
    build = tmp_path / "build"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                                f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True,
                               env=env, timeout=300)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    assert f"CUDA kernels {'ON' if CUDA_TOOLCHAIN else 'OFF'}" in configure.stdout
    compiled = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, env=env, timeout=600)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    (module,) = build.glob("_C*.so")
    code = (
        "import importlib.util, torch\n"
        f"spec = importlib.util.spec_from_file_location('_C', {str(module)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"assert mod.build_info()['cuda'] == {CUDA_TOOLCHAIN}\n"
        "from pathrt import opspec\n"
        "from pathrt.kernels import native as extension\n"
        "from pathrt.runtime import ops\n"  # PATHRT_NO_EXTENSION: only the CMake module's kernels
        "assert extension.implementations()['pack_masks']['CPU'] == 'native', extension.implementations()\n"
        "m = torch.rand(9, 70) > 0.5\n"
        "assert torch.equal(ops.pack_masks(m), opspec.pack_masks_reference(m))\n"
        "p = ops.pack_masks(m)\n"
        "torch.testing.assert_close(ops.pairwise_iou(p, p), opspec.pairwise_iou_reference(p, p))\n"
    )
    assert_python_ok(code, env={"PATHRT_NO_EXTENSION": "1"})
    _check_cpp_example(build / "pathrt_explain", embedded, tmp_path)


def _check_cpp_example(program: Path, embedded, tmp_path: Path) -> None:
    """The C++ example explains a PPM image with a bundle as the Python session does."""
    from pathrt.data import load_digits
    from pathrt.runtime.bundle import write_bundle
    from tests.conftest import varied_generator

    bundle = write_bundle(embedded, varied_generator(embedded.spec, sparsity_bias=-1.0), tmp_path / "m.bundle")
    image = load_digits("test")[3][0]  # (3, H, W) in [0, 1]
    pixels = (image * 255).round().to(torch.uint8)
    pgm = tmp_path / "digit.ppm"
    body = pixels.permute(1, 2, 0).contiguous().numpy().tobytes()  # P6: RGB triples, row by row
    pgm.write_bytes(f"P6\n{pixels.shape[2]} {pixels.shape[1]}\n255\n".encode() + body)
    result = subprocess.run([str(program), str(bundle), str(pgm)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    session = extension.EXTENSION.ExplainSession(str(bundle))
    out = session.explain(embedded.preprocess((pixels.float() / 255)[None]))
    cls, kept = int(out["classes"][0]), int(out["counts"][0])
    assert f"class {cls} ({embedded.classes[cls]})" in result.stdout
    assert f"kept {kept} of {out['masks'].shape[1]}" in result.stdout
    assert f"O {float(out['O'][0]):.6f}" in result.stdout, result.stdout
    bad = subprocess.run([str(program), str(bundle), str(tmp_path / "missing.ppm")], capture_output=True, text=True)
    assert bad.returncode == 5 and "cannot open" in bad.stderr  # the CLI's exit codes: 5 bad input
    data = bytearray(bundle.read_bytes())
    data[-5] ^= 0x10  # one bit of the last weight
    (tmp_path / "flipped.bundle").write_bytes(data)
    bad = subprocess.run([str(program), str(tmp_path / "flipped.bundle"), str(pgm)], capture_output=True, text=True)
    assert bad.returncode == 3 and "modified after it was written" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_make_sanitize_reports_nothing(trained_target_path: Path) -> None:
    """`make sanitize`: the extension with ASan + UBSan, the op and session tests against it, no report.
    The nested run copies this run's trained target rather than training its own."""
    env = {**os.environ, TRAINED_TARGET_ENV: str(trained_target_path)}
    result = subprocess.run(["make", "sanitize"], cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "ERROR: AddressSanitizer" not in output and "runtime error:" not in output, output[-5000:]
    assert " passed" in output and " failed" not in output, output[-2000:]
