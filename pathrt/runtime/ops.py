"""Public wrappers of pathrt's tensor ops (`torch.ops.pathrt.*`: schemas, references and fakes in
`pathrt.opspec`, kernels from `pathrt.kernels.native`)."""

from __future__ import annotations

import torch

import pathrt.kernels.native  # noqa: F401  (loads pathrt._C and registers every op's kernels)
from pathrt.opspec import unpack_masks

__all__ = ["daq_threshold_pack", "masked_bias_relu", "pack_masks", "pairwise_iou", "pathway_conv2d",
           "pdn_encoder_layer", "rfe_tail", "rpd_decode", "unpack_masks"]

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
                     inplace: bool = False, fill: torch.Tensor | None = None) -> torch.Tensor:
    """relu(x + bias[c]) * mask[n, c] for x (N, C, H, W), removed channels 0 or fill[c]; in place on a
    contiguous x when asked."""
    if inplace:
        torch.ops.pathrt.masked_bias_relu_(x, bias, mask, fill)
        return x
    return torch.ops.pathrt.masked_bias_relu(x, bias, mask, fill)


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
    """One pre-LN Transformer encoder layer on (N, T, d); params in `pathrt.opspec.PDN_PARAMS` order."""
    return torch.ops.pathrt.pdn_encoder_layer(x, params, heads, eps)


def rpd_decode(z: torch.Tensor, params: list[torch.Tensor], heads: list[torch.Tensor],
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final LN + RPD recursion + DAQ threshold: (head logits, scores, masks, packed, kept counts)."""
    return torch.ops.pathrt.rpd_decode(z, params, heads, eps)
