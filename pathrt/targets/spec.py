"""Pathway-layer specs (SPEC §1): which module outputs are pathway layers, with their shapes.

Rules (decided in SPEC §1):
  * AlexNet/VGG-style nets ("conv-relu"): the output of the activation (ReLU, SiLU, GELU,
    LeakyReLU, Hardswish, ReLU6) that follows each conv, or of the last per-channel module after it
    (a BatchNorm after the ReLU, dropout): where the channel leaves the block;
  * ResNets ("residual-block"): the output of every BasicBlock/Bottleneck (after add and ReLU);
  * any other model ("user"): the modules the user names; their outputs must be (N, C, H, W).
The spec is measured with one dry-run forward at the target's input size, so channel counts and
spatial sizes are exact, and the layer order is execution order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pathrt.errors import InputError, SpecError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def residual_block_types() -> tuple[type[nn.Module], ...]:
    """torchvision's residual blocks (BasicBlock, Bottleneck); () while torchvision.models.resnet is not
    imported, since no module can be one then. pathrt does not import torchvision itself until it
    builds one of its models: its ops import torch._dynamo, which made `import pathrt` 3.8 s instead
    of 2.2 (a process that trains still loads torch._dynamo, at its first backward pass)."""
    resnet = sys.modules.get("torchvision.models.resnet")
    return (resnet.BasicBlock, resnet.Bottleneck) if resnet is not None else ()


@dataclass(frozen=True)
class PathwayLayer:
    """One pathway layer: the module whose output is masked, and that output's shape."""

    name: str
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class PathwaySpec:
    """The pathway layers of a target, in execution order, at a fixed input shape (C, H, W)."""

    layers: tuple[PathwayLayer, ...]
    input_shape: tuple[int, int, int]
    rule: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(layer.channels for layer in self.layers)

    @property
    def total_channels(self) -> int:
        """Number of neurons K (channels summed over the pathway layers)."""
        return sum(self.channels)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each layer's channels in the flat (N, K) mask layout; L+1 entries."""
        out = [0]
        for c in self.channels:
            out.append(out[-1] + c)
        return tuple(out)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Splits a flat (N, K) tensor into the per-layer (N, C_l) pieces (views)."""
        if flat.dim() != 2 or flat.shape[1] != self.total_channels:
            raise InputError(f"expected a flat (N, {self.total_channels}) tensor for this spec, "
                             f"got shape {tuple(flat.shape)}")
        return list(torch.split(flat, list(self.channels), dim=1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "input_shape": list(self.input_shape),
            "layers": [[lay.name, lay.channels, lay.height, lay.width] for lay in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PathwaySpec:
        try:
            layers = tuple(PathwayLayer(str(n), int(c), int(h), int(w)) for n, c, h, w in data["layers"])
            shape = tuple(int(v) for v in data["input_shape"])
            rule = str(data["rule"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed pathway spec {data!r}: {exc}") from exc
        if len(shape) != 3 or not layers:
            raise SpecError(f"malformed pathway spec: input_shape {shape}, {len(layers)} layers")
        return cls(layers=layers, input_shape=shape, rule=rule)  # type: ignore[arg-type]

    def describe(self) -> str:
        """A small table: layer, module, channels, spatial size."""
        rows = [f"{'#':>3}  {'module':<24} {'channels':>8}  size"]
        for i, lay in enumerate(self.layers):
            rows.append(f"{i + 1:>3}  {lay.name:<24} {lay.channels:>8}  {lay.height}x{lay.width}")
        rows.append(f"     {'total neurons':<24} {self.total_channels:>8}")
        return "\n".join(rows)


_ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish, nn.ReLU6)
# identities in eval mode: a block's chain of per-channel modules runs through them, never ends on one
_IDENTITIES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_PER_CHANNEL = (*_ACTIVATIONS, nn.BatchNorm2d)


def conv_relu_modules(model: nn.Module) -> list[str]:
    """The pathway module of each conv block (in registration order): the activation that follows
    the conv, or, when per-channel modules follow that activation (a BatchNorm after the ReLU, as
    Keras-style models have, dropout, another activation), the last of them, where the channel
    leaves the block. Masking there removes the channel's whole contribution: a mask before a
    BatchNorm would let its shift through. A Linear between a conv and its activation cancels the
    conv (the activation then belongs to the Linear, which is not a pathway layer)."""
    names: list[str] = []
    pending = False  # a conv waits for its activation
    block: str | None = None  # the block's pathway module so far, while per-channel modules follow
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves follow in order
        if block is not None and isinstance(module, (*_PER_CHANNEL, *_IDENTITIES)):
            block = name if isinstance(module, _PER_CHANNEL) else block
            continue
        if block is not None:
            names.append(block)
            block = None
        if isinstance(module, _CONVS):
            pending = True
        elif isinstance(module, nn.Linear):
            pending = False
        elif isinstance(module, _ACTIVATIONS) and pending:
            block, pending = name, False
    if block is not None:
        names.append(block)
    return names


def residual_block_modules(model: nn.Module) -> list[str]:
    """Names of the torchvision residual blocks (BasicBlock, Bottleneck)."""
    return [name for name, module in model.named_modules() if isinstance(module, residual_block_types())]


def default_pathway_modules(model: nn.Module) -> tuple[list[str], str]:
    """The SPEC §1 pathway modules of `model` and the rule that chose them."""
    blocks = residual_block_modules(model)
    if blocks:
        return blocks, "residual-block"
    relus = conv_relu_modules(model)
    if relus:
        return relus, "conv-relu"
    raise SpecError(f"{type(model).__name__} has no conv->ReLU modules and no residual blocks; name the "
                    "pathway modules yourself: spec_from_modules(model, ['layer1', ...], input_shape)")


def spec_from_modules(
    model: nn.Module,
    names: Sequence[str],
    input_shape: Sequence[int],
    rule: str = "user",
) -> PathwaySpec:
    """Measures the pathway spec for the named modules with one dry-run forward of zeros.

    Each named module must run exactly once per forward and output an (N, C, H, W) tensor.
    """
    if len(input_shape) != 3:
        raise InputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise SpecError(f"{type(model).__name__} has no module named {missing}; "
                        f"some valid names: {list(modules)[1:8]}")
    if len(set(names)) != len(names) or not names:
        raise SpecError(f"pathway module names must be unique and non-empty, got {list(names)}")
    seen: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    order: list[str] = []

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            seen[name].append(shape)
            order.append(name)

        return hook

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    handles = [modules[n].register_forward_hook(recorder(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    layers = []
    for name in dict.fromkeys(order):
        shapes = seen[name]
        if len(shapes) != 1:
            raise SpecError(f"module {name!r} runs {len(shapes)} times per forward; a pathway module "
                            "must run once (torchvision reuses one ReLU inside residual blocks: name "
                            "the block instead)")
        if len(shapes[0]) != 4:
            raise SpecError(f"module {name!r} outputs shape {shapes[0]}; pathway layers must output "
                            "(N, C, H, W) tensors")
        _, c, h, w = shapes[0]
        layers.append(PathwayLayer(name, c, h, w))
    never = [n for n in names if not seen[n]]
    if never:
        raise SpecError(f"modules {never} did not run in a forward pass; they cannot be pathway layers")
    return PathwaySpec(layers=tuple(layers), input_shape=tuple(int(v) for v in input_shape), rule=rule)


def build_spec(model: nn.Module, input_shape: Sequence[int], modules: Sequence[str] | None = None) -> PathwaySpec:
    """The pathway spec of `model`: the SPEC §1 default rule, or the user-named `modules`."""
    if modules is not None:
        return spec_from_modules(model, modules, input_shape, rule="user")
    names, rule = default_pathway_modules(model)
    return spec_from_modules(model, names, input_shape, rule=rule)
