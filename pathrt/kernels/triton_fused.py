"""Triton kernels of the fused deployed-path ops, as `pathrt::triton_*` custom ops.

Same semantics and checks as the C++/CUDA ops (references in `pathrt.opspec`, which are the
specification); the math mirrors csrc/include/pathrt/epilogue.h: sigmoid = 1 / (1 + e^-a), kept iff
score >= 0.5, epilogue relu(acc + bias + residual) then channel mask. Tensors are made contiguous
(NCHW) first. Launching needs a CUDA device, or `TRITON_INTERPRET=1` for CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from pathrt.opspec import MASK_THRESHOLD, check_logits, check_masked_bias_relu, check_pathway_conv2d

_BLOCK = 128


@triton.jit
def _daq_threshold_pack_kernel(logits, scores, masks, packed, counts, K, NBYTES, THRESHOLD: tl.constexpr,
                               BLOCK_BYTES: tl.constexpr):
    row = tl.program_id(0)
    bit = tl.arange(0, 8)
    kept = tl.zeros((BLOCK_BYTES,), dtype=tl.int64)
    for start in range(0, NBYTES, BLOCK_BYTES):
        byte = start + tl.arange(0, BLOCK_BYTES)
        k = byte[:, None] * 8 + bit[None, :]
        valid = k < K
        a = tl.load(logits + row * K + k, mask=valid, other=0.0)
        s = 1.0 / (1.0 + tl.exp(-a))
        keep = (s >= THRESHOLD) & valid
        tl.store(scores + row * K + k, s, mask=valid)
        tl.store(masks + row * K + k, keep.to(tl.uint8), mask=valid)
        bits = tl.sum(keep.to(tl.int32) << bit[None, :], axis=1)
        tl.store(packed + row * NBYTES + byte, bits.to(tl.uint8), mask=byte < NBYTES)
        kept += tl.sum(keep.to(tl.int64), axis=1)
    tl.store(counts + row, tl.sum(kept, axis=0))


@triton_op("pathrt::triton_daq_threshold_pack", mutates_args=())
def daq_threshold_pack(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `pathrt::daq_threshold_pack`: scores, masks, packed masks, kept counts in one pass."""
    check_logits(logits)
    logits = logits.contiguous()
    n, k = logits.shape
    nbytes = (k + 7) // 8
    scores = torch.empty_like(logits)
    masks = torch.empty((n, k), dtype=torch.bool, device=logits.device)
    packed = torch.empty((n, nbytes), dtype=torch.uint8, device=logits.device)
    counts = torch.empty((n,), dtype=torch.int64, device=logits.device)
    if n:
        wrap_triton(_daq_threshold_pack_kernel)[(n,)](logits, scores, masks.view(torch.uint8), packed, counts, k,
                                                      nbytes, THRESHOLD=MASK_THRESHOLD, BLOCK_BYTES=16)
    return scores, masks, packed, counts


@triton.jit
def _masked_bias_relu_kernel(x, bias, mask, fill, out, C, PLANE, HAS_BIAS: tl.constexpr, HAS_FILL: tl.constexpr,
                             BLOCK: tl.constexpr):
    nc = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < PLANE
    m = tl.load(mask + nc)
    v = tl.load(x + nc * PLANE + offs, mask=valid, other=0.0)
    if HAS_BIAS:
        v += tl.load(bias + nc % C)
    removed = 0.0
    if HAS_FILL:
        removed = tl.load(fill + nc % C)
    y = tl.where(m == 0.0, removed, tl.maximum(v, 0.0) * m)
    tl.store(out + nc * PLANE + offs, y, mask=valid)


def _launch_masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                             fill: torch.Tensor | None, out: torch.Tensor) -> None:
    n, c, h, w = x.shape
    if x.numel() == 0:
        return
    grid = (n * c, triton.cdiv(h * w, _BLOCK))
    wrap_triton(_masked_bias_relu_kernel)[grid](x, bias.contiguous() if bias is not None else x,
                                                mask.float().contiguous(),
                                                fill.contiguous() if fill is not None else x, out, c, h * w,
                                                HAS_BIAS=bias is not None, HAS_FILL=fill is not None, BLOCK=_BLOCK)


