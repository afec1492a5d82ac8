"""The timed paths of `pathrt bench`. Every explain path and baseline produces a pathway and scores it
(pathway logits), so their times compare. Adding a backend is one function here:

    @bench_path("name")
    def _name(model: BenchModel) -> Callable[[torch.Tensor], object] | str:
        return a callable timed on a batch, or a string saying why it cannot run here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pathrt.baselines import critical_pathways, dgr_pathways, random_masks
from pathrt.runtime import Explainer
from pathrt.targets import capture_features, pathway_forward

Runner = Callable[[torch.Tensor], object]


@dataclass
class BenchModel:
    """A target with its generator, as the benchmark sees it."""

    name: str
    explainer: Explainer
    note: str
    dgr_max_batch: int


PathFactory = Callable[[BenchModel, int], Runner | str]
PATHS: dict[str, PathFactory] = {}


def bench_path(name: str) -> Callable[[PathFactory], PathFactory]:
    """Registers a path factory: (model, batch size) -> runner, or the reason it is skipped."""

    def register(factory: PathFactory) -> PathFactory:
        PATHS[name] = factory
        return factory

    return register


@bench_path("plain")
def _plain(model: BenchModel, batch: int) -> Runner:
    """The unit: one plain forward of the canonized target."""
    return model.explainer.model


@bench_path("eager")
def _eager(model: BenchModel, batch: int) -> Runner:
    """The eager explain path: plain pass with capture, generator, pathway pass, packing."""
    return model.explainer.explain


@bench_path("eager+compile")
def _compiled(model: BenchModel, batch: int) -> Runner:
    """The same computation under torch.compile (inductor); compiled once per batch size, not timed."""
    explainer = model.explainer

    def explain(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        capture = capture_features(explainer.model, explainer.spec, x, check_inplace=False)
        out = explainer.generator(capture.features)
        return pathway_forward(explainer.model, explainer.spec, x, out.masks), out.scores

    return torch.compile(explain, dynamic=False)


@bench_path("random")
def _random(model: BenchModel, batch: int) -> Runner:
    """Random pathways (half the neurons), scored like every explanation (plain + pathway pass)."""
    explainer = model.explainer
    total = explainer.spec.total_channels
    kept = torch.full((batch,), total // 2)
    return lambda x: explainer.explain_with_masks(x, random_masks(kept, total), label="random")


@bench_path("critical-pathways")
def _critical(model: BenchModel, batch: int) -> Runner:
    """Critical pathways (1 forward + 1 backward for the contributions), scored (plain + pathway pass)."""
    return lambda x: critical_pathways(model.explainer, x, sparsity=0.5)


@bench_path("dgr")
def _dgr(model: BenchModel, batch: int) -> Runner | str:
    """DGR (31 forward + 30 backward passes to optimize the gates), scored (plain + pathway pass)."""
    if batch > model.dgr_max_batch:
        return f"skipped above batch {model.dgr_max_batch} (30 optimization steps; --dgr-max-batch raises it)"
    return lambda x: dgr_pathways(model.explainer, x)
