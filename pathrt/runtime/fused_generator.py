"""`FusedGenerator`: a BatchNorm-folded generator run as its convolutions + the three fused generator
ops (rfe_tail, pdn_encoder_layer, rpd_decode; see `pathrt.opspec.generator`), with native kernels
(`torch.ops.pathrt`) or their Triton twins (`pathrt.kernels.triton_generator`). `folded_generator`
makes the folded copy the fast backends and the exported graphs run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pathrt.generator.rfe import pool_to
from pathrt.opspec import HEAD_PARAMS, PDN_PARAMS
from pathrt.targets.canonize import canonized_copy


def folded_generator(generator: nn.Module) -> nn.Module:
    """An eval-mode copy of a generator with its BatchNorms folded into the preceding convs (what the
    fast backends and the exported graphs run)."""
    with warnings.catch_warnings():  # its forward loops over layers: fx cannot trace it, Sequentials fold
        warnings.filterwarnings("ignore", message="torch.fx could not trace PathwayGenerator")
        return canonized_copy(generator)


class FusedGenerator:
    """A BatchNorm-folded `PathwayGenerator` run as convs + the three fused ops (eval only).

    `ops` is the namespace holding rfe_tail / pdn_encoder_layer / rpd_decode: torch.ops.pathrt
    (native kernels) or the Triton twins. The session's C++ generator runs the same steps.
    """

    def __init__(self, generator: nn.Module, ops) -> None:
        rfe, pdn, rpd = generator.rfe, generator.pdn, generator.rpd
        self.ops = ops
        self.pool_sizes = list(rfe.pool_sizes)
        self.repeats = list(rfe.repeats)
        self.stems = [_conv_params(stem[0]) for stem in rfe.stems]
        self.shared = _conv_params(rfe.shared[0])
        self.tail = _detached([rfe.project.weight, rfe.project.bias, rfe.norm.weight, rfe.norm.bias, rfe.position])
        self.cls = pdn.cls.detach().reshape(-1)
        layers = pdn.encoder.layers
        self.encoder = [_detached([layer.get_parameter(p) for p in PDN_PARAMS]) for layer in layers]
        self.heads = layers[0].self_attn.num_heads
        self.eps = float(rfe.norm.eps)
        self.encoder_eps = float(layers[0].norm1.eps)
        norm = pdn.encoder.norm
        cell = rpd.cell
        self.rpd = _detached([norm.weight, norm.bias, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh])
        self.rpd_eps = float(norm.eps)
        self.head_params = _detached([h.get_parameter(p) for h in rpd.heads for p in HEAD_PARAMS])

    def maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The RFE convolutions: each layer's map pooled, stem 1×1 conv + ReLU, shared 3×3/2 convs."""
        out = []
        for index, x in enumerate(features):
            if tuple(x.shape[-2:]) != self.pool_sizes[index]:
                x = pool_to(x, self.pool_sizes[index])
            weight, bias = self.stems[index]
            x = F.conv2d(x, weight, bias).relu_()
            for _ in range(self.repeats[index]):
                x = F.conv2d(x, self.shared[0], self.shared[1], 2, 1).relu_()
            out.append(x)
        return out

    def __call__(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Features → (head logits, scores, masks, packed masks, kept counts), all (N, ΣC) but counts (N,)."""
        x = self.ops.rfe_tail(self.maps(features), self.cls, *self.tail, self.eps)
        for params in self.encoder:
            x = self.ops.pdn_encoder_layer(x, params, self.heads, self.encoder_eps)
        return self.ops.rpd_decode(x, self.rpd, self.head_params, self.rpd_eps)


def _detached(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach() for p in params]


def _conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a BatchNorm-folded conv (folding gives every conv a bias)."""
    if conv.bias is None:
        raise ValueError("FusedGenerator needs a BatchNorm-folded generator (pathrt.runtime.fused_generator."
                         "folded_generator): its RFE convs have no bias")
    return conv.weight.detach(), conv.bias.detach()
