"""Schemas, documentation, fake kernels and plain-PyTorch references of pathrt's tensor ops.

This file is the one place where the `pathrt` torch.library namespace is declared. The compiled
extension `pathrt._C` registers CPU (C++/OpenMP) and CUDA kernels for these schemas with
`TORCH_LIBRARY_IMPL`; wherever it has no kernel (extension missing or disabled with
`PATHRT_NO_EXTENSION=1`, or built without CUDA) the reference below is registered instead, so
`torch.ops.pathrt.*` always works. The references are also the specification every kernel is
tested against.

Ops:
  pathrt::pack_masks(Tensor masks) -> Tensor
      bool or uint8 masks (N, K) -> bit-packed uint8 (N, ceil(K/8)); bit j of a sample is bit j%8
      (little-endian) of byte j//8; nonzero means kept; padding bits are 0.
  pathrt::pairwise_iou(Tensor a, Tensor b) -> Tensor
      packed (N, B) x packed (M, B) -> float32 (N, M) IoU |a & b| / |a | b| by popcount;
      the IoU of two empty masks is 1.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

NAMESPACE = "pathrt"
DISPATCH_KEYS = ("CPU", "CUDA")

_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")


# ---------------------------------------------------------------------------------------------
# Plain-PyTorch references
# ---------------------------------------------------------------------------------------------

_BIT_WEIGHTS = tuple(1 << j for j in range(8))


def _check_masks(masks: torch.Tensor) -> None:
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"pathrt::pack_masks: masks must be bool or uint8, got {masks.dtype}; "
                        "convert with masks.bool()")
    if masks.dim() != 2:
        raise ValueError(f"pathrt::pack_masks: masks must be 2-D (N, K), got shape {tuple(masks.shape)}; "
                         "flatten the per-layer masks with torch.cat(dim=1)")


def _check_packed_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise TypeError("pathrt::pairwise_iou: packed masks must be uint8 (from pathrt::pack_masks), "
                        f"got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError("pathrt::pairwise_iou: packed masks must be 2-D (N, B) and (M, B), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError("pathrt::pairwise_iou: packed masks must have the same number of bytes per row, "
                         f"got {a.shape[1]} and {b.shape[1]}; pack masks of the same pathway spec")
    if a.device != b.device:
        raise ValueError(f"pathrt::pairwise_iou: a and b are on different devices ({a.device}, {b.device})")


def pack_masks_reference(masks: torch.Tensor) -> torch.Tensor:
    """Reference of `pathrt::pack_masks` (see the module docstring)."""
    _check_masks(masks)
    n, k = masks.shape
    nbytes = (k + 7) // 8
    bits = torch.zeros(n, nbytes * 8, dtype=torch.uint8, device=masks.device)
    bits[:, :k] = masks != 0
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return (bits.view(n, nbytes, 8) * weights).sum(dim=-1).to(torch.uint8)


def unpack_masks(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_masks`: packed uint8 (N, B) -> bool (N, k). Needs k <= 8·B."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"unpack_masks: expected uint8 (N, B), got {packed.dtype} {tuple(packed.shape)}")
    if not 0 <= k <= packed.shape[1] * 8:
        raise ValueError(f"unpack_masks: k={k} does not fit in {packed.shape[1]} bytes per row")
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], packed.shape[1] * 8)[:, :k].bool()


def pairwise_iou_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference of `pathrt::pairwise_iou` (see the module docstring); exact for K < 2**24."""
    _check_packed_pair(a, b)
    k = a.shape[1] * 8
    ua = unpack_masks(a, k).float()
    ub = unpack_masks(b, k).float()
    inter = ua @ ub.T
    union = ua.sum(1, keepdim=True) + ub.sum(1).unsqueeze(0) - inter
    return torch.where(union == 0, torch.ones_like(inter), inter / union.clamp_min(1))


# ---------------------------------------------------------------------------------------------
# Declarations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpDecl:
    """One op of the pathrt namespace: its schema, its reference and its fake kernel."""

    name: str
    schema: str
    reference: Any
    fake: Any

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"


def _pack_masks_fake(masks: torch.Tensor) -> torch.Tensor:
    _check_masks(masks)
    return masks.new_empty((masks.shape[0], (masks.shape[1] + 7) // 8), dtype=torch.uint8)


def _pairwise_iou_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check_packed_pair(a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32)


OPS: dict[str, OpDecl] = {
    decl.name: decl
    for decl in (
        OpDecl("pack_masks", "pack_masks(Tensor masks) -> Tensor", pack_masks_reference, _pack_masks_fake),
        OpDecl("pairwise_iou", "pairwise_iou(Tensor a, Tensor b) -> Tensor", pairwise_iou_reference,
               _pairwise_iou_fake),
    )
}

for _decl in OPS.values():
    _LIB.define(_decl.schema)
    torch.library.register_fake(_decl.qualname, _decl.fake, lib=_LIB)


# ---------------------------------------------------------------------------------------------
# The compiled extension, and the reference wherever it has no kernel
# ---------------------------------------------------------------------------------------------


def _load_extension() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("PATHRT_NO_EXTENSION", "") not in ("", "0"):
        return None, "disabled by PATHRT_NO_EXTENSION"
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
            _LIB.impl(_decl.name, _decl.reference, _key)
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


# ---------------------------------------------------------------------------------------------
# Public wrappers
# ---------------------------------------------------------------------------------------------


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bit-packs bool/uint8 masks (N, K) into uint8 (N, ceil(K/8)), 8 neurons a byte, little-endian."""
    return torch.ops.pathrt.pack_masks(masks)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of packed masks: (N, B) x (M, B) -> float32 (N, M); empty vs empty is 1."""
    return torch.ops.pathrt.pairwise_iou(a, b)
