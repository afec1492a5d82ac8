"""Baselines on hand-made tiny networks whose right pathway is known, and batching invariants."""

from __future__ import annotations

import torch
from torch import nn

from pathrt.baselines import (
    DGRConfig,
    channel_contributions,
    critical_pathways,
    dgr_gates,
    dgr_pathways,
    top_k_masks,
)
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.runtime import Explainer
from pathrt.targets import Target, spec_from_modules


class _Known(nn.Module):
    """Four channels each copying the input; only channels 0 (weight 2) and 1 (weight 1) reach class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def _explainer(batch_size: int = 256) -> Explainer:
    model = _Known().eval()
    spec = spec_from_modules(model, ["act"], (1, 4, 4))
    target = Target(model, "known", spec, ("zero", "one"), (0.0,), (1.0,))
    generator = PathwayGenerator(spec, GeneratorConfig.small(d=16, heads=2, d_r=4))
    return Explainer(target, generator, max_batch_size=batch_size)


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.5


def test_critical_pathways_find_the_contributing_channels() -> None:
    explainer, x = _explainer(), _images()
    contributions = channel_contributions(explainer, x)
    mean = x.mean(dim=(1, 2, 3))
    # ∂z_0/∂a_hw = w_c / 16 (average pool over 4x4), so Σ_hw |a · ∂z_0/∂a| = w_c · mean(x)
    expected = torch.stack([2 * mean, mean, torch.zeros(3), torch.zeros(3)], 1)
    torch.testing.assert_close(contributions, expected)
    top2 = critical_pathways(explainer, x, sparsity=0.5)
    assert top2.masks.tolist() == [[True, True, False, False]] * 3
    top1 = critical_pathways(explainer, x, kept=torch.tensor([1, 1, 2]))
    assert top1.masks.tolist() == [[True, False, False, False]] * 2 + [[True, True, False, False]]
    assert top2.backend == "critical-pathways" and torch.equal(top2.classes, torch.zeros(3, dtype=torch.long))


def test_dgr_closes_the_useless_channels() -> None:
    explainer, x = _explainer(), _images()
    gates = dgr_gates(explainer, x)
    assert gates.shape == (3, 4) and (gates >= 0).all() and (gates <= 5).all()
    assert (gates[:, :2].min(1).values > gates[:, 2:].max(1).values).all()
    matched = dgr_pathways(explainer, x, kept=torch.full((3,), 2))
    assert matched.masks.tolist() == [[True, True, False, False]] * 3
    assert torch.equal(matched.pathway_logits.argmax(1), matched.logits.argmax(1))


def test_dgr_is_per_image_within_a_batch() -> None:
    x = _images(4)
    batched = dgr_gates(_explainer(), x, DGRConfig(iterations=10))
    chunked = dgr_gates(_explainer(batch_size=1), x, DGRConfig(iterations=10))
    torch.testing.assert_close(batched, chunked)


def test_top_k_masks_ties_and_counts() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.1, 0.9], [0.0, 0.0, 0.0, 0.0]])
    masks = top_k_masks(scores, torch.tensor([2, 1]))
    assert masks.tolist() == [[True, False, False, True], [True, False, False, False]]
