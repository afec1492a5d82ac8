"""The session backend: the whole explain path in C++ (`pathrt._C.ExplainSession`) from a bundle
(made in memory from the context's lowered plan, or `bundle_file` from `pathrt bundle`), on the CPU.
It computes its own masks; the pathway pass for given masks runs on the native plan runner, which
shares the context's lowering. `verify_bundle` holds a bundle file to the eager reference."""

from __future__ import annotations

import os
from typing import Any

import torch

from pathrt.artifacts import tensor_fingerprint
from pathrt.errors import BundleError, IncompatibleArtifactError
from pathrt.generator import PathwayGenerator
from pathrt.kernels import native as extension
from pathrt.opspec import parity
from pathrt.runtime.backends.base import (
    CHECKS_IMAGES,
    CONCURRENT,
    MASKS,
    Backend,
    BackendContext,
    ChunkResult,
    Unavailable,
)
from pathrt.runtime.backends.eager import EagerBackend
from pathrt.runtime.backends.native import NativeBackend
from pathrt.runtime.bundle import bundle_bytes, read_bundle_meta
from pathrt.targets import Target
from pathrt.targets.plan import PlanError


class SessionBackend(Backend):
    name = "session"
    capabilities = frozenset({MASKS, CONCURRENT, CHECKS_IMAGES})  # the C++ check_images: same checks and messages

    def __init__(self, device: torch.device, session: Any, masks_runner: NativeBackend | None, reason: str) -> None:
        super().__init__(device, reason)
        self.session = session  # pathrt._C.ExplainSession
        self.masks_runner = masks_runner
        if masks_runner is None:
            self.capabilities = self.capabilities - {MASKS}

    @classmethod
    def unavailable_on(cls, device: torch.device) -> str | None:
        if extension.EXTENSION is None:
            return f"the extension pathrt._C is not loaded ({extension.EXTENSION_ERROR})"
        if not hasattr(extension.EXTENSION, "ExplainSession"):
            return "pathrt._C was built without ExplainSession (rebuild with `make build`)"
        if device.type != "cpu":
            return f"the session runs on the CPU (the model is on {device.type}); use backend='native' there"
        return None

    @classmethod
    def build(cls, context: BackendContext) -> Backend | Unavailable:
        native = NativeBackend.prepare(context)
        masks_runner = native if isinstance(native, NativeBackend) else None
        options = context.options
        if options.bundle_file is None:
            try:
                runner = masks_runner.runner if masks_runner is not None else None
                data = bundle_bytes(context.target, context.generator, runner)
            except (BundleError, PlanError) as exc:  # a plan refusal is said as the plan says it (once, by auto)
                return Unavailable(cls.name, (str(exc.__cause__ if isinstance(exc.__cause__, PlanError) else exc),))
            session = extension.EXTENSION.ExplainSession.from_bytes(data, "<in-memory bundle>", options.num_threads)
            source = "bundled in memory"
        else:
            session = open_bundle(options.bundle_file, context.target, context.generator, options.num_threads)
            source = f"from {options.bundle_file}"
        return cls(context.device, session, masks_runner, f"C++ ExplainSession on cpu, bundle {source}")

    def explain(self, x: torch.Tensor) -> ChunkResult:
        out = self.session.explain(x)
        return ChunkResult(out["masks"], out["packed"], out["scores"], out["logits"], out["pathway_logits"],
                           out["classes"])

    def explain_with_masks(self, x: torch.Tensor, masks: torch.Tensor,
                           fill: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.masks_runner is None:
            return super().explain_with_masks(x, masks, fill)
        return self.masks_runner.explain_with_masks(x, masks, fill)


def open_bundle(path: str | os.PathLike[str], target: Target, generator: PathwayGenerator,
                num_threads: int = 0) -> Any:
    """A C++ ExplainSession of the bundle file `path`, which must belong to `target` and `generator`."""
    unavailable = SessionBackend.unavailable_on(torch.device("cpu"))
    if unavailable:
        raise BundleError(f"cannot open {path}: {unavailable}")
    meta = read_bundle_meta(path)
    if meta.get("target_fingerprint") != target.fingerprint:
        raise IncompatibleArtifactError(f"{path} was bundled for another target; bundle this one")
    if meta.get("generator_fingerprint") != tensor_fingerprint(generator.state_dict()):
        raise IncompatibleArtifactError(f"{path} was bundled with another generator; bundle again")
    return extension.EXTENSION.ExplainSession(str(path), num_threads)  # type: ignore[union-attr]


def verify_bundle(path: str | os.PathLike[str], target: Target, generator: PathwayGenerator,
                  images: int = 8) -> parity.ParityReport:
    """Runs the bundle in a C++ session and the eager reference on seeded random images; raises
    BundleError unless they agree as SPEC §8 asks. Returns the parity report."""
    session = open_bundle(path, target, generator)
    x = torch.randn(images, *target.spec.input_shape, generator=torch.Generator().manual_seed(0))
    eager = EagerBackend(BackendContext(target, generator))
    with torch.no_grad():
        want = eager.explain(x)
    report = parity.compare(session.explain(x), want)
    if not report.ok:
        raise BundleError(f"the bundle {path} does not reproduce the eager explainer ({report.describe()}); "
                          "please report this")
    return report
