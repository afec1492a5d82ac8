"""Plain-PyTorch references, checks and fakes of the fused generator ops (schemas in `library`).

The generator (SPEC §3) after its convolutions is three fused steps, each one op:
  rfe_tail           the RFE tail of every layer at once: global average pool of each layer's
                     d_r-channel map, Linear d_r→d, LayerNorm, + position embedding; the CLS token
                     is prepended, so the result is the PDN's input sequence (N, L+1, d).
  pdn_encoder_layer  one pre-LN Transformer encoder layer on a short sequence:
                     x += out_proj(attention(LN1(x))); x += linear2(gelu(linear1(LN2(x)))).
  rpd_decode         the PDN's final LayerNorm, then the RPD recursion deepest layer first
                     (GRUCell, head Linear-GELU-Linear per layer) and the DAQ threshold:
                     head logits, scores, masks, packed masks and kept counts.

The references are the specification the C++/CUDA/Triton kernels are tested against, and are
themselves tested against the generator's nn modules (through `pathrt.runtime.FusedGenerator`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pathrt.opspec.fused import daq_threshold_pack_reference

PDN_PARAMS = ("norm1.weight", "norm1.bias", "self_attn.in_proj_weight", "self_attn.in_proj_bias",
              "self_attn.out_proj.weight", "self_attn.out_proj.bias", "norm2.weight", "norm2.bias",
              "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
RPD_PARAMS = ("norm.weight", "norm.bias", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
HEAD_PARAMS = ("0.weight", "0.bias", "2.weight", "2.bias")  # per layer: Linear d→d, GELU, Linear d→C_l


def _fail(op: str, message: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"pathrt::{op}: {message}")


def _check_float(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.dtype != torch.float32:
        _fail(op, f"{name} must be float32, got {t.dtype}", TypeError)
    if tuple(t.shape) != shape:
        _fail(op, f"{name} must have shape {shape}, got {tuple(t.shape)}")


def check_rfe_tail(maps: Sequence[torch.Tensor], cls: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   norm_weight: torch.Tensor, norm_bias: torch.Tensor, position: torch.Tensor) -> tuple[int, int, int]:
    """Validates rfe_tail's arguments; returns (N, L, d)."""
    op = "rfe_tail"
    if len(maps) == 0:
        _fail(op, "needs at least one layer map")
    if weight.dim() != 2:
        _fail(op, f"weight must be 2-D (d, d_r), got shape {tuple(weight.shape)}")
    d, d_r = weight.shape
    n = maps[0].shape[0] if maps[0].dim() == 4 else -1
    for i, m in enumerate(maps):
        if m.dtype != torch.float32:
            _fail(op, f"maps[{i}] must be float32, got {m.dtype}", TypeError)
        if m.dim() != 4 or m.shape[0] != n or m.shape[1] != d_r or m.shape[2] * m.shape[3] == 0:
            _fail(op, f"maps[{i}] must be (N={n}, d_r={d_r}, H>0, W>0) like maps[0], got {tuple(m.shape)}")
    _check_float(op, "cls", cls.reshape(-1), (d,))  # (d,) or the module's (1, 1, d)
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        _check_float(op, name, t, (d,))
    _check_float(op, "position", position, (len(maps), d))
    return n, len(maps), d


def rfe_tail_reference(maps: Sequence[torch.Tensor], cls: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       norm_weight: torch.Tensor, norm_bias: torch.Tensor, position: torch.Tensor,
                       eps: float) -> torch.Tensor:
    n, _, d = check_rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position)
    pooled = torch.stack([m.mean(dim=(2, 3)) for m in maps], dim=1)  # (N, L, d_r)
    tokens = F.layer_norm(F.linear(pooled, weight, bias), (d,), norm_weight, norm_bias, eps) + position
    return torch.cat([cls.reshape(1, 1, d).expand(n, 1, d), tokens], dim=1)


def check_pdn_encoder_layer(x: torch.Tensor, params: Sequence[torch.Tensor], heads: int) -> None:
    op = "pdn_encoder_layer"
    if x.dtype != torch.float32:
        _fail(op, f"x must be float32, got {x.dtype}", TypeError)
    if x.dim() != 3 or x.shape[1] == 0:
        _fail(op, f"x must be (N, T>0, d), got shape {tuple(x.shape)}")
    if len(params) != len(PDN_PARAMS):
        _fail(op, f"needs {len(PDN_PARAMS)} parameters ({', '.join(PDN_PARAMS)}), got {len(params)}")
    d = x.shape[2]
    if heads < 1 or d % heads:
        _fail(op, f"heads must divide d = {d}, got {heads}")
    ff = params[8].shape[0] if params[8].dim() == 2 else -1
    shapes = ((d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,))
    for name, t, shape in zip(PDN_PARAMS, params, shapes, strict=True):
        _check_float(op, name, t, shape)


