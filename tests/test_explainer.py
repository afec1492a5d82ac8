"""Explainer (eager reference) and Explanation: correctness against the target functions, chunking,
class selection, persistence, pathway gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import GeneratorConfig, PathwayGenerator, save_generator
from pathrt.runtime.explainer import Explainer, saliency_map
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pack_masks
from pathrt.targets import canonized_copy, count_hooks, create_target, pathway_forward, save_target
from tests.conftest import randomize_batchnorms


@pytest.fixture
def setup():
    target = create_target("small_vgg", 10, (3, 32, 32))
    randomize_batchnorms(target.model)
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(head_bias=0.0))  # ~half the neurons kept
    return target, generator


@torch.no_grad()
def test_explanation_matches_its_definition(setup) -> None:
    target, generator = setup
    state = {k: v.clone() for k, v in target.model.state_dict().items()}
    x = torch.randn(7, 3, 32, 32)
    explanation = Explainer(target, generator, backend="eager").explain(x)
    assert explanation.backend == "eager" and len(explanation) == 7
    assert torch.equal(explanation.masks, explanation.scores >= 0.5)
    assert torch.equal(explanation.packed, pack_masks(explanation.masks))
    assert 0.2 < float(explanation.sparsity.mean()) < 0.8
    torch.testing.assert_close(explanation.logits, target.model(x), rtol=1e-5, atol=1e-5)
    reference = pathway_forward(canonized_copy(target.model), target.spec, x, explanation.masks)
    torch.testing.assert_close(explanation.pathway_logits, reference)
    assert torch.equal(explanation.classes, explanation.logits.argmax(1))
    y = torch.softmax(explanation.logits, 1)[torch.arange(7), explanation.classes]
    torch.testing.assert_close(explanation.Y, y)
    assert [m.shape[1] for m in explanation.layer_masks] == list(target.spec.channels)
    # the user's model is untouched (not canonized, same weights, no hooks)
    assert target.model.state_dict().keys() == state.keys()
    assert all(torch.equal(target.model.state_dict()[k], v) for k, v in state.items())
    assert count_hooks(target.model) == 0


@pytest.mark.parametrize("backend", ["eager", "native"])
@torch.no_grad()
def test_chunking_and_class_selection(setup, backend: str) -> None:
    target, generator = setup
    x = torch.randn(10, 3, 32, 32)
    whole = Explainer(target, generator, backend=backend, max_batch_size=64).explain(x)
    chunked = Explainer(target, generator, backend=backend, max_batch_size=3).explain(x)
    for name in ("masks", "packed", "classes"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name))
    torch.testing.assert_close(whole.pathway_logits, chunked.pathway_logits)
    given = torch.rand(10, target.spec.total_channels) > 0.5
    small = Explainer(target, generator, backend=backend, max_batch_size=3).explain_with_masks(x, given,
                                                                                               list(range(10)))
    large = Explainer(target, generator, backend=backend, max_batch_size=64).explain_with_masks(x, given,
                                                                                                list(range(10)))
    assert torch.equal(small.masks, given) and torch.equal(small.classes, large.classes)
    torch.testing.assert_close(small.pathway_logits, large.pathway_logits)
    explainer = Explainer(target, generator, backend=backend, max_batch_size=4)
    assert explainer.explain(x, target=3).classes.tolist() == [3] * 10
    wanted = list(range(10))
    picked = explainer.explain(x, target=wanted)
    assert picked.classes.tolist() == wanted
    torch.testing.assert_close(picked.O, torch.softmax(picked.pathway_logits, 1)[torch.arange(10), picked.classes])
    with pytest.raises(InputError, match="lie in"):
        explainer.explain(x, target=10)
    with pytest.raises(InputError, match="names 3 classes"):
        explainer.explain(x, target=[1, 2, 3])
    with pytest.raises(InputError, match="backend"):
        Explainer(target, generator, backend="warp")


def test_explanation_save_load_subset_concat(setup, tmp_path: Path) -> None:
    target, generator = setup
    explanation = Explainer(target, generator).explain(torch.randn(5, 3, 32, 32))
    explanation.save(tmp_path / "e")
    loaded = Explanation.load(tmp_path / "e")
    for name in ("masks", "packed", "scores", "logits", "pathway_logits", "classes"):
        assert torch.equal(getattr(loaded, name), getattr(explanation, name))
    assert loaded.spec == explanation.spec and loaded.backend == explanation.backend
    joined = Explanation.concat([explanation.subset(slice(0, 2)), explanation.subset([2, 3, 4])])
    assert torch.equal(joined.masks, explanation.masks)


def test_pathway_gradient(setup) -> None:
    target, generator = setup
    explainer = Explainer(target, generator, max_batch_size=2)
    x = torch.randn(3, 3, 32, 32)
    explanation = explainer.explain(x)
    gradient = explainer.pathway_gradient(x, explanation)
    xi = x.clone().requires_grad_(True)
    z = pathway_forward(explainer.model, target.spec, xi, explanation.masks)
    z.gather(1, explanation.classes[:, None]).sum().backward()
    torch.testing.assert_close(gradient, xi.grad)
    assert saliency_map(gradient).shape == (3, 32, 32) and gradient.abs().sum() > 0


def test_from_files_refuses_a_generator_of_another_target(setup, tmp_path: Path) -> None:
    target, generator = setup
    save_target(target, tmp_path / "t")
    save_generator(generator, tmp_path / "g", target.fingerprint)
    assert Explainer.from_files(tmp_path / "t", tmp_path / "g").explain(torch.randn(2, 3, 32, 32)).masks.shape[0] == 2
    other = create_target("small_vgg", 10, (3, 32, 32))  # same architecture, other weights
    save_target(other, tmp_path / "t2")
    with pytest.raises(IncompatibleArtifactError, match="trained for the target"):
        Explainer.from_files(tmp_path / "t2", tmp_path / "g")


@pytest.mark.parametrize("backend", ["eager", "native", "session", "onnx"])
@torch.no_grad()
def test_every_backend_gives_explanations_that_pass_their_checks(setup, backend: str) -> None:
    """Explainer wraps a backend's result without Explanation.check (`of_backend`: the check costs
    ~40 µs of a ~0.9 ms batch-1 call); each backend's results must pass it, at one image (one chunk the
    backend checks itself) and over several chunks, and the check catches a result that would not."""
    import pathrt.export  # noqa: F401  (registers the onnx backend)

    target, generator = setup
    explainer = Explainer(target, generator, backend=backend, max_batch_size=2)
    for n in (1, 2, 5):
        explanation = explainer.explain(torch.randn(n, 3, 32, 32))
        assert explanation.backend == backend and len(explanation) == n
        explanation.check()
    fields = [getattr(explanation, name) for name in ("masks", "packed", "scores", "logits", "pathway_logits")]
    broken = Explanation.of_backend(target.spec, fields[0][:, 1:], *fields[1:], explanation.classes, backend)
    with pytest.raises(InputError, match="masks has shape"):
        broken.check()
