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
  pathrt::daq_threshold_pack(Tensor logits) -> (Tensor scores, Tensor masks, Tensor packed, Tensor counts)
      RPD head logits float32 (N, K) -> scores = sigmoid(logits) float32, masks = scores >= 0.5 (bool),
      packed = pack_masks(masks), counts = kept neurons per sample (int64 (N,)), in one pass.
  pathrt::masked_bias_relu(Tensor x, Tensor? bias, Tensor mask) -> Tensor
      the pathway pass's conv epilogue: relu(x + bias[c]) * mask[n, c] for float32 x (N, C, H, W);
      mask (N, C) bool (removed channels are exactly 0) or float32 (scales).
  pathrt::masked_bias_relu_(Tensor(a!) x, Tensor? bias, Tensor mask) -> ()
      the same, in place on a contiguous x.
  pathrt::pathway_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? in_mask,
                         Tensor? out_mask, int[2] stride, int[2] padding, bool relu) -> Tensor
      per-sample channel-sparse convolution (groups 1, dilation 1) with a fused epilogue:
      y = conv(x · in_mask, weight) + bias (+ residual), relu if asked, then removed output channels
      are 0. Kernels never read removed input channels nor compute removed output channels.
  pathrt::rfe_tail(Tensor[] maps, Tensor cls, Tensor weight, Tensor bias, Tensor norm_weight,
                   Tensor norm_bias, Tensor position, float eps) -> Tensor
      the generator's RFE tail for all L layers: maps (N, d_r, H_l, W_l) → (N, L+1, d) = [CLS,
      LayerNorm(mean_hw(map_l) W^T + b) + position_l].
  pathrt::pdn_encoder_layer(Tensor x, Tensor[] params, int heads, float eps) -> Tensor
      one pre-LN Transformer encoder layer (GELU MLP) on (N, T, d); params in the order of
      `generator_ops.PDN_PARAMS`.
  pathrt::rpd_decode(Tensor z, Tensor[] params, Tensor[] heads, float eps)
      -> (Tensor logits, Tensor scores, Tensor masks, Tensor packed, Tensor counts)
      the PDN's final LayerNorm, the RPD GRU recursion with its per-layer heads, and the DAQ threshold
      (as daq_threshold_pack) over the concatenated head logits (N, ΣC_l). See `generator_ops`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from pathrt.runtime import generator_ops as gen

NAMESPACE = "pathrt"
MASK_THRESHOLD = 0.5  # SPEC §3: kept iff sigmoid(logit) >= 0.5; the C++ kernels use the same constant
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


def _check_channel_mask(op: str, mask: torch.Tensor, n: int, c: int, name: str, float_allowed: bool) -> None:
    allowed = (torch.bool, torch.float32) if float_allowed else (torch.bool,)
    if mask.dtype not in allowed:
        raise TypeError(f"{op}: {name} must be {' or '.join(str(t).removeprefix('torch.') for t in allowed)}, "
                        f"got {mask.dtype}")
    if tuple(mask.shape) != (n, c):
        raise ValueError(f"{op}: {name} must have shape ({n}, {c}) (one row per sample), got {tuple(mask.shape)}")


def check_logits(logits: torch.Tensor) -> None:
    if logits.dtype != torch.float32:
        raise TypeError(f"pathrt::daq_threshold_pack: logits must be float32, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"pathrt::daq_threshold_pack: logits must be 2-D (N, K), got shape {tuple(logits.shape)}; "
                         "concatenate the per-layer head logits with torch.cat(dim=1)")


def check_masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> None:
    op = "pathrt::masked_bias_relu"
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: x must be float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    _check_channel_mask(op, mask, x.shape[0], x.shape[1], "mask", True)
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (x.shape[1],)):
        raise ValueError(f"{op}: bias must be float32 of shape ({x.shape[1]},), got {bias.dtype} {tuple(bias.shape)}")


