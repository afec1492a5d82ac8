"""`Explanation`: the result of explaining a batch, whatever backend produced it.

Masks and scores are stored flat, (N, K) in the spec's layer order; per-layer views, Y, O and the
per-sample sparsity are derived from them (SPEC §5). Saved as `<stem>.safetensors` + `<stem>.json`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pathrt.artifacts import load_artifact, save_artifact
from pathrt.errors import ArtifactError, InputError
from pathrt.runtime.ops import pack_masks
from pathrt.targets.spec import PathwaySpec

EXPLANATION_FORMAT = "pathrt.explanation"
_TENSORS = ("masks", "packed", "scores", "logits", "pathway_logits", "classes")


@dataclass
class Explanation:
    """Pathways of N inputs and what the pathway model does with them.

    masks (N, K) bool, packed (N, ceil(K/8)) uint8 (`pathrt::pack_masks` layout), scores (N, K)
    float, logits / pathway_logits (N, num_classes) of H(x) and H(x; P), classes (N,) the explained
    class c (H's prediction unless asked otherwise), backend: what produced it, backend_reason: why
    that backend (e.g. what `backend="auto"` found available).
    """

    spec: PathwaySpec
    masks: torch.Tensor
    packed: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    pathway_logits: torch.Tensor
    classes: torch.Tensor
    backend: str
    backend_reason: str = ""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def of_backend(cls, spec: PathwaySpec, masks: torch.Tensor, packed: torch.Tensor, scores: torch.Tensor,
                   logits: torch.Tensor, pathway_logits: torch.Tensor, classes: torch.Tensor, backend: str,
                   backend_reason: str = "") -> Explanation:
        """An Explanation of a backend's own result, without `check`: every backend's results are held
        to it by tests/test_explainer.py, and after a batch-1 call has left the caches cold the checks
        cost ~40 µs (the embedded model's whole call takes ~0.9 ms)."""
        explanation = cls.__new__(cls)
        explanation.__dict__.update(spec=spec, masks=masks, packed=packed, scores=scores, logits=logits,
                                    pathway_logits=pathway_logits, classes=classes, backend=backend,
                                    backend_reason=backend_reason)
        return explanation

    def check(self) -> None:
        """Raises InputError unless the tensors have the shapes and dtypes above and the classes lie
        among the logits' columns."""
        n, k = len(self.classes), self.spec.total_channels
        expected = {"masks": (n, k), "packed": (n, (k + 7) // 8), "scores": (n, k)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise InputError(f"Explanation.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.masks.dtype != torch.bool or self.packed.dtype != torch.uint8:
            raise InputError("Explanation.masks must be bool and Explanation.packed uint8")
        if self.logits.dim() != 2 or self.logits.shape != self.pathway_logits.shape or len(self.logits) != n:
            raise InputError(f"Explanation.logits {tuple(self.logits.shape)} and pathway_logits "
                             f"{tuple(self.pathway_logits.shape)} must both be (N={n}, num_classes)")
        if not all(t.is_floating_point() for t in (self.scores, self.logits, self.pathway_logits)):
            raise InputError("Explanation.scores, logits and pathway_logits must be floating point")
        if self.classes.dtype != torch.int64 or self.classes.dim() != 1:
            raise InputError(f"Explanation.classes must be a 1-d int64 tensor, got {self.classes.dtype}")
        if n and not 0 <= (bounds := self.classes.aminmax()).min.item() <= bounds.max.item() < self.logits.shape[1]:
            raise InputError(f"Explanation.classes must lie in [0, {self.logits.shape[1]})")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def layer_masks(self) -> list[torch.Tensor]:
        """Per-layer boolean masks (N, C_l)."""
        return self.spec.split(self.masks)

    @property
    def layer_scores(self) -> list[torch.Tensor]:
        """Per-layer scores (N, C_l)."""
        return self.spec.split(self.scores)

    @property
    def Y(self) -> torch.Tensor:
        """p_c(x): the explained class's probability under the plain model."""
        return torch.softmax(self.logits.float(), 1).gather(1, self.classes[:, None]).squeeze(1)

    @property
    def O(self) -> torch.Tensor:  # noqa: E743  (the paper's name)
        """The explained class's probability under the pathway model H(x; P)."""
        return torch.softmax(self.pathway_logits.float(), 1).gather(1, self.classes[:, None]).squeeze(1)

    @property
    def sparsity(self) -> torch.Tensor:
        """Per-sample fraction of neurons removed: 1 − |P| / K."""
        return 1.0 - self.masks.float().mean(1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (masks, packed, scores, logits, pathway logits, classes)."""
        return sum(getattr(self, name).nbytes for name in _TENSORS)

    @property
    def kept(self) -> torch.Tensor:
        """Per-sample number of kept neurons (int64)."""
        return self.masks.sum(1)

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> Explanation:
        idx = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        return Explanation(self.spec, *(getattr(self, name)[idx] for name in _TENSORS), self.backend,
                           self.backend_reason)

    @staticmethod
    def concat(parts: Sequence[Explanation]) -> Explanation:
        """Joins explanations of consecutive chunks (same spec and backend)."""
        if not parts:
            raise InputError("nothing to concatenate")
        return Explanation.assemble(parts, sum(len(p) for p in parts))

    @staticmethod
    def assemble(parts: Iterable[Explanation], total: int) -> Explanation:
        """Joins the explanations of consecutive chunks (`total` rows in all) as they are produced, into
        tensors allocated once: peak memory is the result plus one chunk (`concat` holds both copies)."""
        out: dict[str, torch.Tensor] = {}
        first: Explanation | None = None
        start = 0
        parts = iter(parts)
        for part in parts:
            if first is None and len(part) == total:  # one chunk: it is the result (no copy)
                if next(parts, None) is not None:
                    raise InputError(f"the chunks hold more than the {total} explanations expected")
                return part
            if first is None:
                first = part
                out = {n: getattr(part, n).new_empty((total, *getattr(part, n).shape[1:])) for n in _TENSORS}
            elif part.spec != first.spec:
                raise InputError("cannot join explanations of different pathway specs")
            for name in _TENSORS:
                out[name][start:start + len(part)] = getattr(part, name)
            start += len(part)
        if first is None or start != total:
            raise InputError(f"the chunks hold {start} explanations, {total} were expected")
        return Explanation(first.spec, *(out[n] for n in _TENSORS), first.backend, first.backend_reason)

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Writes `<stem>.safetensors` + `<stem>.json` atomically."""
        return save_artifact(path, EXPLANATION_FORMAT, {name: getattr(self, name) for name in _TENSORS},
                             {"backend": self.backend, "backend_reason": self.backend_reason, "count": len(self),
                              "pathway_spec": self.spec.to_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        meta, tensors = load_artifact(path, EXPLANATION_FORMAT)
        try:
            out = cls(PathwaySpec.from_dict(meta["pathway_spec"]), *(tensors[n] for n in _TENSORS),
                      str(meta["backend"]), str(meta.get("backend_reason", "")))
        except (KeyError, InputError) as exc:
            raise ArtifactError(f"{path} is not a valid explanation ({exc})") from exc
        if len(out) != meta["count"] or not torch.equal(out.packed, pack_masks(out.masks)):
            raise ArtifactError(f"{path} is not a valid explanation (its count or packed masks disagree with "
                                "its masks)")
        return out
