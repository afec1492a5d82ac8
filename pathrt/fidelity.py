"""Fidelity of pathway predictions (SPEC §5), plain and per class: a leaf of plain tensor math, so
training (which validates with it) and the metrics share one definition."""

from __future__ import annotations

from typing import Any

import torch


def fidelity(logits: torch.Tensor, pathway_logits: torch.Tensor) -> float:
    """% of samples on which the pathway model predicts what the plain model predicts."""
    return float(100 * (logits.argmax(1) == pathway_logits.argmax(1)).float().mean())


# A class dominates the pathway predictions when it takes at least this share of them while balanced
# fidelity trails plain fidelity by DOMINANCE_GAP points or more: the pathways then say "cat" for
# most images, and plain fidelity rewards the majority class.
DOMINANCE_SHARE = 0.5
DOMINANCE_GAP = 10.0


def fidelity_breakdown(logits: torch.Tensor, pathway_logits: torch.Tensor) -> dict[str, Any]:
    """Fidelity per class of H's prediction, balanced fidelity (their mean over the predicted classes
    present), the histograms of H's and of the pathway model's predictions, and a warning (None if
    none) when one class dominates the pathway predictions: there plain fidelity hides a failure."""
    classes = logits.shape[1]
    plain, pathway = logits.argmax(1), pathway_logits.argmax(1)
    per_class = {int(c): float(100 * (pathway[plain == c] == c).float().mean()) for c in plain.unique()}
    plain_hist = torch.bincount(plain, minlength=classes)
    pathway_hist = torch.bincount(pathway, minlength=classes)
    top = int(pathway_hist.argmax())
    share, plain_share = float(pathway_hist[top]) / len(plain), float(plain_hist[top]) / len(plain)
    balanced = sum(per_class.values()) / len(per_class)
    warning = None
    plain_fidelity = fidelity(logits, pathway_logits)
    if share >= DOMINANCE_SHARE and plain_fidelity - balanced >= DOMINANCE_GAP:
        warning = (f"class {top} dominates the pathway predictions: {share:.0%} of the images against "
                   f"{plain_share:.0%} of the plain model's; plain fidelity {plain_fidelity:.1f}% rewards it, balanced "
                   f"fidelity {balanced:.1f}% does not")
    return {"balanced_fidelity": balanced, "fidelity_by_class": per_class, "prediction_histogram":
            plain_hist.tolist(), "pathway_prediction_histogram": pathway_hist.tolist(), "warning": warning}