def pdn_encoder_layer_reference(x: torch.Tensor, params: Sequence[torch.Tensor], heads: int,
                                eps: float) -> torch.Tensor:
    check_pdn_encoder_layer(x, params, heads)
    n1w, n1b, in_w, in_b, out_w, out_b, n2w, n2b, l1w, l1b, l2w, l2b = params
    n, t, d = x.shape
    h = F.layer_norm(x, (d,), n1w, n1b, eps)
    q, k, v = F.linear(h, in_w, in_b).view(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v  # (N, heads, T, dh)
    x = x + F.linear(attn.transpose(1, 2).reshape(n, t, d), out_w, out_b)
    return x + F.linear(F.gelu(F.linear(F.layer_norm(x, (d,), n2w, n2b, eps), l1w, l1b)), l2w, l2b)


def check_rpd_decode(z: torch.Tensor, params: Sequence[torch.Tensor], heads: Sequence[torch.Tensor]) -> list[int]:
    """Validates rpd_decode's arguments; returns the channel count C_l of every layer."""
    op = "rpd_decode"
    if z.dtype != torch.float32:
        _fail(op, f"z must be float32, got {z.dtype}", TypeError)
    if z.dim() != 3 or z.shape[1] < 2:
        _fail(op, f"z must be (N, L+1, d) with L >= 1 (CLS first), got shape {tuple(z.shape)}")
    layers, d = z.shape[1] - 1, z.shape[2]
    if len(params) != len(RPD_PARAMS):
        _fail(op, f"needs {len(RPD_PARAMS)} parameters ({', '.join(RPD_PARAMS)}), got {len(params)}")
    for name, t, shape in zip(RPD_PARAMS, params, ((d,), (d,), (3 * d, d), (3 * d, d), (3 * d,), (3 * d,)),
                              strict=True):
        _check_float(op, name, t, shape)
    if len(heads) != 4 * layers:
        _fail(op, f"needs 4 head tensors per layer ({', '.join(HEAD_PARAMS)}) for {layers} layers, "
              f"got {len(heads)}")
    channels = []
    for layer in range(layers):
        w1, b1, w2, b2 = heads[4 * layer: 4 * layer + 4]
        c = w2.shape[0] if w2.dim() == 2 and w2.shape[0] > 0 else 0
        for name, t, shape in zip(HEAD_PARAMS, (w1, b1, w2, b2), ((d, d), (d,), (c, d), (c,)), strict=True):
            _check_float(op, f"head {layer} {name}", t, shape)
        if c == 0:
            _fail(op, f"head {layer} has no output channels")
        channels.append(c)
    return channels


def rpd_decode_reference(z: torch.Tensor, params: Sequence[torch.Tensor], heads: Sequence[torch.Tensor],
                         eps: float) -> tuple[torch.Tensor, ...]:
    layers = len(check_rpd_decode(z, params, heads))
    norm_w, norm_b, w_ih, w_hh, b_ih, b_hh = params
    z = F.layer_norm(z, (z.shape[2],), norm_w, norm_b, eps)
    state = z[:, 0]
    logits: list[torch.Tensor] = [state] * layers
    for layer in reversed(range(layers)):
        state = torch.gru_cell(z[:, layer + 1], state, w_ih, w_hh, b_ih, b_hh)
        w1, b1, w2, b2 = heads[4 * layer: 4 * layer + 4]
        logits[layer] = F.linear(F.gelu(F.linear(state, w1, b1)), w2, b2)
    head = torch.cat(logits, 1)
    return (head, *daq_threshold_pack_reference(head))


def rfe_tail_fake(maps, cls, weight, bias, norm_weight, norm_bias, position, eps) -> torch.Tensor:
    n, layers, d = check_rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position)
    return maps[0].new_empty((n, layers + 1, d))


def pdn_encoder_layer_fake(x, params, heads, eps) -> torch.Tensor:
    check_pdn_encoder_layer(x, params, heads)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def rpd_decode_fake(z, params, heads, eps) -> tuple[torch.Tensor, ...]:
    k = sum(check_rpd_decode(z, params, heads))
    n = z.shape[0]
    return (z.new_empty((n, k)), z.new_empty((n, k)), z.new_empty((n, k), dtype=torch.bool),
            z.new_empty((n, (k + 7) // 8), dtype=torch.uint8), z.new_empty((n,), dtype=torch.int64))
