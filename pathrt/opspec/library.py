"""The `pathrt` torch.library namespace: every op's schema, reference and fake kernel, declared once.

Importing this module defines the schemas and registers the fakes (meta kernels), so the ops trace.
The kernels come from `pathrt.kernels.native` (the compiled extension pathrt._C, with the
reference registered for every dispatch key it lacks) and `pathrt.kernels` (Triton twins named
`pathrt::triton_*`).

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
  pathrt::masked_bias_relu(Tensor x, Tensor? bias, Tensor mask, Tensor? fill=None) -> Tensor
      the pathway pass's conv epilogue: relu(x + bias[c]) * mask[n, c] for float32 x (N, C, H, W);
      mask (N, C) bool (removed channels are exactly 0) or float32 (scales). `fill` float32 (C,):
      the value a removed channel holds instead of 0 (mean ablation: the channel's mean activation).
  pathrt::masked_bias_relu_(Tensor(a!) x, Tensor? bias, Tensor mask, Tensor? fill=None) -> ()
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
      `pathrt.opspec.PDN_PARAMS`.
  pathrt::rpd_decode(Tensor z, Tensor[] params, Tensor[] heads, float eps)
      -> (Tensor logits, Tensor scores, Tensor masks, Tensor packed, Tensor counts)
      the PDN's final LayerNorm, the RPD GRU recursion with its per-layer heads, and the DAQ threshold
      (as daq_threshold_pack) over the concatenated head logits (N, ΣC_l). See `pathrt.opspec.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pathrt.opspec import fused, generator, masks

NAMESPACE = "pathrt"
DISPATCH_KEYS = ("CPU", "CUDA")

LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


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


OPS: dict[str, OpDecl] = {
    decl.name: decl
    for decl in (
        OpDecl("pack_masks", "pack_masks(Tensor masks) -> Tensor", masks.pack_masks_reference, masks.pack_masks_fake),
        OpDecl("pairwise_iou", "pairwise_iou(Tensor a, Tensor b) -> Tensor", masks.pairwise_iou_reference,
               masks.pairwise_iou_fake),
        OpDecl("daq_threshold_pack",
               "daq_threshold_pack(Tensor logits) -> (Tensor scores, Tensor masks, Tensor packed, Tensor counts)",
               fused.daq_threshold_pack_reference, fused.daq_threshold_pack_fake),
        OpDecl("masked_bias_relu", "masked_bias_relu(Tensor x, Tensor? bias, Tensor mask, Tensor? fill=None) -> Tensor",
               fused.masked_bias_relu_reference, fused.masked_bias_relu_fake),
        OpDecl("masked_bias_relu_",
               "masked_bias_relu_(Tensor(a!) x, Tensor? bias, Tensor mask, Tensor? fill=None) -> ()",
               fused.masked_bias_relu_inplace_reference, fused.masked_bias_relu_inplace_fake),
        OpDecl("pathway_conv2d",
               "pathway_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? in_mask, "
               "Tensor? out_mask, int[2] stride, int[2] padding, bool relu) -> Tensor",
               fused.pathway_conv2d_reference, fused.pathway_conv2d_fake),
        OpDecl("rfe_tail", "rfe_tail(Tensor[] maps, Tensor cls, Tensor weight, Tensor bias, Tensor norm_weight, "
               "Tensor norm_bias, Tensor position, float eps) -> Tensor", generator.rfe_tail_reference,
               generator.rfe_tail_fake),
        OpDecl("pdn_encoder_layer", "pdn_encoder_layer(Tensor x, Tensor[] params, int heads, float eps) -> Tensor",
               generator.pdn_encoder_layer_reference, generator.pdn_encoder_layer_fake),
        OpDecl("rpd_decode", "rpd_decode(Tensor z, Tensor[] params, Tensor[] heads, float eps) -> (Tensor logits, "
               "Tensor scores, Tensor masks, Tensor packed, Tensor counts)", generator.rpd_decode_reference,
               generator.rpd_decode_fake),
    )
}

for _decl in OPS.values():
    LIBRARY.define(_decl.schema)
    torch.library.register_fake(_decl.qualname, _decl.fake, lib=LIBRARY)


