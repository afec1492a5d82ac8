"""Feature capture at the pathway layers and the pathway (masked) forward, eager reference.

Both run the target once with temporary forward hooks on the spec's modules; the hooks are
removed in a `finally`, so none survives an exception. Masks are per sample: (N, C_l) per layer,
or one flat (N, K) tensor in the spec's layer order; a leading dimension of 1 applies one pathway
to the whole batch. Bool/uint8 masks select channels; float masks scale them (training uses the
DAQ's soft masks so that gradients reach the generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from pathrt.errors import InputError, SpecError
from pathrt.opspec import removed_value
from pathrt.targets.spec import PathwaySpec

Masks = torch.Tensor | Sequence[torch.Tensor]
_Hook = Callable[[int, torch.Tensor], torch.Tensor | None]


class Capture(NamedTuple):
    """Logits of a forward pass and the pathway-layer outputs it saw, in spec order."""

    logits: torch.Tensor
    features: list[torch.Tensor]


@contextmanager
def _layer_hooks(model: nn.Module, spec: PathwaySpec, fn: _Hook) -> Iterator[list[int]]:
    """Installs `fn(layer_index, output) -> replacement or None` on each pathway module.

    Yields the per-layer call counts; checks each module's output shape against the spec.
    """
    modules = dict(model.named_modules())
    missing = [name for name in spec.names if name not in modules]
    if missing:
        raise SpecError(f"the model has no module {missing} named by the pathway spec; was the spec "
                        "built for another architecture?")
    calls = [0] * len(spec.layers)

    def make(index: int) -> Callable[[nn.Module, Any, Any], torch.Tensor | None]:
        layer = spec.layers[index]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor | None:
            calls[index] += 1
            if calls[index] > 1:
                raise SpecError(f"pathway module {layer.name!r} ran twice in one forward pass")
            if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[1] != layer.channels:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise SpecError(f"pathway module {layer.name!r} output {shape}, the spec expects "
                                f"(N, {layer.channels}, H, W)")
            return fn(index, output)

        return hook

    handles = [modules[name].register_forward_hook(make(i)) for i, name in enumerate(spec.names)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _check_all_ran(spec: PathwaySpec, calls: list[int]) -> None:
    idle = [spec.names[i] for i, c in enumerate(calls) if c == 0]
    if idle:
        raise SpecError(f"pathway modules {idle} did not run in this forward pass")


def _shape_advice(shape: tuple[int, ...], want: tuple[int, int, int]) -> str:
    """What to change about images of `shape` for a target of input `want` (the C++ session says the same)."""
    c, h, w = want
    if len(shape) != 4:
        return "give a batch of (C, H, W) images (add a batch axis with images.unsqueeze(0))"
    if shape[1:] == (h, w, c):
        return "they look channels-last (N, H, W, C): pass images.permute(0, 3, 1, 2)"
    if shape[1] != c:
        gray = " (grayscale to RGB: images.expand(-1, 3, -1, -1))" if shape[1] == 1 and c == 3 else ""
        return f"they have {shape[1]} channel{'s' if shape[1] != 1 else ''}, the target takes {c}{gray}"
    return f"resize them to {h}x{w}, the target's input size"


def check_images(x: torch.Tensor, spec: PathwaySpec, chunk: int | None = None) -> None:
    """Raises InputError unless `x` is a non-empty (N, C, H, W) floating-point batch of the spec's
    input shape with finite values (a NaN or Inf would silently give a meaningless pathway). `chunk`:
    scan for non-finite values that many images at a time (bounded memory; the message still counts
    over the whole batch)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise InputError(f"images must be (N, {', '.join(map(str, spec.input_shape))}), got shape {tuple(x.shape)}; "
                         f"{_shape_advice(tuple(x.shape), spec.input_shape)}")
    if x.shape[0] == 0:
        raise InputError("images is an empty batch (N = 0)")
    if not x.is_floating_point():
        raise InputError(f"images are {x.dtype}; pathrt explains floating-point images normalized with "
                         "target.preprocess (e.g. target.preprocess(uint8_images.float() / 255))")
    if math.isfinite(float(x.detach().sum(dtype=torch.float64))):  # one reduction: non-finite iff a NaN or Inf
        return
    step = chunk or len(x)
    bad = torch.cat([torch.nonzero(~torch.isfinite(x[s:s + step]).flatten(1).all(1)).flatten() + s
                     for s in range(0, len(x), step)])
    if len(bad):
        raise InputError(f"{len(bad)} of {len(x)} images contain NaN or Inf values (first: image {int(bad[0])}); "
                         "drop or repair them before explaining")


