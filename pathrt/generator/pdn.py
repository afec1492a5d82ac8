"""PDN: a pre-LN Transformer encoder over [CLS, e_1..e_L], shared across layers (SPEC §3), so the
deep layers' class semantics reach the shallow layers' tokens."""

from __future__ import annotations

import torch
from torch import nn


class PDN(nn.Module):
    """Transformer encoder over the layer tokens with a learned CLS token; returns (z_cls, z_1..z_L)."""

    def __init__(self, d: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, int(d * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(d), enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, L, d) → z_cls (N, d), z (N, L, d)."""
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x = self.encoder(x)
        return x[:, 0], x[:, 1:]
