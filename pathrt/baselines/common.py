"""What the baselines share: turning per-neuron scores into pathways of a chosen size."""

from __future__ import annotations

import torch

from pathrt.errors import InputError
from pathrt.runtime.explainer import ClassSpec, Explainer
from pathrt.runtime.explanation import Explanation


def top_k_masks(scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(N, K) bool masks keeping, in row i, the kept[i] neurons of highest score (ties: lower index)."""
    kept = torch.as_tensor(kept, dtype=torch.long, device=scores.device).reshape(-1)
    if len(kept) != len(scores) or (kept < 0).any() or (kept > scores.shape[1]).any():
        raise InputError(f"kept counts must be one per row in [0, {scores.shape[1]}]")
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < kept[:, None]


def kept_for_sparsity(n: int, total: int, sparsity: float) -> torch.Tensor:
    """Per-sample kept counts for one global sparsity (fraction of neurons removed)."""
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must lie in [0, 1], got {sparsity}")
    return torch.full((n,), round((1.0 - sparsity) * total), dtype=torch.long)


def explanation_from_scores(explainer: Explainer, images: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor,
                            label: str, target: ClassSpec = None) -> Explanation:
    """The Explanation of baseline pathways `masks`, keeping the baseline's own neuron `scores`."""
    explanation = explainer.explain_with_masks(images, masks, target, label=label)
    explanation.scores = scores.float()
    return explanation
