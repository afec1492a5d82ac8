"""A target model with everything pathrt needs to explain it, and its weights artifact.

`Target` bundles the network (eval mode), its architecture name and constructor arguments, its
pathway spec, class names, input shape and input normalization, and a fingerprint of its weights.
Saved as `<stem>.safetensors` + `<stem>.json` (format "pathrt.target"); loading rebuilds the
architecture, checks every tensor name and shape and the fingerprint, and refuses a mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathrt.artifacts import artifact_paths, check_state, load_artifact, load_tensors, save_artifact, tensor_fingerprint
from pathrt.errors import ArtifactError, IncompatibleArtifactError, InputError
from pathrt.targets.models import ARCHITECTURES, build_factory, build_model, is_factory
from pathrt.targets.pathway import Capture, Masks, capture_features, check_images, pathway_forward
from pathrt.targets.spec import PathwaySpec, build_spec

TARGET_FORMAT = "pathrt.target"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Target:
    """A frozen classifier plus its pathway spec and preprocessing (see the module docstring)."""

    model: nn.Module
    arch: str
    spec: PathwaySpec
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the weights (parameters and buffers); changes whenever any weight changes."""
        return tensor_fingerprint(self.model.state_dict())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalizes images (N, C, H, W) with the target's mean and std: floating-point images in
        [0, 1], or uint8 images in 0..255 (read as value / 255, in float32)."""
        if not images.is_floating_point():
            if images.dtype != torch.uint8:
                raise InputError(f"preprocess takes float images in [0, 1] or uint8 images, got {images.dtype}")
            images = images.float() / 255
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    @property
    def channel_means(self) -> torch.Tensor | None:
        """Each neuron's mean activation over the training split, float32 (K,): what a removed channel
        holds under mean ablation (`Explainer.explain_with_masks(..., fill=)`). None until
        `measure_channel_means` stored them (`pathrt train-target` and the demo do)."""
        stored = self.info.get("channel_means")
        if stored is None:
            return None
        values = torch.tensor(stored["values"], dtype=torch.float32)
        if values.shape != (self.spec.total_channels,) or not bool(torch.isfinite(values).all()):
            raise ArtifactError(f"the target's stored channel means have shape {tuple(values.shape)} or non-finite "
                                f"values; expected {self.spec.total_channels} finite values: measure them again")
        return values

    def measure_channel_means(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Measures and stores (in `info`, saved with the target) each neuron's mean activation over
        the preprocessed `images` (the training split): the mean over images and positions of its
        pathway-layer output, in the float64 sum of float32 activations. Returns it, (K,)."""
        check_images(images, self.spec)
        total = torch.zeros(self.spec.total_channels, dtype=torch.float64)
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                features = capture_features(self.model, self.spec, images[s:s + batch_size], check=False).features
                total += torch.cat([f.double().sum((2, 3)).sum(0) / (f.shape[2] * f.shape[3]) for f in features])
        means = (total / len(images)).float()
        self.info["channel_means"] = {"values": means.tolist(), "images": len(images)}
        return means

    def capture(self, x: torch.Tensor) -> Capture:
        """Plain forward on preprocessed `x`: logits and pathway-layer features."""
        return capture_features(self.model, self.spec, x)

    def pathway_logits(self, x: torch.Tensor, masks: Masks) -> torch.Tensor:
        """Logits of the pathway model H(x; masks) on preprocessed `x`."""
        return pathway_forward(self.model, self.spec, x, masks)


def create_target(
    arch: str,
    classes: Sequence[str] | int,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pathway_modules: Sequence[str] | None = None,
    **arch_kwargs: Any,
) -> Target:
    """A target of a known architecture with random weights (train it, or load weights into it)."""
    names = tuple(str(i) for i in range(classes)) if isinstance(classes, int) else tuple(classes)
    if len(names) < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {len(names)}")
    if len(mean) != input_shape[0] or len(std) != input_shape[0]:
        raise InputError(f"mean/std need one value per input channel ({input_shape[0]}), got "
                         f"{len(mean)} and {len(std)}")
    return _assemble(arch, names, input_shape, mean, std, pathway_modules, dict(arch_kwargs))


