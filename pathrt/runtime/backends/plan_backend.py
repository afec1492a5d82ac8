"""What the native and triton backends share: the hook-free plan pass (`PlanRunner`), the
BatchNorm-folded generator run through fused generator ops, and the fused DAQ threshold.
Each subclass names its kernels; the runner comes from the context (one lowering per Explainer)."""

from __future__ import annotations

from functools import cached_property
from types import ModuleType

import torch
from torch import nn

from pathrt.opspec import MASK_THRESHOLD
from pathrt.runtime.backends.base import CONCURRENT, MASKS, Backend, BackendContext, ChunkResult, Unavailable
from pathrt.runtime.fast_path import KernelSet, PlanRunner
from pathrt.runtime.fused_generator import FusedGenerator, folded_generator
from pathrt.targets.plan import PlanError


class PlanBackend(Backend):
    """A backend that runs the lowered plan with a kernel set (native: C++/CUDA, triton: Triton)."""

    capabilities = frozenset({MASKS, CONCURRENT})

    def __init__(self, context: BackendContext, runner: PlanRunner, generator_ops: ModuleType, reason: str) -> None:
        super().__init__(context.device, reason)
        self.spec = context.spec
        self.runner = runner
        self._source_generator = context.generator
        self._generator_ops = generator_ops

    @cached_property
    def generator(self) -> nn.Module:
        """The BatchNorm-folded generator (folded on first use: a session's mask runner never needs it)."""
        return folded_generator(self._source_generator)

    @cached_property
    def fused(self) -> FusedGenerator:
        """The folded generator run through the backend's fused generator ops."""
        return FusedGenerator(self.generator, self._generator_ops)

    @classmethod
    def kernels(cls, device: torch.device) -> tuple[KernelSet, ModuleType]:
        """The fused-op kernel set and the namespace of the fused generator ops."""
        raise NotImplementedError

    @classmethod
    def build(cls, context: BackendContext) -> Backend | Unavailable:
        threshold = context.generator.config.threshold
        if threshold != MASK_THRESHOLD:
            return Unavailable(cls.name, (f"the generator's threshold is {threshold}; the fused kernels apply "
                                          f"{MASK_THRESHOLD}",))
        kernels, generator_ops = cls.kernels(context.device)
        try:
            # channels-last pays on CPU (oneDNN, pooling); the Triton kernels index NCHW
            runner = context.plan_runner(kernels, cls.channels_last(context.device))
        except PlanError as exc:
            return Unavailable(cls.name, (str(exc),))
        return cls(context, runner, generator_ops, f"{kernels.name} kernels on {context.device.type}, model lowered "
                                                   f"to {len(runner.plan.steps)} plan steps")

    @classmethod
    def channels_last(cls, device: torch.device) -> bool:
        """Whether the runner keeps activations channels-last (the kernels must index that layout)."""
        return False

    def explain(self, x: torch.Tensor) -> ChunkResult:
        """SPEC §8 without hooks: plan pass with capture, generator + fused DAQ, sparse pathway pass."""
        logits, features, saved = self.runner.plain(x)
        _, scores, masks, packed, _ = self.fused(features)
        pathway_logits = self.runner.pathway(saved, features, self.spec.split(masks))
        return ChunkResult(masks, packed, scores, logits, pathway_logits)

    def explain_with_masks(self, x: torch.Tensor, masks: torch.Tensor,
                           fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, saved = self.runner.plain(x)
        fills = None if fill is None else [f[0] for f in self.spec.split(fill[None].to(x.dtype))]  # checked upstream
        return logits, self.runner.pathway(saved, features, self.spec.split(masks), fills)