@triton_op("pathrt::triton_masked_bias_relu", mutates_args=())
def masked_bias_relu_out_of_place(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Triton `pathrt::masked_bias_relu`: relu(x + bias[c]) * mask[n, c], removed channels 0 or fill[c]."""
    check_masked_bias_relu(x, bias, mask, fill)
    x = x.contiguous()
    out = torch.empty_like(x)
    _launch_masked_bias_relu(x, bias, mask, fill, out)
    return out


@triton_op("pathrt::triton_masked_bias_relu_", mutates_args={"x"})
def masked_bias_relu_inplace(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                             fill: torch.Tensor | None = None) -> None:
    """Triton `pathrt::masked_bias_relu_`: the same, in place on an NCHW-contiguous x."""
    check_masked_bias_relu(x, bias, mask, fill)
    if not x.is_contiguous():
        raise ValueError("pathrt::triton_masked_bias_relu_: x must be NCHW-contiguous; use the out-of-place op")
    _launch_masked_bias_relu(x, bias, mask, fill, x)


def masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                     inplace: bool = False, fill: torch.Tensor | None = None) -> torch.Tensor:
    """The KernelSet entry: in place when asked and x is NCHW-contiguous, else out of place."""
    if inplace and x.is_contiguous():
        masked_bias_relu_inplace(x, bias, mask, fill)
        return x
    return masked_bias_relu_out_of_place(x, bias, mask, fill)


@triton.jit
def _pathway_conv2d_kernel(x, weight, bias, residual, in_mask, out_mask, out, C_IN, H, W, C_OUT, HO, WO,
                           SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                           KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                           HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr, RELU: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    s = pid // C_OUT
    o = pid % C_OUT
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = pos < HO * WO
    oy = pos // WO
    ox = pos % WO
    keep = 1
    if HAS_OUT:
        keep = tl.load(out_mask + s * C_OUT + o).to(tl.int32)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for ci in range(0, C_IN * keep):  # a removed output channel loops over nothing
        read = 1
        if HAS_IN:
            read = tl.load(in_mask + s * C_IN + ci).to(tl.int32)
        if read != 0:  # a removed input channel is never read
            for dy in tl.static_range(KH):
                iy = oy * SH - PH + dy
                for dx in tl.static_range(KW):
                    ix = ox * SW - PW + dx
                    inside = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                    v = tl.load(x + ((s * C_IN + ci) * H + iy) * W + ix, mask=inside, other=0.0)
                    acc += v * tl.load(weight + ((o * C_IN + ci) * KH + dy) * KW + dx)
    if HAS_BIAS:
        acc += tl.load(bias + o)
    dst = (s * C_OUT + o) * HO * WO + pos
    if HAS_RES:
        acc += tl.load(residual + dst, mask=valid, other=0.0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    acc = tl.where(keep != 0, acc, 0.0)
    tl.store(out + dst, acc, mask=valid)


@triton_op("pathrt::triton_pathway_conv2d", mutates_args=())
def pathway_conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                      in_mask: torch.Tensor | None, out_mask: torch.Tensor | None, stride: list[int],
                      padding: list[int], relu: bool) -> torch.Tensor:
    """Triton `pathrt::pathway_conv2d`: direct per-sample channel-sparse convolution with fused epilogue."""
    n, c_out, ho, wo = check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty((n, c_out, ho, wo), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    dummy = x
    grid = (n * c_out, triton.cdiv(ho * wo, _BLOCK))
    wrap_triton(_pathway_conv2d_kernel)[grid](
        x, weight, bias.contiguous() if bias is not None else dummy,
        residual.contiguous() if residual is not None else dummy,
        in_mask.contiguous().view(torch.uint8) if in_mask is not None else dummy,
        out_mask.contiguous().view(torch.uint8) if out_mask is not None else dummy, out,
        x.shape[1], x.shape[2], x.shape[3], c_out, ho, wo,
        SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], KH=weight.shape[2], KW=weight.shape[3],
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, HAS_IN=in_mask is not None,
        HAS_OUT=out_mask is not None, RELU=relu, BLOCK=_BLOCK)
    return out


def pathway_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, in_mask: torch.Tensor | None = None,
                   out_mask: torch.Tensor | None = None, stride: tuple[int, int] = (1, 1),
                   padding: tuple[int, int] = (0, 0), relu: bool = False) -> torch.Tensor:
    """The KernelSet entry, with the same signature as `pathrt.runtime.ops.pathway_conv2d`."""
    return pathway_conv2d_op(x, weight, bias, residual, in_mask, out_mask, list(stride), list(padding), relu)
