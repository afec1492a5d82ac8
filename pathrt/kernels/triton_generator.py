"""Triton kernels of the fused generator ops, as `pathrt::triton_rfe_tail`,
`pathrt::triton_pdn_encoder_layer` and `pathrt::triton_rpd_decode`.

Same semantics and checks as the C++/CUDA ops (references: `pathrt.opspec.generator`): GEMMs
through torch (cuBLAS on a GPU), everything between them in the kernels below — the global mean
pool, LayerNorm rows (+ input bias, + position), the short-sequence attention (one program per
sample and head, the whole T×T score tile in registers), bias + GELU and the GRU step; the DAQ
threshold is the Triton `daq_threshold_pack`. Launching needs a CUDA device, or
`TRITON_INTERPRET=1` for CPU tensors. `FusedGenerator(generator, pathrt.kernels.triton_generator)` runs a
generator through them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from pathrt.kernels.triton_fused import daq_threshold_pack
from pathrt.opspec import check_pdn_encoder_layer, check_rfe_tail, check_rpd_decode


@triton.jit
def _mean_pool_kernel(maps, out, PLANE, C, OUT_STRIDE, BLOCK_C: tl.constexpr):
    s = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    valid = c < C
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for px in range(0, PLANE):
        total += tl.load(maps + (s * PLANE + px) * C + c, mask=valid, other=0.0)
    tl.store(out + s * OUT_STRIDE + c, total / PLANE, mask=valid)


@triton.jit
def _layer_norm_kernel(x, in_bias, w, b, add, y, ADD_ROWS, D, eps, HAS_IN_BIAS: tl.constexpr,
                       HAS_ADD: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0)
    i = tl.arange(0, BLOCK_D)
    valid = i < D
    v = tl.load(x + r * D + i, mask=valid, other=0.0)
    if HAS_IN_BIAS:
        v += tl.load(in_bias + i, mask=valid, other=0.0)
        tl.store(x + r * D + i, v, mask=valid)
    mean = tl.sum(v, axis=0) / D
    diff = tl.where(valid, v - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / D + eps)
    out = diff * rstd * tl.load(w + i, mask=valid, other=0.0) + tl.load(b + i, mask=valid, other=0.0)
    if HAS_ADD:
        out += tl.load(add + (r % ADD_ROWS) * D + i, mask=valid, other=0.0)
    tl.store(y + r * D + i, out, mask=valid)


@triton.jit
def _attention_kernel(qkv, out, T, D, HEADS, DH, scale, BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr):
    s = tl.program_id(0) // HEADS
    head = tl.program_id(0) % HEADS
    t = tl.arange(0, BLOCK_T)
    e = tl.arange(0, BLOCK_DH)
    tile = (t[:, None] < T) & (e[None, :] < DH)
    rows = qkv + (s * T + t[:, None]) * 3 * D + head * DH + e[None, :]
    q = tl.load(rows, mask=tile, other=0.0)
    k = tl.load(rows + D, mask=tile, other=0.0)
    v = tl.load(rows + 2 * D, mask=tile, other=0.0)
    scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # (T, T)
    scores = tl.where(t[None, :] < T, scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    o = tl.sum(p[:, :, None] * v[None, :, :], axis=1)  # (T, DH)
    tl.store(out + (s * T + t[:, None]) * D + head * DH + e[None, :], o, mask=tile)


@triton.jit
def _bias_act_kernel(x, bias, TOTAL, D, GELU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < TOTAL
    v = tl.load(x + offs, mask=valid, other=0.0) + tl.load(bias + offs % D, mask=valid, other=0.0)
    if GELU:
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    tl.store(x + offs, v, mask=valid)


@triton.jit
def _gru_kernel(gi, gh, h, out, LAYERS, LAYER, D, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    j = tl.arange(0, BLOCK_D)
    valid = j < D
    gi_row = gi + (s * LAYERS + LAYER) * 3 * D
    gh_row = gh + s * 3 * D
    r = tl.sigmoid(tl.load(gi_row + j, mask=valid, other=0.0) + tl.load(gh_row + j, mask=valid, other=0.0))
    z = tl.sigmoid(tl.load(gi_row + D + j, mask=valid, other=0.0) + tl.load(gh_row + D + j, mask=valid, other=0.0))
    a = tl.load(gi_row + 2 * D + j, mask=valid, other=0.0) + r * tl.load(gh_row + 2 * D + j, mask=valid, other=0.0)
    n = 2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0  # tanh
    prev = tl.load(h + s * D + j, mask=valid, other=0.0)
    tl.store(out + s * D + j, (1.0 - z) * n + z * prev, mask=valid)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, in_bias: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm over the rows of a contiguous 2-D x (in_bias is added to x in place first)."""
    rows, d = x.shape
    y = torch.empty_like(x)
    if rows:
        wrap_triton(_layer_norm_kernel)[(rows,)](
            x, in_bias if in_bias is not None else w, w.contiguous(), b.contiguous(),
            add.contiguous() if add is not None else w, y, add.shape[0] if add is not None else 1, d, eps,
            HAS_IN_BIAS=in_bias is not None, HAS_ADD=add is not None, BLOCK_D=triton.next_power_of_2(d))
    return y


