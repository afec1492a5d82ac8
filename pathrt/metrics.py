"""Faithfulness and structure metrics of pathways (SPEC §5).

With Y = p_c(x) under the plain model and O = p_c under the pathway model (c = the explained class):
  mDC = 100·mean max(0, Y − O)/Y (lower is better), mIC = 100·mean max(0, O − Y)/Y (higher is
  better), IC rate = 100·mean 1[O > Y], fidelity = % with argmax H(x; P) = argmax H(x),
  acIOU = mean over classes of the mean pairwise IoU of that class's pathways (in %), computed on
  bit-packed masks with `pathrt::pairwise_iou`; above `max_pairs` pairs a class samples pairs
  with a fixed seed.
"""

from __future__ import annotations

from typing import Any

import torch

from pathrt.errors import InputError
from pathrt.fidelity import fidelity, fidelity_breakdown
from pathrt.runtime.explanation import Explanation
from pathrt.runtime.ops import pairwise_iou


def _check_pair(y: torch.Tensor, o: torch.Tensor) -> None:
    if y.shape != o.shape or y.dim() != 1 or len(y) == 0:
        raise InputError(f"Y and O must be non-empty 1-D tensors of one shape, got {tuple(y.shape)}, {tuple(o.shape)}")


def mdc(y: torch.Tensor, o: torch.Tensor) -> float:
    """Mean drop in confidence, in %."""
    _check_pair(y, o)
    return float(100 * ((y - o).clamp_min(0) / y).mean())


def mic(y: torch.Tensor, o: torch.Tensor) -> float:
    """Mean increase in confidence, in %."""
    _check_pair(y, o)
    return float(100 * ((o - y).clamp_min(0) / y).mean())


def ic_rate(y: torch.Tensor, o: torch.Tensor) -> float:
    """% of samples whose confidence rises under the pathway model."""
    _check_pair(y, o)
    return float(100 * (o > y).float().mean())


def confidence(explanation: Explanation) -> dict[str, float]:
    """Fidelity, mIC, mDC and IC rate of one pathway pass (the transfer table's and the faithfulness
    protocols' scores)."""
    y, o = explanation.Y, explanation.O
    return {"fidelity": fidelity(explanation.logits, explanation.pathway_logits), "mIC": mic(y, o),
            "mDC": mdc(y, o), "ic_rate": ic_rate(y, o)}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy against labels, in %."""
    return float(100 * (logits.argmax(1) == labels).float().mean())


def sparsity_stats(explanation: Explanation) -> dict[str, Any]:
    """Sparsity (fraction removed) mean and std over samples, overall and per layer."""
    per_sample = explanation.sparsity
    return {
        "mean": float(per_sample.mean()),
        "std": float(per_sample.std()) if len(per_sample) > 1 else 0.0,
        "per_layer": {layer.name: float(1 - m.float().mean())
                      for layer, m in zip(explanation.spec.layers, explanation.layer_masks, strict=True)},
    }


def mean_pairwise_iou(packed: torch.Tensor, max_pairs: int = 2000, seed: int = 0) -> float:
    """Mean IoU over distinct pairs of packed masks (all pairs, or `max_pairs` sampled ones)."""
    n = len(packed)
    if n < 2:
        raise InputError("a mean pairwise IoU needs at least 2 masks")
    if n * (n - 1) // 2 <= max_pairs:
        iou = pairwise_iou(packed, packed)
        return float(iou[torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)].mean())
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (max_pairs,), generator=g)
    j = (i + torch.randint(1, n, (max_pairs,), generator=g)) % n  # j != i
    return float(paired_iou(packed[i], packed[j]).mean())


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of packed masks `a` with row i of `b` (float32 (N,); two empty rows: 1): the
    diagonal of `pathrt::pairwise_iou` over blocks of rows."""
    if a.shape != b.shape:
        raise InputError(f"paired IoU needs packed masks of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([pairwise_iou(a[s:s + 256], b[s:s + 256]).diagonal() for s in range(0, len(a), 256)])


def aciou(explanation: Explanation, max_pairs: int = 2000, seed: int = 0) -> float:
    """Average class IoU in % (classes with fewer than two pathways are skipped)."""
    values = []
    for c in torch.unique(explanation.classes):
        members = explanation.packed[explanation.classes == c]
        if len(members) >= 2:
            values.append(mean_pairwise_iou(members, max_pairs, seed + int(c)))
    if not values:
        raise InputError("acIOU needs a class with at least two explained samples")
    return 100 * sum(values) / len(values)


def summarize(explanation: Explanation, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Every SPEC §5 metric of one explanation (plus accuracies when labels are given), with the
    fidelity breakdown (`fidelity_breakdown`: per class, balanced, histograms, dominance warning)."""
    y, o = explanation.Y, explanation.O
    out: dict[str, Any] = {
        "count": len(explanation),
        "backend": explanation.backend,
        "sparsity": sparsity_stats(explanation),
        "fidelity": fidelity(explanation.logits, explanation.pathway_logits),
        **fidelity_breakdown(explanation.logits, explanation.pathway_logits),
        "mIC": mic(y, o),
        "mDC": mdc(y, o),
        "ic_rate": ic_rate(y, o),
        "acIOU": aciou(explanation),
    }
    if labels is not None:
        out["accuracy"] = accuracy(explanation.logits, labels)
        out["pathway_accuracy"] = accuracy(explanation.pathway_logits, labels)
    return out