def _conv_output_shape(x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int]) -> tuple:
    op = "pathrt::pathway_conv2d"
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"{op}: x and weight must be float32, got {x.dtype} and {weight.dtype}")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x (N, C_in, H, W) and weight (C_out, C_in, kH, kW) do not match: "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: stride must be 2 positive ints and padding 2 non-negative ints, "
                         f"got {stride}, {padding}")
    ho = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"{op}: the kernel {tuple(weight.shape)} does not fit the padded input {tuple(x.shape)}")
    return x.shape[0], weight.shape[0], ho, wo


def check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding) -> tuple:
    op = "pathrt::pathway_conv2d"
    shape = _conv_output_shape(x, weight, stride, padding)
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (shape[1],)):
        raise ValueError(f"{op}: bias must be float32 of shape ({shape[1]},), got {bias.dtype} {tuple(bias.shape)}")
    if residual is not None and (residual.dtype != torch.float32 or tuple(residual.shape) != tuple(shape)):
        raise ValueError(f"{op}: residual must be float32 of shape {tuple(shape)}, got {residual.dtype} "
                         f"{tuple(residual.shape)}")
    if in_mask is not None:
        _check_channel_mask(op, in_mask, x.shape[0], x.shape[1], "in_mask", False)
    if out_mask is not None:
        _check_channel_mask(op, out_mask, x.shape[0], weight.shape[0], "out_mask", False)
    return shape


def daq_threshold_pack_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of `pathrt::daq_threshold_pack` (see the module docstring)."""
    check_logits(logits)
    scores = torch.sigmoid(logits)
    masks = scores >= MASK_THRESHOLD
    return scores, masks, pack_masks_reference(masks), masks.sum(1)


def masked_bias_relu_reference(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Reference of `pathrt::masked_bias_relu` (see the module docstring)."""
    check_masked_bias_relu(x, bias, mask)
    return masked_bias_relu_math(x, bias, mask)


