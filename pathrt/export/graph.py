"""The exported computations as torch modules made of standard ops only.

`ExplainerGraph` is SPEC §8 end to end: the plain pass over the target's lowered plan (capturing
the pathway-layer features), the generator with its BatchNorms folded, sigmoid and the 0.5
threshold (the plain-PyTorch decomposition of `pathrt::daq_threshold_pack`), and the pathway pass
with the masks applied by `where` (the decomposition of `pathrt::masked_bias_relu`); dense convs
only, since per-sample channel skipping is data-dependent control flow that ONNX cannot express.
`GeneratorGraph` is the generator alone. Both trace to ONNX with no custom op.
"""

from __future__ import annotations

import torch
from torch import nn

from pathrt.generator import PathwayGenerator
from pathrt.opspec import MASK_THRESHOLD
from pathrt.runtime.fast_path import REFERENCE, PlanRunner
from pathrt.runtime.fused_generator import folded_generator
from pathrt.targets import Target, canonized_copy

EXPLAINER_OUTPUTS = ("logits", "scores", "masks", "kept", "pathway_logits", "Y", "O")
GENERATOR_OUTPUTS = ("scores", "masks", "kept")


class GeneratorGraph(nn.Module):
    """Pathway-layer features (one input per layer) → scores, masks (scores >= 0.5), kept counts."""

    def __init__(self, generator: PathwayGenerator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.generator = folded_generator(generator).to(dtype)

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = torch.sigmoid(torch.cat(self.generator.head_logits(list(features)), 1))
        masks = scores >= MASK_THRESHOLD
        return scores, masks, masks.sum(1)


class ExplainerGraph(nn.Module):
    """Images → plain logits, scores, masks, kept counts, pathway logits, Y and O of the predicted class."""

    def __init__(self, target: Target, generator: PathwayGenerator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.spec = target.spec
        self.runner = PlanRunner(canonized_copy(target.model), target.spec, REFERENCE, strategy="dense",
                                 channels_last=False)
        self.generator = GeneratorGraph(generator)
        with torch.no_grad():  # computes the folded classifier weights once, so tracing sees constants
            self(torch.zeros(1, *target.spec.input_shape))
        self.runner.to_dtype(dtype)
        self.generator.to(dtype)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features, saved = self.runner.plain(images)
        scores, masks, kept = self.generator(*features)
        pathway_logits = self.runner.pathway(saved, features, self.spec.split(masks))
        classes = logits.argmax(1, keepdim=True)
        y = torch.softmax(logits, 1).gather(1, classes).squeeze(1)
        o = torch.softmax(pathway_logits, 1).gather(1, classes).squeeze(1)
        return logits, scores, masks, kept, pathway_logits, y, o
