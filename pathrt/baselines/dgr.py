"""DGR, critical data routing paths (Wang et al., CVPR 2018), with our neuron definition (SPEC §7).

One gate per channel and image, initialized to 1, multiplies the pathway-layer outputs; per image
minimize −Σ_j p_j log softmax(H(x; gates))_j + λ·Σ|gates| (p = the plain model's softmax) with SGD
(lr 0.1, momentum 0.9) for 30 iterations, clamping gates to [0, 5] after each step, and keep the
lowest-loss iterate whose prediction is still H's. The whole batch is optimized at once: each
image's loss depends only on its own gates, so summing the losses gives every image its own
gradient. Pathway: gates > 0, or the top gates at a matched size. Cost: 30 forward + 30 backward
passes (+1 plain pass) of the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pathrt.baselines.common import explanation_from_scores, top_k_masks
from pathrt.runtime.explainer import ClassSpec, Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.targets import PathwaySpec, pathway_forward


@dataclass(frozen=True)
class DGRConfig:
    """The published hyperparameters."""

    iterations: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    l1: float = 0.05
    clamp_max: float = 5.0


def dgr_gates(explainer: Explainer, images: torch.Tensor, config: DGRConfig | None = None) -> torch.Tensor:
    """(N, K) optimized gates: per image, the lowest-loss iterate that keeps H's prediction. Runs with
    autograd even under no_grad or inference_mode, holding the explainer's model (it installs hooks)."""
    config = config or DGRConfig()
    out = []
    for _, chunk in explainer.chunks(images):
        # the optimization needs autograd even when called under no_grad or inference_mode
        with torch.inference_mode(False), torch.enable_grad(), explainer.using_model() as model:
            out.append(_optimize(model, explainer.spec, chunk.clone(), config))
    return torch.cat(out)


def _optimize(model: torch.nn.Module, spec: PathwaySpec, x: torch.Tensor, config: DGRConfig) -> torch.Tensor:
    """The gates of one chunk (see `dgr_gates`)."""
    with torch.no_grad():
        teacher = torch.softmax(model(x), 1)
    predicted = teacher.argmax(1)
    gates = torch.ones(len(x), spec.total_channels, device=x.device, requires_grad=True)
    optimizer = torch.optim.SGD([gates], lr=config.lr, momentum=config.momentum)
    best = gates.detach().clone()
    best_loss = torch.full((len(x),), float("inf"), device=x.device)
    for iteration in range(config.iterations + 1):  # the last pass only scores the final iterate
        logits = pathway_forward(model, spec, x, gates, check=False)
        per_image = -(teacher * F.log_softmax(logits, 1)).sum(1) + config.l1 * gates.abs().sum(1)
        with torch.no_grad():
            better = (logits.argmax(1) == predicted) & (per_image < best_loss)
            best[better] = gates[better]
            best_loss[better] = per_image[better]
        if iteration == config.iterations:
            break
        optimizer.zero_grad(set_to_none=True)
        per_image.sum().backward()
        optimizer.step()
        with torch.no_grad():
            gates.clamp_(0.0, config.clamp_max)
    return best


def dgr_pathways(explainer: Explainer, images: torch.Tensor, *, kept: torch.Tensor | None = None,
                 target: ClassSpec = None, config: DGRConfig | None = None) -> Explanation:
    """DGR pathways: gates > 0, or the kept[i] largest gates per image (matched size)."""
    gates = dgr_gates(explainer, images, config)
    masks = gates > 0 if kept is None else top_k_masks(gates, kept)
    return explanation_from_scores(explainer, images, gates / (config or DGRConfig()).clamp_max, masks, "dgr", target)
