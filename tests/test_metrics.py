"""Metrics and the random baseline on hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from pathrt import metrics
from pathrt.baselines import random_masks
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pack_masks
from pathrt.targets.spec import PathwayLayer, PathwaySpec

SPEC = PathwaySpec((PathwayLayer("a", 2, 4, 4), PathwayLayer("b", 2, 2, 2)), (3, 8, 8), "user")


def _explanation(masks: list[list[int]], classes: list[int], logits=None, pathway_logits=None) -> Explanation:
    m = torch.tensor(masks, dtype=torch.bool)
    n = len(classes)
    logits = torch.zeros(n, 3) if logits is None else torch.tensor(logits)
    pathway_logits = logits if pathway_logits is None else torch.tensor(pathway_logits)
    return Explanation(SPEC, m, pack_masks(m), m.float(), logits, pathway_logits, torch.tensor(classes), "test")


def test_confidence_metrics_hand_example() -> None:
    y = torch.tensor([0.5, 0.8])
    o = torch.tensor([0.25, 1.0])
    assert metrics.mdc(y, o) == pytest.approx(25.0)  # (0.25/0.5 + 0) / 2
    assert metrics.mic(y, o) == pytest.approx(12.5)  # (0 + 0.2/0.8) / 2
    assert metrics.ic_rate(y, o) == pytest.approx(50.0)


def test_fidelity_and_accuracy_hand_example() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    pathway = torch.tensor([[2.0, 1.0], [3.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.fidelity(logits, pathway) == pytest.approx(75.0)
    assert metrics.accuracy(pathway, torch.tensor([0, 1, 0, 0])) == pytest.approx(50.0)


def test_sparsity_hand_example() -> None:
    e = _explanation([[1, 1, 0, 0], [1, 0, 0, 0]], [0, 0])
    stats = metrics.sparsity_stats(e)
    assert stats["mean"] == pytest.approx(0.625)  # (0.5 + 0.75) / 2
    assert stats["std"] == pytest.approx(torch.tensor([0.5, 0.75]).std().item())
    assert stats["per_layer"] == {"a": pytest.approx(0.25), "b": pytest.approx(1.0)}


def test_aciou_hand_example() -> None:
    # class 0: {0,1}, {0}, {0,1,2} -> IoUs 1/2, 2/3, 1/3 -> mean 1/2; class 1: {3}, {} -> 0
    e = _explanation([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], [0, 0, 0, 1, 1])
    assert metrics.aciou(e) == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_mean_pairwise_iou_sampling_is_seeded_and_close() -> None:
    packed = pack_masks(torch.rand(300, 64) > 0.5)
    exact = metrics.mean_pairwise_iou(packed, max_pairs=10**9)
    sampled = metrics.mean_pairwise_iou(packed, max_pairs=2000, seed=1)
    assert sampled == metrics.mean_pairwise_iou(packed, max_pairs=2000, seed=1)
    assert abs(sampled - exact) < 0.01


def test_summarize_reports_every_metric() -> None:
    e = _explanation([[1, 1, 0, 0], [1, 0, 0, 0]], [0, 0], logits=[[3.0, 0, 0], [2.0, 1.0, 0]],
                     pathway_logits=[[1.0, 0, 0], [0.0, 1.0, 0]])
    out = metrics.summarize(e, labels=torch.tensor([0, 1]))
    assert out["fidelity"] == pytest.approx(50.0) and out["accuracy"] == pytest.approx(50.0)
    assert out["pathway_accuracy"] == pytest.approx(100.0) and out["mDC"] > 0
    assert set(out) >= {"sparsity", "mIC", "mDC", "ic_rate", "acIOU"}


def test_random_masks_keep_exact_counts() -> None:
    kept = torch.tensor([0, 3, 7, 10])
    masks = random_masks(kept, 10, torch.Generator().manual_seed(0))
    assert masks.sum(1).tolist() == kept.tolist()
    again = random_masks(kept, 10, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_fidelity_breakdown_exposes_a_majority_class() -> None:
    """The issue-15 case: pathways that always say class 0 score plain fidelity = the majority share,
    which balanced fidelity and the dominance warning expose; balanced pathways raise no warning."""
    from pathrt.metrics import fidelity, fidelity_breakdown

    plain = torch.tensor([0] * 75 + [1] * 5 + [2] * 10 + [3] * 10)
    logits = torch.nn.functional.one_hot(plain, 4).float()
    collapsed = torch.nn.functional.one_hot(torch.zeros(100, dtype=torch.long), 4).float()
    assert fidelity(logits, collapsed) == 75.0
    b = fidelity_breakdown(logits, collapsed)
    assert b["balanced_fidelity"] == 25.0 and b["fidelity_by_class"] == {0: 100.0, 1: 0.0, 2: 0.0, 3: 0.0}
    assert b["pathway_prediction_histogram"] == [100, 0, 0, 0] and b["prediction_histogram"] == [75, 5, 10, 10]
    assert b["warning"] is not None and "class 0 dominates" in b["warning"]
    faithful = fidelity_breakdown(logits, logits)
    assert faithful["balanced_fidelity"] == 100.0 and faithful["warning"] is None  # a majority in H itself is fine
