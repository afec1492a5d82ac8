"""The compiled extension pathrt._C, and the reference wherever it has no kernel.

Importing this module loads `pathrt._C` (C++/OpenMP CPU kernels, CUDA kernels when built with
CUDA, the C++ ExplainSession), which registers its kernels for the schemas of
`pathrt.opspec.library` with `TORCH_LIBRARY_IMPL`. For every op and dispatch key it does not cover
(extension missing, disabled with `PATHRT_NO_EXTENSION=1`, or built without CUDA) the plain-PyTorch
reference is registered instead, so `torch.ops.pathrt.*` always works. `PATHRT_EXTENSION_FILE`
loads another build of `_C` (the sanitized one of `make sanitize`, the fuzzing one of `make fuzz`).
Python reaches the kernels through `torch.ops.pathrt` only; the session through `EXTENSION`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

import torch

from pathrt.opspec.library import DISPATCH_KEYS, LIBRARY, OPS


def _load_extension() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("PATHRT_NO_EXTENSION", "") not in ("", "0"):
        return None, "disabled by PATHRT_NO_EXTENSION"
    if os.environ.get("PATHRT_EXTENSION_FILE"):  # another build of _C, e.g. the sanitized one (`make sanitize`)
        spec = importlib.util.spec_from_file_location("pathrt._C", os.environ["PATHRT_EXTENSION_FILE"])
        if spec is None or spec.loader is None:
            return None, f"PATHRT_EXTENSION_FILE={os.environ['PATHRT_EXTENSION_FILE']} is not a loadable module"
        module = importlib.util.module_from_spec(spec)
        sys.modules["pathrt._C"] = module
        spec.loader.exec_module(module)
        return module, None
    try:
        return importlib.import_module("pathrt._C"), None
    except ImportError as exc:
        warnings.warn(
            f"pathrt: the compiled extension pathrt._C could not be loaded ({exc}); using the "
            "plain-PyTorch reference ops instead (slower). Rebuild it with `make build` or "
            "`pip install --no-build-isolation -e .`; set PATHRT_NO_EXTENSION=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None, str(exc)


EXTENSION, EXTENSION_ERROR = _load_extension()

_REFERENCE_KEYS: dict[str, set[str]] = {name: set() for name in OPS}
for _decl in OPS.values():
    for _key in DISPATCH_KEYS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(_decl.qualname, _key):
            LIBRARY.impl(_decl.name, _decl.reference, _key)
            _REFERENCE_KEYS[_decl.name].add(_key)


def implementations() -> dict[str, dict[str, str]]:
    """Which kernel serves each op per dispatch key: "native" (pathrt._C) or "reference"."""
    return {
        name: {key: "reference" if key in _REFERENCE_KEYS[name] else "native" for key in DISPATCH_KEYS}
        for name in OPS
    }


def build_info() -> dict[str, Any] | None:
    """`pathrt._C.build_info()` (torch, compiler, OpenMP, CUDA archs, CPU features), or None."""
    return None if EXTENSION is None else dict(EXTENSION.build_info())
