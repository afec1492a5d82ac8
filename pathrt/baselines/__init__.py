"""Baseline pathways (SPEC §7) with the same neuron definition and pathway layers as GEN-CNP; each
returns the same `Explanation` type as the generator."""

from pathrt.baselines.common import kept_for_sparsity, top_k_masks
from pathrt.baselines.critical import channel_contributions, critical_pathways
from pathrt.baselines.dgr import DGRConfig, dgr_gates, dgr_pathways
from pathrt.baselines.random import random_masks, random_pathways

__all__ = [
    "DGRConfig",
    "channel_contributions",
    "critical_pathways",
    "dgr_gates",
    "dgr_pathways",
    "kept_for_sparsity",
    "random_masks",
    "random_pathways",
    "top_k_masks",
]
