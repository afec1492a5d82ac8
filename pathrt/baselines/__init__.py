"""Baseline pathways (SPEC §7) with the same neuron definition and pathway layers as GEN-CNP."""

from pathrt.baselines.random import random_masks, random_pathways

__all__ = ["random_masks", "random_pathways"]
