"""RFE: the per-layer feature encoders of GEN-CNP (SPEC §3).

For pathway layer l: average-pool the feature map to at most `pool_size`² (the cost-budget choice
of SPEC §3), 1x1 conv C_l→d_r + BN + ReLU, then one block [3x3 conv d_r→d_r stride 2, BN, ReLU]
shared by all layers and applied r_l = max(0, ceil(log2(H_l' / s0))) times (H_l' the pooled size),
global average pool, Linear d_r→d, LayerNorm, plus a learned layer-position embedding → e_l.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pathrt.targets.spec import PathwayLayer


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling; as a plain strided average pool when the size divides evenly (the
    same windows, and several times faster on CPU)."""
    (h, w), (ph, pw) = x.shape[-2:], size
    if h % ph == 0 and w % pw == 0:
        return F.avg_pool2d(x, (h // ph, w // pw))
    return F.adaptive_avg_pool2d(x, size)


def pooled_size(height: int, width: int, pool_size: int) -> tuple[int, int]:
    """Spatial size after the RFE's input pooling (never upsampled)."""
    return min(height, pool_size), min(width, pool_size)


def reductions(height: int, s0: int) -> int:
    """r_l = max(0, ceil(log2(H / s0)))."""
    return max(0, math.ceil(math.log2(height / s0))) if height > 0 else 0


class RFE(nn.Module):
    """Encodes every pathway layer's feature map into one token e_l ∈ R^d."""

    def __init__(self, layers: Sequence[PathwayLayer], d_r: int, d: int, s0: int, pool_size: int) -> None:
        super().__init__()
        self.pool_sizes = [pooled_size(lay.height, lay.width, pool_size) for lay in layers]
        self.repeats = [reductions(max(h, w), s0) for h, w in self.pool_sizes]
        self.stems = nn.ModuleList(_conv_bn_relu(lay.channels, d_r, 1, 1) for lay in layers)
        self.shared = _conv_bn_relu(d_r, d_r, 3, 2)
        self.project = nn.Linear(d_r, d)
        self.norm = nn.LayerNorm(d)
        self.position = nn.Parameter(torch.zeros(len(layers), d))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, C_l, H_l, W_l) per layer → tokens (N, L, d)."""
        tokens = []
        for index, x in enumerate(features):
            if tuple(x.shape[-2:]) != self.pool_sizes[index]:
                x = pool_to(x, self.pool_sizes[index])
            x = self.stems[index](x)
            for _ in range(self.repeats[index]):
                x = self.shared(x)
            tokens.append(self.project(x.mean(dim=(2, 3))))
        return self.norm(torch.stack(tokens, dim=1)) + self.position
