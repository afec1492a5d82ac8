"""Class-relevant pathways: construction on a hand example, persistence, transfer conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathrt.errors import IncompatibleArtifactError, InputError
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.runtime.explainer import Explainer
from pathrt.transfer import ClassPathways, build_class_pathways, evaluate_transfer
from tests.test_metrics import _explanation


def test_build_class_pathways_hand_example() -> None:
    # predictions: 0, 0, 0, 1, 1 (logits); labels: 0, 0, 1, 1, 1 -> sample 2 is misclassified
    logits = [[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]]
    e = _explanation([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 0]], [0, 0, 0, 1, 1], logits)
    labels = torch.tensor([0, 0, 1, 1, 1])
    three = build_class_pathways(e, labels, 3, "fp")  # class 2 has no correct source: no pathway
    assert three.sources.tolist() == [2, 2, 0] and not three.masks[2].any()
    with pytest.raises(InputError, match="no class has"):
        build_class_pathways(e, torch.tensor([1, 1, 1, 0, 0]), 2, "fp")
    pathways = build_class_pathways(e, labels, 2, "fp", j=50, threshold=0.5)
    torch.testing.assert_close(pathways.frequency, torch.tensor([[1.0, 0.5, 0, 0.5], [0, 0.5, 1.0, 0]]))
    assert pathways.masks.tolist() == [[True, True, False, True], [False, True, True, False]]
    assert pathways.sources.tolist() == [2, 2]
    first_only = build_class_pathways(e, labels, 2, "fp", j=1)
    assert first_only.masks[0].tolist() == [True, True, False, False]


def test_class_pathways_save_load(tmp_path: Path) -> None:
    logits = [[1.0, 0, 0], [0, 1.0, 0]]
    e = _explanation([[1, 1, 0, 0], [0, 0, 1, 1]], [0, 1], logits)
    pathways = build_class_pathways(e, torch.tensor([0, 1]), 2, "a" * 64)
    pathways.save(tmp_path / "cp")
    loaded = ClassPathways.load(tmp_path / "cp", target_fingerprint="a" * 64)
    assert torch.equal(loaded.masks, pathways.masks) and loaded.spec == pathways.spec
    with pytest.raises(IncompatibleArtifactError, match="another target"):
        ClassPathways.load(tmp_path / "cp", target_fingerprint="b" * 64)


@torch.no_grad()
def test_evaluate_transfer_conditions() -> None:
    from pathrt.targets import create_target

    target = create_target("small_vgg", 3, (3, 32, 32), cfg=(8, "M", 16, "M"))
    explainer = Explainer(target, PathwayGenerator(target.spec, GeneratorConfig.small(d=32, heads=4, d_r=8)))
    x = torch.randn(6, 3, 32, 32)
    k = target.spec.total_channels
    full = torch.ones(3, k, dtype=torch.bool)
    empty = torch.zeros(3, k, dtype=torch.bool)
    pathways = ClassPathways(target.spec, full, full.float(), torch.ones(3, dtype=torch.long), 0.5, "fp")
    results = evaluate_transfer(explainer, x, pathways)
    assert results["own class"]["fidelity"] == 100.0 and results["own class"]["mDC"] == pytest.approx(0, abs=1e-4)
    assert results["random"]["sparsity"] == 0.0  # same size as M_c (all neurons)
    pathways.masks = empty
    assert evaluate_transfer(explainer, x, pathways)["own class"]["sparsity"] == 1.0
