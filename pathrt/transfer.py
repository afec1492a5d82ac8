"""Class-relevant pathways and their transfer (SPEC §6).

For class c: take up to j correctly classified source samples, the neuron frequency
f_c = mean_i P(x_i), and the class pathway M_c = 1[f_c >= τ_c]. Transfer: explain other samples
of class c (H's prediction) with M_c instead of their own pathway; controls: another class's
pathway (M_{c+1 mod C}) and a random pathway with as many neurons as M_c.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pathrt.artifacts import load_artifact, save_artifact
from pathrt.baselines.random import random_masks
from pathrt.errors import ArtifactError, IncompatibleArtifactError, InputError
from pathrt.metrics import confidence
from pathrt.runtime.explainer import Explainer
from pathrt.runtime.explanation import Explanation
from pathrt.targets.spec import PathwaySpec

CLASS_PATHWAYS_FORMAT = "pathrt.class_pathways"


@dataclass
class ClassPathways:
    """M_c for every class: masks (C, K) bool, frequencies f_c (C, K), source counts (C,)."""

    spec: PathwaySpec
    masks: torch.Tensor
    frequency: torch.Tensor
    sources: torch.Tensor
    threshold: float
    target_fingerprint: str

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        return save_artifact(path, CLASS_PATHWAYS_FORMAT,
                             {"masks": self.masks, "frequency": self.frequency, "sources": self.sources},
                             {"threshold": self.threshold, "target_fingerprint": self.target_fingerprint,
                              "pathway_spec": self.spec.to_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike[str], target_fingerprint: str | None = None) -> ClassPathways:
        meta, tensors = load_artifact(path, CLASS_PATHWAYS_FORMAT)
        if target_fingerprint is not None and meta.get("target_fingerprint") != target_fingerprint:
            raise IncompatibleArtifactError(f"{path} holds class pathways of another target")
        try:
            spec = PathwaySpec.from_dict(meta["pathway_spec"])
            out = cls(spec, tensors["masks"], tensors["frequency"], tensors["sources"], float(meta["threshold"]),
                      str(meta["target_fingerprint"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path} holds no valid class pathways ({exc})") from exc
        c, k = (out.masks.shape[0] if out.masks.dim() == 2 else -1), spec.total_channels
        shapes = (tuple(out.masks.shape), tuple(out.frequency.shape), tuple(out.sources.shape))
        dtypes = (out.masks.dtype, out.frequency.dtype, out.sources.dtype)
        if shapes != ((c, k), (c, k), (c,)) or dtypes != (torch.bool, torch.float32, torch.int64):
            raise ArtifactError(f"{path} holds masks {tuple(out.masks.shape)} {out.masks.dtype}, frequencies "
                                f"{tuple(out.frequency.shape)} {out.frequency.dtype} and sources "
                                f"{tuple(out.sources.shape)} {out.sources.dtype}; expected (C, {k}) bool, (C, {k}) "
                                "float32 and (C,) int64")
        if c == 0 or not torch.equal(out.masks, out.frequency >= out.threshold) or bool((out.sources < 0).any()):
            raise ArtifactError(f"{path} holds class pathways that disagree with their own frequencies, threshold "
                                "or source counts; the file is corrupted")
        return out


def build_class_pathways(explanation: Explanation, labels: torch.Tensor, num_classes: int, target_fingerprint: str,
                         j: int = 50, threshold: float = 0.5) -> ClassPathways:
    """M_c from the first `j` correctly classified samples of each class in `explanation`.

    A class without any correctly classified sample gets no pathway (sources 0, empty mask); transfer
    evaluation skips its images.
    """
    if len(labels) != len(explanation):
        raise InputError(f"{len(labels)} labels for {len(explanation)} explanations")
    predicted = explanation.logits.argmax(1)
    k = explanation.spec.total_channels
    frequency = torch.zeros(num_classes, k)
    sources = torch.zeros(num_classes, dtype=torch.long)
    for c in range(num_classes):
        index = torch.nonzero((labels == c) & (predicted == c)).flatten()[:j]
        sources[c] = len(index)
        if len(index):
            frequency[c] = explanation.masks[index].float().mean(0)
    if (sources == 0).all():
        raise InputError("no class has a correctly classified source sample; use more (or better) source data")
    return ClassPathways(explanation.spec, frequency >= threshold, frequency, sources, threshold, target_fingerprint)


def _scores(explanation: Explanation) -> dict[str, float]:
    return {**confidence(explanation), "sparsity": float(explanation.sparsity.mean()), "count": len(explanation)}


def evaluate_transfer(explainer: Explainer, images: torch.Tensor, pathways: ClassPathways,
                      seed: int = 0) -> dict[str, Any]:
    """Explains each image with its predicted class's M_c, another class's, and a random one of
    M_c's size; returns the metrics of each condition. Images of classes without a pathway are skipped."""
    if pathways.spec != explainer.spec:
        raise IncompatibleArtifactError("the class pathways were built for another pathway spec")
    with torch.no_grad():
        classes = explainer.predict(images)
    available = pathways.sources > 0
    keep = available[classes]
    if not keep.any():
        raise InputError("none of the images belongs to a class with a class pathway")
    images, classes = images[keep], classes[keep]
    num_classes = len(pathways.masks)
    # the control: the next class (cyclically) that has a pathway
    following = torch.tensor([next((c + k) % num_classes for k in range(1, num_classes + 1)
                                   if available[(c + k) % num_classes]) for c in range(num_classes)])
    own = pathways.masks[classes]
    other = pathways.masks[following[classes]]
    random = random_masks(own.sum(1), pathways.spec.total_channels, torch.Generator().manual_seed(seed))
    return {
        name: _scores(explainer.explain_with_masks(images, masks, classes, label=name))
        for name, masks in (("own class", own), ("other class", other), ("random", random))
    }
