"""Production habits: every backend, the baselines and `evaluate` under `torch.inference_mode()`,
`pathway_gradient` refusing it with an InputError, and the baselines beside concurrent explains
(they install hooks on the explainer's shared model, so they hold it as the eager paths do)."""

from __future__ import annotations

import pytest
import torch

from pathrt.baselines import critical_pathways, dgr_pathways, random_pathways
from pathrt.baselines.dgr import DGRConfig
from pathrt.errors import InputError
from pathrt.evaluate import evaluate
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.opspec import parity
from pathrt.runtime import Explainer
from pathrt.targets import create_target
from tests.conftest import run_in_threads

BACKENDS = ("eager", "native", "session", "onnx")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = create_target("small_vgg", [str(i) for i in range(10)], (3, 32, 32))
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(head_bias=0.5)).eval()
    return target, generator


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _assert_same(a, b) -> None:
    report = parity.compare(b, a)
    assert report.ok, report.describe()
    assert torch.equal(a.classes, b.classes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_under_inference_mode(models, backend: str) -> None:
    target, generator = models
    x = _images(6, 1)
    masks = torch.rand(6, target.spec.total_channels, generator=torch.Generator().manual_seed(2)) > 0.5
    reference = Explainer(target, generator, backend="eager")
    want, want_given = reference.explain(x), reference.explain_with_masks(x, masks)
    with torch.inference_mode():
        explainer = Explainer(target, generator, backend=backend, max_batch_size=4)  # built there too
        got, given = explainer.explain(x), explainer.explain_with_masks(x, masks)
        chunks = list(explainer.explain_iter(x))
    assert got.backend == backend
    _assert_same(want, got)
    _assert_same(want_given, given)
    assert sum(len(c) for c in chunks) == 6


def test_baselines_and_evaluate_under_inference_mode(models) -> None:
    target, generator = models
    explainer = Explainer(target, generator)
    x = _images(5, 3)
    config = DGRConfig(iterations=3)
    want_critical = critical_pathways(explainer, x, sparsity=0.5)
    want_dgr = dgr_pathways(explainer, x, config=config)
    with torch.inference_mode():
        critical = critical_pathways(explainer, x, sparsity=0.5)
        dgr = dgr_pathways(explainer, x, config=config)
        random = random_pathways(explainer, x, explainer.explain(x))
        labels = torch.arange(5) % 10
        rows = evaluate(explainer, x, labels, _images(20, 4), torch.arange(20) % 10, j=1, include_dgr=False,
                        log=lambda _: None)
    assert torch.equal(critical.masks, want_critical.masks) and torch.equal(dgr.masks, want_dgr.masks)
    assert torch.allclose(critical.pathway_logits, want_critical.pathway_logits)
    assert len(random) == 5 and {r.method for r in rows} >= {"GEN-CNP", "random", "critical pathways"}


def test_pathway_gradient_refuses_inference_mode(models) -> None:
    target, generator = models
    explainer = Explainer(target, generator, backend="eager")
    x = _images(2, 5)
    explanation = explainer.explain(x)
    assert explainer.pathway_gradient(x, explanation).shape == x.shape  # outside inference mode it works
    with torch.inference_mode(), pytest.raises(InputError, match="outside inference mode"):
        explainer.pathway_gradient(x, explanation)


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_baselines_beside_concurrent_explains(models, backend: str) -> None:
    """Critical pathways and DGR (hooks on the shared model, autograd) in threads beside eager explains
    and given-mask pathway passes on the same explainer give what each gives alone."""
    target, generator = models
    explainer = Explainer(target, generator, backend=backend, max_batch_size=3)
    inputs = [_images(4, 10 + t) for t in range(6)]
    masks = torch.rand(4, target.spec.total_channels, generator=torch.Generator().manual_seed(7)) > 0.5
    config = DGRConfig(iterations=2)
    calls = [
        lambda x: explainer.explain(x),
        lambda x: critical_pathways(explainer, x, sparsity=0.5),
        lambda x: dgr_pathways(explainer, x, config=config),
        lambda x: explainer.explain_with_masks(x, masks),
        lambda x: critical_pathways(explainer, x, sparsity=0.3),
        lambda x: explainer.predict(x),
    ]
    serial = [call(x) for call, x in zip(calls, inputs, strict=True)]
    results = run_in_threads([lambda call=call, x=x: call(x) for call, x in zip(calls, inputs, strict=True)])
    for t, runs in enumerate(results):
        assert len(runs) == 3
        for run in runs:
            if isinstance(run, torch.Tensor):
                assert torch.equal(run, serial[t])
            else:
                assert torch.equal(run.masks, serial[t].masks), t
                assert torch.allclose(run.pathway_logits, serial[t].pathway_logits, rtol=1e-5, atol=1e-6), t
