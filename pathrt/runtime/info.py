"""What pathrt has built and can use here: versions, the extension, its CUDA kernels, the ops."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch

from pathrt.kernels import native as extension
from pathrt.runtime.backends import device_backends
from pathrt.threads import describe_wait_policy, wait_policy
from pathrt.version import __version__


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """A JSON-ready description of the installation (`pathrt info --json`)."""
    build = extension.build_info()
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "pathrt": __version__,
        "versions": {name: _version(name) for name in ("torch", "torchvision", "triton", "onnx", "onnxruntime")},
        "torch_cuda_build": torch.version.cuda,
        "threads": {"torch": torch.get_num_threads(), "wait_policy": wait_policy()},
        "cuda_devices": cuda_devices,
        "extension": {"loaded": extension.EXTENSION is not None, "error": extension.EXTENSION_ERROR, "build": build},
        "cuda_kernels_compiled": bool(build and build["cuda"]),
        "cuda_kernels_usable": bool(build and build["cuda"]) and cuda_devices > 0,
        "ops": extension.implementations(),
        "backends": {device: device_backends(torch.device(device))
                     for device in ("cpu", *(["cuda"] if cuda_devices else []))},
    }


def format_environment(env: dict[str, Any]) -> str:
    """The human-readable report printed by `pathrt info`."""
    lines = [f"pathrt {env['pathrt']}"]
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    cuda = f"CUDA build {env['torch_cuda_build']}" if env["torch_cuda_build"] else "CPU-only build"
    lines.append(f"  torch: {cuda}; CUDA devices: {env['cuda_devices'] or 'none'}")
    threads = env["threads"]
    lines.append(f"  threads: {threads['torch']}; {describe_wait_policy(threads['wait_policy'])}")
    ext = env["extension"]
    if not ext["loaded"]:
        lines.append(f"extension pathrt._C: NOT loaded ({ext['error']}); ops use the plain-PyTorch reference")
    else:
        b = ext["build"]
        lines.append(f"extension pathrt._C: loaded (gcc {b['compiler']}, C++ {b['cplusplus']}, "
                     f"OpenMP {b['openmp']} with {b['openmp_max_threads']} threads)")
        pool = "on" if b["call_pool"] else "off (PATHRT_CALL_POOL=0)"
        lines.append(f"  session call pool (helper threads that spin only within a call): {pool}")
        if b["cuda"]:
            archs = ", ".join(f"sm_{a.replace('.', '')}" for a in b["cuda_archs"].split(",") if a)
            usable = "yes" if env["cuda_kernels_usable"] else "no (no CUDA device here)"
            lines.append(f"  CUDA kernels: compiled for {archs} (CUDA runtime {b['cuda_runtime_version']}); "
                         f"usable: {usable}")
        else:
            lines.append("  CUDA kernels: not compiled (no nvcc or CPU-only torch at build time)")
        feats = [k for k, v in b["cpu_features"].items() if v]
        lines.append(f"  CPU features: {' '.join(feats) or 'none'}")
    lines.append("ops (torch.ops.pathrt):")
    lines.append(f"  {'op':<20} {'CPU':<10} CUDA")
    for name, keys in env["ops"].items():
        cuda_state = keys["CUDA"]
        if cuda_state == "native" and not env["cuda_kernels_usable"]:
            cuda_state += " (compiled, no device to run it)"
        lines.append(f"  {name:<20} {keys['CPU']:<10} {cuda_state}")
    lines.append("explain backends (Explainer(..., backend=...); 'auto' takes the first usable of session "
                 "(CPU), native, triton on GPU, else eager):")
    for device, backends in env["backends"].items():
        for name, why_not in backends.items():
            lines.append(f"  {device:<5} {name:<7} {'usable' if why_not is None else 'no: ' + why_not}")
    return "\n".join(lines)
