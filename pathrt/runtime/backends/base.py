"""The backend protocol: what one explain backend is, and the context it is prepared from.

A backend is one class in its own module of this package. `prepare(context)` returns a ready
backend (`build`, once `unavailable_on` the device passed), or an `Unavailable` saying why it
cannot run this model here (the xformers habit: every
backend passed over has a reason). A ready backend explains one checked chunk of images
(`explain`), and, when it has the "masks" capability, runs the pathway pass for masks chosen
elsewhere (`explain_with_masks`). Backends without the "concurrent" capability share the model's
forward hooks, and the Explainer serializes their calls with `context.hooks_lock`.

`BackendContext` holds what every backend is prepared from, built once per Explainer: the target,
the generator, one canonized copy of the model, the device, the options, and the plan lowering
(`plan`, `plan_runner`), made on first use and shared by every backend `auto` tries.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import torch
from torch import nn

from pathrt.generator import PathwayGenerator
from pathrt.runtime.fast_path import KernelSet, PlanRunner
from pathrt.targets import Target, canonized_copy
from pathrt.targets.plan import Plan, PlanError, build_plan
from pathrt.targets.spec import PathwaySpec

MASKS = "masks"  # capability: explain_with_masks (the pathway pass for given masks)
CONCURRENT = "concurrent"  # capability: calls keep all state local (no shared hooks): no lock needed
# capability: explain() refuses a bad batch itself, with check_images' checks, order and messages
CHECKS_IMAGES = "checks_images"


@dataclass(frozen=True)
class Unavailable:
    """Why a backend cannot run here: its name and one or more reasons."""

    backend: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class ChunkResult:
    """A backend's output for one chunk: bool masks and scores (N, K), packed masks (N, ceil(K/8)),
    plain and pathway logits (N, classes), and the predicted classes when the backend has them."""

    masks: torch.Tensor
    packed: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    pathway_logits: torch.Tensor
    predicted: torch.Tensor | None = None


@dataclass
class BackendOptions:
    """Per-backend options an Explainer passes through: files to run instead of building in memory."""

    onnx_file: str | os.PathLike[str] | None = None
    bundle_file: str | os.PathLike[str] | None = None
    num_threads: int = 0  # the session's threads (0: torch's)


@dataclass
class BackendContext:
    """What backends are prepared from (see the module docstring)."""

    target: Target
    generator: PathwayGenerator
    options: BackendOptions = field(default_factory=BackendOptions)
    hooks_lock: threading.Lock = field(default_factory=threading.Lock)
    _runners: dict[tuple[str, bool], PlanRunner] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def model(self) -> nn.Module:
        """The canonized copy of the target's model every backend runs (the user's model stays untouched)."""
        return canonized_copy(self.target.model)

    @property
    def spec(self) -> PathwaySpec:
        return self.target.spec

    @cached_property
    def _param(self) -> torch.Tensor | None:
        return next(iter(self.model.parameters()), None)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (CPU for a model without any)."""
        return self._param.device if self._param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype, which images are cast to (float32 for a model without parameters)."""
        return self._param.dtype if self._param is not None else torch.float32

    @cached_property
    def _plan(self) -> Plan | PlanError:
        try:
            return build_plan(self.model, self.spec)
        except PlanError as exc:
            return exc

    @property
    def plan(self) -> Plan:
        """The model lowered to plan steps (once per context); raises PlanError for models it cannot lower."""
        if isinstance(self._plan, PlanError):
            raise self._plan
        return self._plan

    def plan_runner(self, kernels: KernelSet, channels_last: bool) -> PlanRunner:
        """A plan runner over `plan` with these kernels and layout (built once per combination; the
        conv-strategy policy is the plan contract's for the model's device)."""
        key = (kernels.name, channels_last)
        if key not in self._runners:
            self._runners[key] = PlanRunner(self.model, self.spec, kernels, channels_last=channels_last,
                                            plan=self.plan)
        return self._runners[key]


class Backend(ABC):
    """One explain backend (see the module docstring). Subclasses set `name` and implement `prepare`
    and `explain`; those with the "masks" capability implement `explain_with_masks`."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, device: torch.device, reason: str) -> None:
        self.device = device
        self.reason = reason  # what runs: kernels, device, source of the model

    @classmethod
    def unavailable_on(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on `device` whatever the model (None: it can, model permitting)."""
        return None

    @classmethod
    def prepare(cls, context: BackendContext) -> Backend | Unavailable:
        """This backend ready to run the context's model, or why it cannot."""
        unavailable = cls.unavailable_on(context.device)
        if unavailable:
            return Unavailable(cls.name, (unavailable,))
        return cls.build(context)

    @classmethod
    @abstractmethod
    def build(cls, context: BackendContext) -> Backend | Unavailable:
        """`prepare` once `unavailable_on` passed: the backend for this model, or why not (a model it cannot
        run); raises only for a bad user argument (e.g. a file of another model)."""

    @abstractmethod
    def explain(self, x: torch.Tensor) -> ChunkResult:
        """The explain path (SPEC §8) for one chunk of checked images on the model's device and dtype."""

    def explain_with_masks(self, x: torch.Tensor, masks: torch.Tensor,
                           fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(plain logits, pathway logits) for bool masks (N, K) chosen elsewhere ("masks" capability);
        removed channels hold 0, or fill[k] (K,) when given (mean ablation)."""
        raise NotImplementedError(f"backend {self.name!r} has no pathway pass for given masks")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason})"
