"""Critical pathways (Khakzar et al., CVPR 2021), with our neuron definition (SPEC §7).

Channel contribution = Σ_{h,w} |a · ∂z_c/∂a| for every pathway-layer activation a, z_c the
pre-softmax logit of the explained class; one global ranking over all layers keeps the most
contributing channels: a fixed fraction (their percentile rule) or per-sample counts (matched
sparsity). Cost: one forward and one backward pass of the target per batch.
"""

from __future__ import annotations

import torch

from pathrt.baselines.common import explanation_from_scores, kept_for_sparsity, top_k_masks
from pathrt.runtime.explainer import ClassSpec, Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.targets import capture_features


def channel_contributions(explainer: Explainer, images: torch.Tensor, target: ClassSpec = None) -> torch.Tensor:
    """(N, K) contributions Σ_{h,w} |a · ∂z_c/∂a|, layers concatenated in spec order."""
    parts = []
    for rows, chunk in explainer.chunks(images):
        # autograd even under no_grad or inference_mode (the clone is a normal tensor, a graph root); the
        # hooks go on the explainer's shared model, so hold it
        with torch.inference_mode(False), torch.enable_grad(), explainer.using_model() as model:
            x = chunk.detach().clone().requires_grad_(True)
            capture = capture_features(model, explainer.spec, x, check=False)
            classes = explainer.resolve_classes(Explainer.rows_of(target, rows), capture.logits.detach())
            chosen = capture.logits.gather(1, classes[:, None]).sum()
            grads = torch.autograd.grad(chosen, capture.features)
        parts.append(torch.cat([(a * g).abs().sum(dim=(2, 3)) for a, g in zip(capture.features, grads, strict=True)],
                               1).detach())
    return torch.cat(parts)


def critical_pathways(explainer: Explainer, images: torch.Tensor, *, sparsity: float | None = None,
                      kept: torch.Tensor | None = None, target: ClassSpec = None) -> Explanation:
    """Critical pathways keeping a global fraction (`sparsity` removed) or `kept[i]` neurons per image.

    Scores are the contributions normalized to [0, 1] per image.
    """
    contributions = channel_contributions(explainer, images, target)
    if kept is None:
        kept = kept_for_sparsity(len(images), explainer.spec.total_channels, 0.7 if sparsity is None else sparsity)
    scores = contributions / contributions.amax(1, keepdim=True).clamp_min(1e-12)
    return explanation_from_scores(explainer, images, scores, top_k_masks(contributions, kept), "critical-pathways",
                                   target)
