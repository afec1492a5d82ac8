"""The explain backends and their registry; `auto` is an ordered preference over it.

One module per backend, each a `Backend` subclass (protocol in `base`): eager (the reference),
native (C++/CUDA kernels over the lowered plan), triton (Triton kernels, GPU), session (the whole
path in C++ from a bundle, CPU), and onnx (ONNX Runtime on the exported explainer), which lives
with the exporter in `pathrt.export.backend` (the export layer sits above the runtime) and is
registered from there. `auto` tries AUTO_ORDER and takes the first backend that prepares; every
backend it passed over is named with its reason.

Adding a backend: a module here with a `Backend` subclass, and its entry in REGISTRY (and in
AUTO_ORDER if `auto` should consider it); a backend of a higher layer calls `register_backend`.
"""

from __future__ import annotations

import torch

from pathrt.errors import InputError
from pathrt.runtime.backends.base import (
    CHECKS_IMAGES,
    CONCURRENT,
    MASKS,
    Backend,
    BackendContext,
    BackendOptions,
    ChunkResult,
    Unavailable,
)
from pathrt.runtime.backends.eager import EagerBackend
from pathrt.runtime.backends.native import NativeBackend
from pathrt.runtime.backends.session import SessionBackend
from pathrt.runtime.backends.triton import TritonBackend

REGISTRY: dict[str, type[Backend]] = {
    "eager": EagerBackend,
    "native": NativeBackend,
    "triton": TritonBackend,
    "session": SessionBackend,
}
AUTO_ORDER = ("session", "native", "triton", "eager")
OPTIONAL = {"onnx": "pathrt.export (pip install pathrt[onnx])"}  # registered by higher layers
BACKENDS = (*REGISTRY, *OPTIONAL, "auto")

__all__ = ["AUTO_ORDER", "BACKENDS", "CHECKS_IMAGES", "CONCURRENT", "MASKS", "REGISTRY", "Backend", "BackendContext",
           "BackendOptions", "ChunkResult", "Unavailable", "device_backends", "register_backend", "select"]


def register_backend(backend: type[Backend]) -> None:
    """Adds a backend defined in a higher layer (e.g. pathrt.export's onnx) to the registry."""
    REGISTRY[backend.name] = backend


def select(requested: str, context: BackendContext) -> tuple[Backend, str]:
    """The backend for `requested` (a name in BACKENDS) and why: raises InputError if a requested
    backend cannot run here; for "auto", the first of AUTO_ORDER that prepares, with the reasons of
    those passed over."""
    if requested not in BACKENDS:
        raise InputError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested != "auto":
        if requested not in REGISTRY:
            raise InputError(f"backend {requested!r} is provided by {OPTIONAL[requested]}; install and import it")
        prepared = REGISTRY[requested].prepare(context)
        if isinstance(prepared, Unavailable):
            raise InputError(f"backend {requested!r} cannot run here: {prepared}. Use backend='auto' to fall back")
        return prepared, f"requested; {prepared.reason}"
    passed: list[Unavailable] = []
    for name in AUTO_ORDER:
        prepared = REGISTRY[name].prepare(context)
        if isinstance(prepared, Backend):
            return prepared, f"auto: {prepared.reason}{_passed_over(passed)}"
        passed.append(prepared)
    raise AssertionError("the eager backend always prepares")


def _passed_over(passed: list[Unavailable]) -> str:
    """"; not a, b: reason" per distinct reason, each said once (the plan's refusal is every fast backend's)."""
    by_reason: dict[str, list[str]] = {}
    for unavailable in passed:
        for reason in unavailable.reasons:
            by_reason.setdefault(reason, []).append(unavailable.backend)
    return "".join(f"; not {', '.join(names)}: {reason}" for reason, names in by_reason.items())


def device_backends(device: torch.device) -> dict[str, str | None]:
    """For `pathrt info`: each registered backend and why it cannot run on `device` (None: it can, model
    permitting)."""
    return {name: backend.unavailable_on(device) for name, backend in REGISTRY.items()}