def masked_bias_relu_math(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """The reference's arithmetic without its float32 checks (any float dtype; what ONNX export traces)."""
    y = torch.relu(x if bias is None else x + bias[None, :, None, None])
    if mask.dtype == torch.bool:
        return torch.where(mask[:, :, None, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    return torch.where(mask[:, :, None, None] == 0, torch.zeros((), dtype=y.dtype, device=y.device),
                       y * mask[:, :, None, None])


def masked_bias_relu_inplace_reference(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> None:
    """Reference of `pathrt::masked_bias_relu_`: writes masked_bias_relu(x, bias, mask) into x."""
    x.copy_(masked_bias_relu_reference(x, bias, mask))


def pathway_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             residual: torch.Tensor | None, in_mask: torch.Tensor | None,
                             out_mask: torch.Tensor | None, stride: list[int], padding: list[int],
                             relu: bool) -> torch.Tensor:
    """Reference of `pathrt::pathway_conv2d` (see the module docstring): dense conv, then masks."""
    check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding)
    if in_mask is not None:
        x = torch.where(in_mask[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    y = torch.nn.functional.conv2d(x, weight, bias, list(stride), list(padding))
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    if out_mask is not None:
        y = torch.where(out_mask[:, :, None, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y


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


def _daq_threshold_pack_fake(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    check_logits(logits)
    n, k = logits.shape
    return (logits.new_empty((n, k)), logits.new_empty((n, k), dtype=torch.bool),
            logits.new_empty((n, (k + 7) // 8), dtype=torch.uint8), logits.new_empty((n,), dtype=torch.int64))


def dense_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the 4-D kernels write: channels-last for channels-last inputs, else NCHW (as in C++)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _masked_bias_relu_fake(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    check_masked_bias_relu(x, bias, mask)
    return torch.empty_like(x, memory_format=dense_format(x))


def _masked_bias_relu_inplace_fake(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> None:
    check_masked_bias_relu(x, bias, mask)


def _pathway_conv2d_fake(x, weight, bias, residual, in_mask, out_mask, stride, padding, relu) -> torch.Tensor:
    shape = check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding)
    return x.new_empty(shape).contiguous(memory_format=dense_format(x))


OPS: dict[str, OpDecl] = {
    decl.name: decl
    for decl in (
        OpDecl("pack_masks", "pack_masks(Tensor masks) -> Tensor", pack_masks_reference, _pack_masks_fake),
        OpDecl("pairwise_iou", "pairwise_iou(Tensor a, Tensor b) -> Tensor", pairwise_iou_reference,
               _pairwise_iou_fake),
        OpDecl("daq_threshold_pack",
               "daq_threshold_pack(Tensor logits) -> (Tensor scores, Tensor masks, Tensor packed, Tensor counts)",
               daq_threshold_pack_reference, _daq_threshold_pack_fake),
        OpDecl("masked_bias_relu", "masked_bias_relu(Tensor x, Tensor? bias, Tensor mask) -> Tensor",
               masked_bias_relu_reference, _masked_bias_relu_fake),
        OpDecl("masked_bias_relu_", "masked_bias_relu_(Tensor(a!) x, Tensor? bias, Tensor mask) -> ()",
               masked_bias_relu_inplace_reference, _masked_bias_relu_inplace_fake),
        OpDecl("pathway_conv2d",
               "pathway_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? in_mask, "
               "Tensor? out_mask, int[2] stride, int[2] padding, bool relu) -> Tensor",
               pathway_conv2d_reference, _pathway_conv2d_fake),
        OpDecl("rfe_tail", "rfe_tail(Tensor[] maps, Tensor cls, Tensor weight, Tensor bias, Tensor norm_weight, "
               "Tensor norm_bias, Tensor position, float eps) -> Tensor", gen.rfe_tail_reference, gen.rfe_tail_fake),
        OpDecl("pdn_encoder_layer", "pdn_encoder_layer(Tensor x, Tensor[] params, int heads, float eps) -> Tensor",
               gen.pdn_encoder_layer_reference, gen.pdn_encoder_layer_fake),
        OpDecl("rpd_decode", "rpd_decode(Tensor z, Tensor[] params, Tensor[] heads, float eps) -> (Tensor logits, "
               "Tensor scores, Tensor masks, Tensor packed, Tensor counts)", gen.rpd_decode_reference,
               gen.rpd_decode_fake),
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


def daq_threshold_pack(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head logits (N, K) → (scores, masks = scores >= 0.5, packed masks, kept counts) in one pass."""
    return torch.ops.pathrt.daq_threshold_pack(logits)


def masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                     inplace: bool = False) -> torch.Tensor:
    """relu(x + bias[c]) * mask[n, c] for x (N, C, H, W); in place on a contiguous x when asked."""
    if inplace:
        torch.ops.pathrt.masked_bias_relu_(x, bias, mask)
        return x
    return torch.ops.pathrt.masked_bias_relu(x, bias, mask)


def pathway_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, in_mask: torch.Tensor | None = None,
                   out_mask: torch.Tensor | None = None, stride: tuple[int, int] = (1, 1),
                   padding: tuple[int, int] = (0, 0), relu: bool = False) -> torch.Tensor:
    """Channel-sparse conv per sample: reads kept input channels, computes kept output channels only."""
    return torch.ops.pathrt.pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, list(stride),
                                           list(padding), relu)


def rfe_tail(maps: list[torch.Tensor], cls: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             norm_weight: torch.Tensor, norm_bias: torch.Tensor, position: torch.Tensor, eps: float) -> torch.Tensor:
    """RFE tail of all layers: maps (N, d_r, H_l, W_l) → the PDN's input [CLS, tokens] (N, L+1, d)."""
    return torch.ops.pathrt.rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position, eps)


def pdn_encoder_layer(x: torch.Tensor, params: list[torch.Tensor], heads: int, eps: float) -> torch.Tensor:
    """One pre-LN Transformer encoder layer on (N, T, d); params in `generator_ops.PDN_PARAMS` order."""
    return torch.ops.pathrt.pdn_encoder_layer(x, params, heads, eps)


def rpd_decode(z: torch.Tensor, params: list[torch.Tensor], heads: list[torch.Tensor],
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final LN + RPD recursion + DAQ threshold: (head logits, scores, masks, packed, kept counts)."""
    return torch.ops.pathrt.rpd_decode(z, params, heads, eps)
