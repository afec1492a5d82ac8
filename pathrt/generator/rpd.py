"""RPD: the deep→shallow recursive pathway decoder (SPEC §3).

u_{L+1} = z_cls; u_l = GRUCell(z_l, u_{l+1}); a_l = MLP_l(u_l) ∈ R^{C_l}; s_l = sigmoid(a_l).
Each head's last bias starts at +3 (sigmoid ≈ 0.95), so the initial pathway is the full network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RPD(nn.Module):
    """Decodes per-layer channel logits a_l from the encoded tokens, deepest layer first."""

    def __init__(self, channels: Sequence[int], d: int, head_bias: float) -> None:
        super().__init__()
        self.cell = nn.GRUCell(d, d)
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, c)) for c in channels)
        for head in self.heads:
            nn.init.constant_(head[-1].bias, head_bias)
            nn.init.normal_(head[-1].weight, std=0.01)

    def forward(self, z_cls: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """z_cls (N, d), z (N, L, d) → logits a_l (N, C_l) for l = 1..L (in layer order)."""
        state = z_cls
        logits: list[torch.Tensor] = [z_cls] * len(self.heads)
        for layer in reversed(range(len(self.heads))):
            state = self.cell(z[:, layer], state)
            logits[layer] = self.heads[layer](state)
        return logits
