"""The SPEC §8 parity rule, written once: what "the same explanation as the eager reference" means.

Every backend must give the eager reference's masks except for neurons whose score lies within
`MASK_BAND` of the threshold (float rounding may put them on either side), and logits within
`LOGITS_RTOL` relative error (max |got − want| / max |want|, float32). Bundle verification, ONNX
verification and the tests all call `compare`; a float16 ONNX file passes wider tolerances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pathrt.opspec.masks import MASK_THRESHOLD

MASK_BAND = 1e-4
LOGITS_RTOL = 1e-4


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| in float64 (0 for empty tensors)."""
    if want.numel() == 0:
        return 0.0
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _field(result: Mapping[str, torch.Tensor] | Any, name: str) -> torch.Tensor | None:
    if isinstance(result, Mapping):
        return result.get(name)
    return getattr(result, name, None)


@dataclass
class ParityReport:
    """How far one result is from the reference: mask mismatches (inside / outside the band) and the
    relative error of every compared tensor; `ok` is the SPEC §8 verdict."""

    images: int
    band: float
    rtol: float
    masks_within_band: int = 0
    masks_outside_band: int = 0
    rel_errors: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.masks_outside_band == 0 and all(e <= self.rtol for e in self.rel_errors.values())

    def problems(self) -> list[str]:
        """What breaks the rule, one sentence each (empty when `ok`)."""
        out = [f"{name} differ by {err:.2e} relative (limit {self.rtol:g})"
               for name, err in self.rel_errors.items() if err > self.rtol]
        if self.masks_outside_band:
            out.insert(0, f"{self.masks_outside_band} mask bits differ for neurons whose score is not within "
                          f"{self.band:g} of the threshold")
        return out

    def describe(self) -> str:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in self.rel_errors.items())
        verdict = "agrees" if self.ok else "DIFFERS: " + "; ".join(self.problems())
        return (f"{self.images} images, {self.masks_within_band} mask bits differ within {self.band:g} of the "
                f"threshold; relative errors {errors}; {verdict}")


def compare(got: Mapping[str, torch.Tensor] | Any, want: Mapping[str, torch.Tensor] | Any,
            names: Sequence[str] = ("logits", "pathway_logits"), *, band: float = MASK_BAND,
            rtol: float = LOGITS_RTOL) -> ParityReport:
    """Compares `got` with the reference `want` (an Explanation or a dict of tensors) under SPEC §8.

    Masks are compared where both have them (`want` must then have `scores`); every name in `names`
    that both have is compared by relative error. A name that `want` has and `got` lacks is an error."""
    want_masks = _field(want, "masks")
    report = ParityReport(len(want_masks) if want_masks is not None else 0, band, rtol)
    got_masks = _field(got, "masks")
    if got_masks is not None and want_masks is not None:
        scores = _field(want, "scores")
        if scores is None:
            raise ValueError("parity.compare: the reference has masks but no scores to tell the band")
        differ = got_masks.cpu().bool() != want_masks.cpu().bool()
        near = (scores.cpu().float() - MASK_THRESHOLD).abs() <= band
        report.masks_within_band = int((differ & near).sum())
        report.masks_outside_band = int((differ & ~near).sum())
    for name in names:
        reference, value = _field(want, name), _field(got, name)
        if reference is None:
            continue
        if value is None:
            raise ValueError(f"parity.compare: the result has no {name!r} to compare")
        report.rel_errors[name] = relative_error(value, reference)
    return report