def _assemble(arch: str, names: tuple[str, ...], input_shape: Sequence[int], mean: Sequence[float],
              std: Sequence[float], pathway_modules: Sequence[str] | None, kwargs: dict[str, Any]) -> Target:
    """A Target of a built-in architecture or a user factory (which gets `kwargs` alone), random weights."""
    model = build_factory(arch, kwargs) if is_factory(arch) else build_model(arch, num_classes=len(names), **kwargs)
    spec = build_spec(model, input_shape, pathway_modules)
    return Target(model, arch, spec, names, tuple(map(float, mean)), tuple(map(float, std)), kwargs)


def wrap_model(
    model: nn.Module,
    input_shape: Sequence[int],
    classes: Sequence[str] | int,
    *,
    factory: str | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    scale: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pathway_modules: Sequence[str] | None = None,
) -> Target:
    """Your own classifier as a Target: the one call that makes any `nn.Module` explainable.

    `input_shape` is (C, H, W); `classes` the class names (or their number) in logit order.
    Preprocessing: images come to pathrt in [0, 1] (or as uint8); the model sees
    `(images * scale - mean) / std`, with `mean` and `std` in the model's own units: `scale=255`
    for a model trained on raw 0..255 pixels (Keras style), `mean=(0.485, ...)` and `std=(0.229,
    ...)` for ImageNet-normalized [0, 1] input. Pathway modules follow the SPEC §1 rule unless
    named (`pathway_modules`).

    `factory` ("package.module:function", a function marked `@pathrt.model_factory` or an
    nn.Module class) rebuilds the model with `factory_kwargs` when the saved target is loaded, in
    any process and by every CLI command; the weights travel in the artifact. Without it, pathrt
    uses the model's class when that builds an identical model without arguments; otherwise the
    target works in memory and `save_target` says what to add.
    """
    names = tuple(str(i) for i in range(classes)) if isinstance(classes, int) else tuple(map(str, classes))
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if len(names) < 2:
        raise InputError(f"a classifier needs at least 2 classes, got {len(names)}")
    mean = (0.0,) * shape[0] if mean is None else tuple(map(float, mean))
    std = (1.0,) * shape[0] if std is None else tuple(map(float, std))
    if len(mean) != shape[0] or len(std) != shape[0] or min(std) <= 0 or scale <= 0:
        raise InputError(f"mean and std need one value per input channel ({shape[0]}), std > 0 and scale > 0; got "
                         f"mean {mean}, std {std}, scale {scale}")
    model = model.eval()
    parameter = next(iter(model.parameters()), None)
    with torch.no_grad():
        logits = model(torch.zeros(1, *shape, device=parameter.device if parameter is not None else "cpu",
                                   dtype=parameter.dtype if parameter is not None else torch.float32))
    if logits.dim() != 2 or logits.shape[1] != len(names):
        raise InputError(f"the model returns logits of shape {tuple(logits.shape)} for one image, but {len(names)} "
                         "classes were named; pass the class names in logit order")
    kwargs = dict(factory_kwargs or {})
    arch = _factory_for(model, factory, kwargs)
    spec = build_spec(model, shape, pathway_modules)
    return Target(model, arch, spec, names, tuple(m / scale for m in mean), tuple(s / scale for s in std), kwargs)


def _factory_for(model: nn.Module, factory: str | None, kwargs: dict[str, Any]) -> str:
    """The factory that rebuilds `model` (checked: it builds the same tensors), or `<ClassName>`
    for a model pathrt can explain in memory but not rebuild."""
    cls = type(model)
    candidate = factory or (f"{cls.__module__}:{cls.__qualname__}" if cls.__module__ != "__main__" and
                            "<locals>" not in cls.__qualname__ else None)
    if candidate is None:
        return f"<{cls.__name__}>"
    try:
        with torch.device("meta"):
            probe = build_factory(candidate, kwargs)
        check_state(probe.state_dict(), model.state_dict(), "your model", f"what {candidate} builds", False)
    except (InputError, IncompatibleArtifactError, TypeError) as exc:
        if factory is None:  # the class alone does not rebuild it: explainable in memory, not savable
            return f"<{cls.__name__}>"
        raise InputError(f"factory {factory!r} does not rebuild this model ({str(exc)[:400]}); name a function that "
                         "builds it from factory_kwargs") from exc
    return candidate


