"""The deployed explain path: op registrations (torch.library), Explainer and Explanation."""

from pathrt.runtime.explainer import Explainer, saliency_map
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pack_masks, pairwise_iou, unpack_masks

__all__ = ["Explainer", "Explanation", "pack_masks", "pairwise_iou", "saliency_map", "unpack_masks"]
