"""GEN-CNP's generator: configuration, the model (RFE → PDN → RPD → DAQ) and its checkpoint artifact.

The generator knows only the pathway-layer spec of its target (channel counts and spatial sizes),
never the target itself. A checkpoint is `<stem>.safetensors` (weights) + `<stem>.json` (format
"pathrt.generator": config, pathway spec, the target's weight fingerprint, training info); loading
for a target whose fingerprint or spec differs is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from pathrt.artifacts import artifact_paths, check_state, load_artifact, save_artifact
from pathrt.errors import ArtifactError, IncompatibleArtifactError, InputError
from pathrt.generator.daq import DAQ, hard_mask
from pathrt.generator.pdn import PDN
from pathrt.generator.rfe import RFE
from pathrt.generator.rpd import RPD
from pathrt.targets.spec import PathwaySpec

GENERATOR_FORMAT = "pathrt.generator"


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyperparameters of the generator (SPEC §3 defaults); saved inside every checkpoint.

    `s0=None` picks 2 for inputs of at most 64 px and 4 otherwise. `pool_size` is the cost-budget
    choice: each feature map is average-pooled to at most pool_size² before the RFE convs.
    """

    d_r: int = 64
    d: int = 256
    s0: int | None = None
    pool_size: int = 8
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    head_bias: float = 3.0
    daq_sigma: float = 2.0
    daq_temperature: float = 2.0
    threshold: float = 0.5

    @classmethod
    def small(cls, **overrides: Any) -> GeneratorConfig:
        """The SPEC's setting for small targets: d = 128, 2 encoder layers; d_r = 32 keeps the
        generator within the 25% cost budget on the embedded small VGG (19% of a plain pass)."""
        return cls(**{"d": 128, "depth": 2, "d_r": 32, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ArtifactError(f"generator config has unknown fields {sorted(unknown)}; written by a newer pathrt?")
        return cls(**data)

    def resolved_s0(self, spec: PathwaySpec) -> int:
        return self.s0 if self.s0 is not None else (2 if max(spec.input_shape[1:]) <= 64 else 4)


class GeneratorOutput(NamedTuple):
    """Per-layer head logits a_l, scores s_l = sigmoid(a_l) and masks (DAQ in training, s >= 0.5 in eval)."""

    logits: list[torch.Tensor]
    scores: list[torch.Tensor]
    masks: list[torch.Tensor]


class PathwayGenerator(nn.Module):
    """GEN-CNP: pathway-layer features of one plain pass → a pathway per input, in one forward pass."""

    def __init__(self, spec: PathwaySpec, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.config = config = config or GeneratorConfig()
        if config.d % config.heads:
            raise InputError(f"d = {config.d} must be divisible by heads = {config.heads}")
        self.rfe = RFE(spec.layers, config.d_r, config.d, config.resolved_s0(spec), config.pool_size)
        self.pdn = PDN(config.d, config.depth, config.heads, config.mlp_ratio, config.dropout)
        self.rpd = RPD(spec.channels, config.d, config.head_bias)
        self.daq = DAQ(config.daq_sigma, config.daq_temperature)
        # the weights fingerprint of the target it was trained for (set by training and loading; None:
        # unknown, e.g. a fresh generator): an Explainer refuses to pair it with another target's weights
        self.target_fingerprint: str | None = None

    def head_logits(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """RFE → PDN → RPD: the per-layer head logits a_l (N, C_l), before sigmoid and threshold.

        The fast backends stop here and finish with the fused `pathrt::daq_threshold_pack`.
        """
        if len(features) != len(self.spec.layers):
            raise InputError(f"the generator expects {len(self.spec.layers)} feature maps, got {len(features)}")
        z_cls, z = self.pdn(self.rfe(features))
        return self.rpd(z_cls, z)

    def forward(self, features: Sequence[torch.Tensor]) -> GeneratorOutput:
        logits = self.head_logits(features)
        scores = [torch.sigmoid(a) for a in logits]
        if self.training:
            masks = [self.daq(s) for s in scores]
        else:
            masks = [hard_mask(s, self.config.threshold) for s in scores]
        return GeneratorOutput(logits, scores, masks)


def save_generator(generator: PathwayGenerator, path: str | os.PathLike[str], target_fingerprint: str,
                   info: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Writes the generator checkpoint (weights, then sidecar) atomically; returns both paths."""
    return save_artifact(path, GENERATOR_FORMAT, generator.state_dict(), {
        "config": asdict(generator.config),
        "pathway_spec": generator.spec.to_dict(),
        "target_fingerprint": target_fingerprint,
        "info": info or {},
    })


def load_generator(path: str | os.PathLike[str], *, target_fingerprint: str | None = None,
                   spec: PathwaySpec | None = None) -> tuple[PathwayGenerator, dict[str, Any]]:
    """Loads a generator checkpoint in eval mode; returns (generator, sidecar).

    With `target_fingerprint` / `spec` given, a checkpoint trained for another target is refused.
    """
    meta, state = load_artifact(path, GENERATOR_FORMAT)
    weights_path = artifact_paths(path)[0]
    try:
        config = GeneratorConfig.from_dict(dict(meta["config"]))
        saved_spec = PathwaySpec.from_dict(meta["pathway_spec"])
        trained_for = str(meta["target_fingerprint"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"the sidecar of {weights_path} lacks or garbles a required field ({exc})") from exc
    if target_fingerprint is not None and trained_for != target_fingerprint:
        raise IncompatibleArtifactError(
            f"the generator {weights_path.name} was trained for the target with weights fingerprint "
            f"{trained_for[:12]}…, not for this one ({target_fingerprint[:12]}…); train a generator for this "
            "target with `pathrt train`")
    if spec is not None and saved_spec != spec:
        raise IncompatibleArtifactError(f"the generator {weights_path.name} expects another pathway spec "
                                        "than this target's")
    try:
        with torch.device("meta"):  # checked against the file before anything is allocated
            probe = PathwayGenerator(saved_spec, config)
    except Exception as exc:  # untrusted constructor arguments: torch may raise anything
        raise ArtifactError(f"the sidecar of {weights_path} describes no buildable generator ({exc})") from exc
    check_state(probe.state_dict(), state, str(weights_path), "the generator its sidecar describes")
    generator = PathwayGenerator(saved_spec, config)
    generator.load_state_dict(state, strict=True)
    generator.target_fingerprint = trained_for
    return generator.eval(), meta
