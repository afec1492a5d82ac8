"""Op specs: the leaf layer every layer above may use (kernels, targets, generator, runtime, export).

What each op of the `pathrt` torch.library namespace computes, written once: its schema and fake
kernel (`library`, which declares the namespace on import), its argument checks and its
plain-PyTorch reference (`masks`, `fused`, `generator`: the specification every C++/CUDA/Triton
kernel is tested against), the mask threshold, and the SPEC §8 parity rule (`parity`). Imports
torch and nothing of pathrt.
"""

from pathrt.opspec import parity
from pathrt.opspec.fused import (
    check_logits,
    check_masked_bias_relu,
    check_pathway_conv2d,
    daq_threshold_pack_reference,
    dense_format,
    masked_bias_relu_inplace_reference,
    masked_bias_relu_math,
    masked_bias_relu_reference,
    pathway_conv2d_reference,
    removed_value,
)
from pathrt.opspec.generator import (
    HEAD_PARAMS,
    PDN_PARAMS,
    RPD_PARAMS,
    check_pdn_encoder_layer,
    check_rfe_tail,
    check_rpd_decode,
    pdn_encoder_layer_reference,
    rfe_tail_reference,
    rpd_decode_reference,
)
from pathrt.opspec.library import DISPATCH_KEYS, NAMESPACE, OPS, OpDecl
from pathrt.opspec.masks import MASK_THRESHOLD, pack_masks_reference, pairwise_iou_reference, unpack_masks

__all__ = [
    "DISPATCH_KEYS", "HEAD_PARAMS", "MASK_THRESHOLD", "NAMESPACE", "OPS", "PDN_PARAMS", "RPD_PARAMS", "OpDecl",
    "check_logits", "check_masked_bias_relu", "check_pathway_conv2d", "check_pdn_encoder_layer", "check_rfe_tail",
    "check_rpd_decode", "daq_threshold_pack_reference", "dense_format", "masked_bias_relu_inplace_reference",
    "masked_bias_relu_math", "masked_bias_relu_reference", "pack_masks_reference", "pairwise_iou_reference",
    "parity", "pathway_conv2d_reference", "pdn_encoder_layer_reference", "removed_value", "rfe_tail_reference",
    "rpd_decode_reference", "unpack_masks",
]