def _bias_act(x: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    if x.numel():
        wrap_triton(_bias_act_kernel)[(triton.cdiv(x.numel(), 1024),)](x, bias.contiguous(), x.numel(), x.shape[-1],
                                                                      GELU=gelu, BLOCK=1024)
    return x


@triton_op("pathrt::triton_rfe_tail", mutates_args=())
def rfe_tail(maps: list[torch.Tensor], cls: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             norm_weight: torch.Tensor, norm_bias: torch.Tensor, position: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton `pathrt::rfe_tail`: [CLS, LayerNorm(mean_hw(map_l) W^T + b) + position_l] (N, L+1, d)."""
    n, layers, d = check_rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position)
    d_r = weight.shape[1]
    pooled = torch.empty((n, layers, d_r), dtype=torch.float32, device=weight.device)
    for layer, m in enumerate(maps):
        m = m.contiguous(memory_format=torch.channels_last)
        if n:
            wrap_triton(_mean_pool_kernel)[(n,)](m, pooled[:, layer], m.shape[2] * m.shape[3], d_r, layers * d_r,
                                                 BLOCK_C=triton.next_power_of_2(d_r))
    tokens = torch.addmm(bias, pooled.view(n * layers, d_r), weight.t())
    normed = _layer_norm(tokens, norm_weight, norm_bias, eps, add=position)
    return torch.cat([cls.reshape(1, 1, d).expand(n, 1, d), normed.view(n, layers, d)], dim=1)


@triton_op("pathrt::triton_pdn_encoder_layer", mutates_args=())
def pdn_encoder_layer(x: torch.Tensor, params: list[torch.Tensor], heads: int, eps: float) -> torch.Tensor:
    """Triton `pathrt::pdn_encoder_layer`: one pre-LN Transformer encoder layer on (N, T, d)."""
    check_pdn_encoder_layer(x, params, heads)
    n1w, n1b, in_w, in_b, out_w, out_b, n2w, n2b, l1w, l1b, l2w, l2b = params
    n, t, d = x.shape
    rows = x.contiguous().view(n * t, d)
    h = _layer_norm(rows, n1w, n1b, eps)
    qkv = torch.addmm(in_b, h, in_w.t())
    attn = torch.empty_like(rows)
    if n:
        wrap_triton(_attention_kernel)[(n * heads,)](qkv, attn, t, d, heads, d // heads, 1.0 / math.sqrt(d // heads),
                                                     BLOCK_T=triton.next_power_of_2(t),
                                                     BLOCK_DH=triton.next_power_of_2(d // heads))
    x1 = torch.addmm(rows, attn, out_w.t())
    h = _layer_norm(x1, n2w, n2b, eps, in_bias=out_b)  # x1 += b_o (in place), then LN2
    hidden = _bias_act(torch.mm(h, l1w.t()), l1b, gelu=True)
    return _bias_act(torch.addmm(x1, hidden, l2w.t()), l2b, gelu=False).view(n, t, d)


@triton_op("pathrt::triton_rpd_decode", mutates_args=())
def rpd_decode(z: torch.Tensor, params: list[torch.Tensor], heads: list[torch.Tensor],
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `pathrt::rpd_decode`: final LN, GRU recursion with heads, DAQ threshold."""
    layers = len(check_rpd_decode(z, params, heads))
    norm_w, norm_b, w_ih, w_hh, b_ih, b_hh = params
    n, _, d = z.shape
    zn = _layer_norm(z.contiguous().view(-1, d), norm_w, norm_b, eps).view(n, layers + 1, d)
    gi = torch.addmm(b_ih, zn[:, 1:].reshape(n * layers, d), w_ih.t()).contiguous()
    state = zn[:, 0].contiguous()
    logits: list[torch.Tensor] = [state] * layers
    for layer in reversed(range(layers)):
        gh = torch.addmm(b_hh, state, w_hh.t())
        nxt = torch.empty_like(state)
        if n:
            wrap_triton(_gru_kernel)[(n,)](gi, gh, state, nxt, layers, layer, d, BLOCK_D=triton.next_power_of_2(d))
        state = nxt
        w1, b1, w2, b2 = heads[4 * layer: 4 * layer + 4]
        logits[layer] = torch.addmm(b2, _bias_act(torch.mm(state, w1.t()), b1, gelu=True), w2.t())
    head = torch.cat(logits, 1)
    return (head, *daq_threshold_pack(head))
