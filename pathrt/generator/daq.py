"""DAQ: 1-bit distance-aware quantization of pathway scores (SPEC §3).

From the distance-aware quantizer (Kim, Lee, Ham, ICCV 2021) reduced to the levels {0, 1}:
  d_k = exp(−|s − q_k|), k̂ = argmax_k d_k, g_k = exp(−(q_k − q_k̂)² / σ²), φ_k = d_k·g_k,
  T* = T / (|φ_0 − φ_1| + 1e-6) (no gradient), π = softmax(T*·φ),
  δ = 1 / (e^T − 1), q̃ = (−δ, 1 + δ), m̃ = Σ_k q̃_k π_k.
Algebraically m̃ equals the nearest level; in floating point it is off by ~1e-8, so the training
output adds the (detached) rounding residual: its value is exactly the hard mask while its gradient
is that of m̃ (through π). "Rounding" is `s >= threshold` (0.5 → 1), the same rule as inference,
so training and deployment agree on ties.
"""

from __future__ import annotations

import math

import torch
from torch import nn

THRESHOLD = 0.5


def hard_mask(scores: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """The inference mask every backend must use: `scores >= threshold` (bool)."""
    return scores >= threshold


class DAQ(nn.Module):
    """Distance-aware 1-bit quantizer: soft-gradient masks in training, `s >= 0.5` in inference."""

    def __init__(self, sigma: float = 2.0, temperature: float = 2.0) -> None:
        super().__init__()
        if sigma <= 0 or temperature <= 0:
            raise ValueError(f"DAQ needs sigma > 0 and temperature > 0, got {sigma}, {temperature}")
        self.sigma = sigma
        self.temperature = temperature

    def soft(self, scores: torch.Tensor) -> torch.Tensor:
        """m̃ of the module docstring (its value ≈ the hard mask, up to rounding error)."""
        levels = (0.0, 1.0)
        d = torch.stack([torch.exp(-(scores - q).abs()) for q in levels])
        nearest = (scores >= THRESHOLD).to(scores.dtype)  # q_k̂ (d_1 > d_0 iff s > 0.5)
        g = torch.stack([torch.exp(-((q - nearest) ** 2) / self.sigma**2) for q in levels])
        phi = d * g
        t_star = (self.temperature / ((phi[0] - phi[1]).abs() + 1e-6)).detach()
        pi = torch.softmax(t_star * phi, dim=0)
        delta = 1.0 / (math.exp(self.temperature) - 1.0)
        return -delta * pi[0] + (1.0 + delta) * pi[1]

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """Training: exact hard values carrying m̃'s gradient. Eval: the hard mask as a float tensor."""
        hard = hard_mask(scores).to(scores.dtype)
        if not self.training:
            return hard
        soft = self.soft(scores)
        return soft + (hard - soft).detach()
