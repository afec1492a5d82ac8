"""Random pathways at matched per-sample sparsity: the floor every pathway method must beat."""

from __future__ import annotations

import torch

from pathrt.errors import InputError
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation


def random_masks(kept: torch.Tensor, total: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, total) bool masks, row i keeping exactly kept[i] neurons chosen uniformly at random."""
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1)
    if len(kept) and (kept.min() < 0 or kept.max() > total):
        raise InputError(f"kept counts must lie in [0, {total}]")
    ranks = torch.rand(len(kept), total, generator=generator).argsort(1).argsort(1)
    return ranks < kept[:, None]


def random_pathways(explainer: Explainer, images: torch.Tensor, reference: Explanation,
                    seed: int = 0) -> Explanation:
    """Random pathways with the same per-sample neuron counts as `reference`, explaining its classes."""
    generator = torch.Generator().manual_seed(seed)
    masks = random_masks(reference.kept, reference.spec.total_channels, generator)
    return explainer.explain_with_masks(images, masks, reference.classes, label="random")