def capture_features(model: nn.Module, spec: PathwaySpec, x: torch.Tensor, check_inplace: bool = True,
                     check: bool = True) -> Capture:
    """Runs the plain forward of `model` on `x` and returns its logits and pathway-layer outputs.

    Raises SpecError if a later in-place op modified a captured output (name another module).
    `check_inplace=False` skips that check, for code traced by torch.compile (whose graphs do not
    keep tensor version counters faithfully); check the spec once in eager mode first. Tensors made
    under torch.inference_mode() keep no version counter: the check is skipped for them (the eager
    backend checks its spec once, outside inference mode). `check=False` skips `check_images`, for
    callers that checked the batch already.
    """
    if check:
        check_images(x, spec)
    features: list[torch.Tensor | None] = [None] * len(spec.layers)
    versions: list[int | None] = [None] * len(spec.layers)

    def keep(index: int, output: torch.Tensor) -> None:
        features[index] = output
        versions[index] = output._version if check_inplace and not output.is_inference() else None

    with _layer_hooks(model, spec, keep) as calls:
        logits = model(x)
    _check_all_ran(spec, calls)
    changed = [spec.names[i] for i, f in enumerate(features)
               if f is not None and versions[i] is not None and f._version != versions[i]]
    if changed:
        raise SpecError(f"the outputs of {changed} were modified in place later in the forward pass, so "
                        "they cannot be captured as pathway features; name modules whose outputs are not "
                        "overwritten")
    return Capture(logits, [f for f in features if f is not None])


def normalize_masks(masks: Masks, spec: PathwaySpec, batch: int) -> list[torch.Tensor]:
    """Validates masks against the spec and a batch size; returns per-layer (N or 1, C_l) tensors."""
    if isinstance(masks, torch.Tensor):
        if masks.dim() != 2:
            raise InputError(f"a flat mask must be (N, {spec.total_channels}), got shape {tuple(masks.shape)}")
        per_layer = spec.split(masks)
    else:
        per_layer = list(masks)
        if len(per_layer) != len(spec.layers):
            raise InputError(f"expected {len(spec.layers)} per-layer masks, got {len(per_layer)}")
    for layer, m in zip(spec.layers, per_layer, strict=True):
        if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[1] != layer.channels:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InputError(f"mask of layer {layer.name!r} must be (N, {layer.channels}), got {shape}")
        if m.shape[0] not in (1, batch):
            raise InputError(f"mask of layer {layer.name!r} has {m.shape[0]} rows for a batch of {batch}; "
                             "give one row per image, or one row for all")
    return per_layer


def normalize_fill(fill: torch.Tensor, spec: PathwaySpec) -> list[torch.Tensor]:
    """Checks a flat (K,) tensor of removed-channel values (mean ablation) and splits it per layer."""
    if not isinstance(fill, torch.Tensor) or fill.dim() != 1 or fill.shape[0] != spec.total_channels:
        shape = tuple(fill.shape) if isinstance(fill, torch.Tensor) else type(fill).__name__
        raise InputError(f"fill must be a ({spec.total_channels},) tensor (one value per neuron, e.g. "
                         f"target.channel_means), got {shape}")
    if not fill.is_floating_point() or not bool(torch.isfinite(fill).all()):
        raise InputError("fill must hold finite floating-point values (the removed channels' mean activations)")
    return [part[0] for part in spec.split(fill[None])]


def pathway_forward(
    model: nn.Module,
    spec: PathwaySpec,
    x: torch.Tensor,
    masks: Masks,
    check: bool = True,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the pathway model H(x; P): each pathway layer's output times its channel mask.

    With all-ones masks this is exactly the plain forward (multiplying by 1.0 is exact).
    `fill` (K,): mean ablation, a removed channel holds fill[k] instead of 0 (bool masks only).
    `check=False` skips `check_images`, for callers that checked the batch already.
    """
    if check:
        check_images(x, spec)
    per_layer = normalize_masks(masks, spec, x.shape[0])
    fills = normalize_fill(fill, spec) if fill is not None else None
    if fills is not None and any(m.is_floating_point() for m in per_layer):
        raise InputError("mean ablation (fill) takes bool masks: a removed channel is replaced, not scaled")

    def apply(index: int, output: torch.Tensor) -> torch.Tensor:
        m = per_layer[index]
        if fills is not None:
            return torch.where(m.to(output.device).bool()[:, :, None, None], output,
                               removed_value(output, fills[index].to(output.device)))
        m = (m if m.is_floating_point() else m != 0).to(device=output.device, dtype=output.dtype)
        return output * m[:, :, None, None]

    with _layer_hooks(model, spec, apply) as calls:
        logits = model(x)
    _check_all_ran(spec, calls)
    return logits


def count_hooks(model: nn.Module) -> int:
    """Number of forward (pre-)hooks and backward hooks installed on `model`'s modules."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )
