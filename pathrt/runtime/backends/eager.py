"""The eager backend: the reference. Module hooks on the canonized model capture the pathway-layer
features and mask the pathway pass; plain PyTorch everywhere, any device. Calls share the model's
hooks, so the Explainer runs them one at a time (no "concurrent" capability)."""

from __future__ import annotations

import torch

from pathrt.runtime.backends.base import MASKS, Backend, BackendContext, ChunkResult, Unavailable
from pathrt.runtime.ops import pack_masks
from pathrt.targets import capture_features, pathway_forward


class EagerBackend(Backend):
    name = "eager"
    capabilities = frozenset({MASKS})

    def __init__(self, context: BackendContext) -> None:
        super().__init__(context.device, f"module hooks on {context.device.type}")
        self.model, self.spec, self.generator = context.model, context.spec, context.generator

    @classmethod
    def build(cls, context: BackendContext) -> Backend | Unavailable:
        """Always ready. Checks once, on one zero image outside inference mode (whose tensors keep no
        version counters), that no in-place op overwrites a captured pathway-layer output."""
        with torch.inference_mode(False), torch.no_grad(), context.hooks_lock:
            capture_features(context.model, context.spec,
                             torch.zeros(1, *context.spec.input_shape, dtype=context.dtype, device=context.device))
        return cls(context)

    def explain(self, x: torch.Tensor) -> ChunkResult:
        capture = capture_features(self.model, self.spec, x, check=False)
        out = self.generator(capture.features)
        masks = torch.cat(out.masks, 1)
        pathway_logits = pathway_forward(self.model, self.spec, x, masks, check=False)
        return ChunkResult(masks, pack_masks(masks), torch.cat(out.scores, 1), capture.logits, pathway_logits)

    def explain_with_masks(self, x: torch.Tensor, masks: torch.Tensor,
                           fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), pathway_forward(self.model, self.spec, x, masks, check=False, fill=fill)
