"""Builds the pathrt._C extension (CPU kernels always; CUDA kernels when nvcc and a CUDA torch exist).

Environment switches:
  PATHRT_CUDA=0|1        force the CUDA kernels off / on (default: on when nvcc is found and torch
                         is a CUDA build; no GPU is needed to compile them).
  TORCH_CUDA_ARCH_LIST   CUDA archs to compile for (default "8.0;9.0").
  CUDA_HOME              CUDA toolkit root (default: the folder above the nvcc on PATH).
  PATHRT_SANITIZE=1      build with AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
  PATHRT_FUZZ=1          build with libFuzzer coverage instrumentation (clang, `make fuzz`).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

CSRC = Path("csrc")  # setuptools wants source paths relative to this file
os.chdir(Path(__file__).resolve().parent)


def _want_cuda() -> bool:
    """Decides the CUDA build and sets the defaults a GPU-less build needs (TOOLCHAIN.md)."""
    import torch

    switch = os.environ.get("PATHRT_CUDA", "auto").lower()
    forced = switch in ("1", "on", "true", "yes")
    nvcc = shutil.which("nvcc")
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"  # /usr/local/bin/nvcc may be a wrapper script
    missing = ("torch is a CPU-only build: install a CUDA build of torch" if torch.version.cuda is None
               else "nvcc was not found: put the CUDA toolkit's bin/ on PATH" if nvcc is None else None)
    if switch in ("0", "off", "false", "no") or missing:
        if forced:
            sys.exit(f"PATHRT_CUDA=1 but {missing}")
        return False
    os.environ.setdefault("CUDA_HOME", str(Path(nvcc).resolve().parent.parent))
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    # torch's CUDA headers include cuSPARSE/cuBLAS headers, which ship in the nvidia wheel of the
    # matching CUDA major version; CPATH ranks below -I, so the toolkit's own headers still win.
    major = torch.version.cuda.split(".")[0]
    wheel_include = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", f"cu{major}", "include")
    parts = [p for p in os.environ.get("CPATH", "").split(os.pathsep) if p]
    if os.path.isdir(wheel_include) and wheel_include not in parts:
        os.environ["CPATH"] = os.pathsep.join([*parts, wheel_include])
    return True


def _extensions():
    with_cuda = _want_cuda()  # must run before cpp_extension reads CUDA_HOME at import
    from torch.utils import cpp_extension

    # -g1 (line tables: enough for perf, gdb backtraces and sanitizer reports) overrides the full -g
    # that Python's own CFLAGS pass: full debug info of torch's templates doubled every file's compile.
    cxx = ["-O3", "-g1", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    link = ["-fopenmp"]
    if os.environ.get("PATHRT_SANITIZE", "0") not in ("", "0"):
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g1"]
        cxx = ["-O1", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", *sanitize]
        link += sanitize
    if os.environ.get("PATHRT_FUZZ", "0") not in ("", "0"):
        # clang's coverage counters for libFuzzer (atheris supplies the runtime at load time)
        cov = "-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp"
        cxx = ["-O1", "-g", "-fopenmp", "-Wno-unknown-pragmas", cov]
        link += [cov]
    cpu_sources = sorted(str(p) for folder in ("cpu", "runtime") for p in (CSRC / folder).glob("*.cpp"))
    sources = [str(CSRC / "bindings.cpp"), *cpu_sources]
    common = dict(
        name="pathrt._C",
        include_dirs=[str(Path.cwd() / CSRC / "include")],  # ninja builds elsewhere
        extra_link_args=link,
        libraries=["crypto"],  # OpenSSL's SHA-256 for the bundle digest (libssl-dev)
    )
    if not with_cuda:
        return [cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)]
    archs = ",".join(os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split())
    define = ["-DPATHRT_WITH_CUDA", f'-DPATHRT_CUDA_ARCHS="{archs}"']
    sources += sorted(str(p) for p in (CSRC / "cuda").glob("*.cpp")) + sorted(
        str(p) for p in (CSRC / "cuda").glob("*.cu")
    )
    return [
        cpp_extension.CUDAExtension(
            sources=sources,
            extra_compile_args={"cxx": cxx + define, "nvcc": ["-O3", *define]},
            **common,
        )
    ]


def main() -> None:
    from setuptools import setup

    extensions = _extensions()  # before cpp_extension is imported: it reads CUDA_HOME at import
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=extensions,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