def save_target(target: Target, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Writes `<stem>.safetensors` and its sidecar `<stem>.json` atomically; returns both paths."""
    if not (is_factory(target.arch) or target.arch in ARCHITECTURES):
        raise InputError(f"this target wraps a {target.arch} that pathrt cannot rebuild when loading it; wrap it "
                         "with pathrt.wrap_model(model, ..., factory='package.module:function'), naming an importable "
                         "function marked @pathrt.model_factory that builds it")
    return save_artifact(path, TARGET_FORMAT, target.model.state_dict(), {
        "arch": target.arch,
        "arch_kwargs": target.arch_kwargs,
        "classes": list(target.classes),
        "mean": list(target.mean),
        "std": list(target.std),
        "pathway_spec": target.spec.to_dict(),
        "info": target.info,
    })


def _check_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path, arch: str,
                   exact_dtypes: bool = True) -> None:
    check_state(model.state_dict(), state, str(source), f"architecture {arch!r} (check the architecture name and "
                "the number of classes)", exact_dtypes)


def load_target(path: str | os.PathLike[str], *, arch: str | None = None, fingerprint: str | None = None) -> Target:
    """Loads a target saved by `save_target` (or `pathrt train-target`).

    Refuses, with IncompatibleArtifactError, weights whose fingerprint differs from the sidecar's
    (or from `fingerprint`, when given) and an architecture other than `arch`, when given.
    """
    meta, state = load_artifact(path, TARGET_FORMAT)
    weights_path = artifact_paths(path)[0]
    try:
        saved_arch = str(meta["arch"])
        classes = [str(c) for c in meta["classes"]]
        mean, std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        arch_kwargs = dict(meta.get("arch_kwargs", {}))
        spec = PathwaySpec.from_dict(meta["pathway_spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"the sidecar of {weights_path} lacks or garbles a required field ({exc})") from exc
    if arch is not None and arch != saved_arch:
        raise IncompatibleArtifactError(f"{weights_path} holds a {saved_arch!r} target, not {arch!r}")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise IncompatibleArtifactError(f"{weights_path} has weights fingerprint {meta['fingerprint'][:12]}…, but "
                                        f"{fingerprint[:12]}… was expected: this is another model")
    if len(mean) != spec.input_shape[0] or len(std) != spec.input_shape[0]:
        raise ArtifactError(f"the sidecar of {weights_path} has {len(mean)} means and {len(std)} stds for "
                            f"{spec.input_shape[0]} input channels")

    def build() -> Target:
        try:
            return _assemble(saved_arch, tuple(classes), spec.input_shape, mean, std,
                             spec.names if spec.rule == "user" else None, arch_kwargs)
        except InputError as exc:  # an architecture or factory this process does not have: the message says how
            raise InputError(f"cannot rebuild the target {weights_path}: {str(exc)[:600]}") from exc
        except Exception as exc:  # untrusted constructor arguments: torch may raise anything (fuzzing found IndexError)
            raise ArtifactError(f"the sidecar of {weights_path} describes no buildable {saved_arch!r} "
                                f"({str(exc)[:300]})") from exc

    # the architecture is first built on the meta device (no memory) and checked against the file's
    # tensors and spec, so a sidecar cannot make pathrt allocate more than the weights file holds
    with torch.device("meta"):
        probe = build()
    _check_weights(probe.model, state, weights_path, saved_arch)
    if probe.spec != spec:
        raise IncompatibleArtifactError(f"the pathway spec rebuilt for {saved_arch!r} differs from the one "
                                        f"recorded with {weights_path}; it was saved by another pathrt version")
    target = build()
    target.model.load_state_dict(state, strict=True)
    target.info = dict(meta.get("info", {}))
    target.channel_means  # noqa: B018 (refuses garbled stored means at load, not at first use)
    return target


def import_weights(
    arch: str,
    weights_file: str | os.PathLike[str],
    classes: Sequence[str] | int,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **arch_kwargs: Any,
) -> Target:
    """A target of a known architecture with a user's local state dict (never downloaded).

    `weights_file` is a .safetensors file or a PyTorch state dict (.pth/.pt), read with
    `torch.load(weights_only=True)`, so no pickled code runs. Save the result with `save_target`.
    """
    source = Path(weights_file)
    if not source.is_file():
        raise ArtifactError(f"{source} does not exist; give the path of a local weights file")
    if source.suffix == ".safetensors":
        state = load_tensors(source)
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactError(f"{source} is not a loadable state dict ({exc}); pathrt only reads plain "
                                "tensors (weights_only=True), never pickled objects") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ArtifactError(f"{source} does not hold a state dict (name -> tensor)")
    target = create_target(arch, classes, input_shape, mean=mean, std=std, **arch_kwargs)
    _check_weights(target.model, state, source, arch, exact_dtypes=False)
    target.model.load_state_dict(state, strict=True)
    return target
