"""The deployed explain path: op registrations (torch.library) and, later, Explainer and backends."""

from pathrt.runtime.ops import pack_masks, pairwise_iou, unpack_masks

__all__ = ["pack_masks", "pairwise_iou", "unpack_masks"]
