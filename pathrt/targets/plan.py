"""Lowering a canonized target into a flat plan of tensor ops, for the hook-free fast paths.

The plan is a list of `Step`s over numbered values (value 0 is the input image batch), built from a
torch.fx trace of the model with residual blocks kept whole and expanded by hand. Supported ops:
conv2d, linear, relu, elementwise activations (SiLU, GELU, LeakyReLU, Hardswish, ReLU6, Tanh),
per-channel affine (a BatchNorm2d not folded into a conv, e.g. after a ReLU), max/avg pool, adaptive
avg pool, flatten and residual add; dropout and identity (folded BatchNorms) vanish in eval mode.
Two fusions make the epilogues the fast path needs: conv → relu, and conv → add(residual) → relu.
Each step records which pathway layer its output is (`pathway`), which pathway mask zeroes its
input channels (`in_mask`) and which mask its output channels are limited to (`out_mask`), so an
executor can skip removed channels. Anything else is refused with a `PlanError` naming the
module, and the caller falls back to the eager path.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from pathrt.bundle_format import PLAN_OPS
from pathrt.errors import CanonizationError, SpecError
from pathrt.targets.canonize import batchnorm_scale_shift
from pathrt.targets.spec import PathwaySpec, residual_block_types

_ALIASES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def activation_kind(m: nn.Module) -> tuple[str, float] | None:
    """(kind, alpha) of an elementwise activation the plan runs (alpha: LeakyReLU's slope, else 0),
    or None. Each maps 0 to 0, so a removed channel stays removed through it."""
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu"), 0.0
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", float(m.negative_slope)
    kinds = {nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.ReLU6: "relu6", nn.Tanh: "tanh"}
    return next(((kind, 0.0) for cls, kind in kinds.items() if type(m) is cls), None)


def batchnorm_affine(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (scale, shift) of an eval-mode BatchNorm2d, in its dtype: y = x * scale + shift."""
    try:
        scale, shift = batchnorm_scale_shift(m)
    except CanonizationError as exc:
        raise PlanError(f"{exc}; use backend='eager'") from exc
    return scale.to(m.running_mean.dtype), shift.to(m.running_mean.dtype)


_RELU_FUNCTIONS = (torch.relu, F.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)

# Ops after which a channel that was zero is still zero (per channel, f(0) = 0); `affine` is not one.
ZERO_PRESERVING = ("relu", "activation", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")


class PlanError(SpecError):
    """The model holds an op the plan does not support; use the eager backend for it."""


@dataclass(frozen=True)
class Step:
    """One op of the plan: `output = op(*inputs)`, weights from `module` when it has any.

    attrs: conv2d: stride, padding, relu (fused), residual (inputs[1] is added before the relu);
    linear: relu; pools: kernel_size, stride, padding, ceil_mode; adaptive_avg_pool2d: output_size;
    flatten: start_dim; activation: kind, alpha (LeakyReLU's slope); affine: weights from a BatchNorm2d.
    """

    op: str
    inputs: tuple[int, ...]
    output: int
    module: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    pathway: int | None = None
    in_mask: int | None = None
    out_mask: int | None = None

    def __post_init__(self) -> None:
        if self.op not in PLAN_OPS:  # the plan contract (bundle.schema.json) declares the ops
            raise AssertionError(f"plan op {self.op!r} is not declared in the plan contract {PLAN_OPS}")


@dataclass(frozen=True)
class Plan:
    """The lowered model: steps in execution order, the value that holds the logits, and the spec."""

    steps: tuple[Step, ...]
    output: int
    spec: PathwaySpec

    @property
    def pathway_steps(self) -> list[int]:
        """Index of the step that outputs each pathway layer, in layer order."""
        where = {s.pathway: i for i, s in enumerate(self.steps) if s.pathway is not None}
        return [where[layer] for layer in range(len(self.spec.layers))]

    def values_needed_after(self, index: int) -> set[int]:
        """Values made at or before step `index` that later steps (or the output) read."""
        made = {0} | {s.output for s in self.steps[: index + 1]}
        read = {v for s in self.steps[index + 1:] for v in s.inputs} | {self.output}
        return made & read

    def describe(self) -> str:
        """One line per step, for `pathrt info` and error reports."""
        lines = []
        for i, s in enumerate(self.steps):
            extra = "".join(f" {k}={v}" for k, v in s.attrs.items())
            masks = "".join(f" {k}=L{v + 1}" for k, v in (("in", s.in_mask), ("out", s.out_mask)) if v is not None)
            mark = f"  -> pathway layer {s.pathway + 1}" if s.pathway is not None else ""
            lines.append(f"{i:>3} v{s.output} = {s.op}({', '.join(f'v{v}' for v in s.inputs)})"
                         f"{' [' + s.module + ']' if s.module else ''}{extra}{masks}{mark}")
        return "\n".join(lines)


class _BlockTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, residual_block_types()) or super().is_leaf_module(m, qualname)


class _Builder:
    def __init__(self, model: nn.Module, spec: PathwaySpec) -> None:
        self.modules = dict(model.named_modules())
        self.spec = spec
        self.layer_of = {name: i for i, name in enumerate(spec.names)}
        self.steps: list[Step] = []
        self.count = 1

    def emit(self, op: str, inputs: tuple[int, ...], module: str | None = None, **attrs: Any) -> int:
        self.steps.append(Step(op, inputs, self.count, module, attrs))
        self.count += 1
        return self.count - 1

    def mark(self, value: int, name: str) -> None:
        if name in self.layer_of:
            index = next(i for i, s in enumerate(self.steps) if s.output == value)
            self.steps[index] = replace(self.steps[index], pathway=self.layer_of[name])

    def module_step(self, name: str, x: int) -> int:
        m = self.modules[name]
        if isinstance(m, _ALIASES):
            if name in self.layer_of:
                raise PlanError(f"pathway module {name!r} is a {type(m).__name__}, which the plan drops")
            return x
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise PlanError(f"conv {name!r} uses groups/dilation/padding mode the plan does not support")
            out = self.emit("conv2d", (x,), name, stride=tuple(m.stride), padding=tuple(m.padding), relu=False)
        elif isinstance(m, nn.Linear):
            out = self.emit("linear", (x,), name, relu=False)
        elif isinstance(m, nn.ReLU):
            out = self.emit("relu", (x,))
        elif activation_kind(m) is not None:
            kind, alpha = activation_kind(m)  # type: ignore[misc]
            out = self.emit("activation", (x,), kind=kind, alpha=alpha)
        elif isinstance(m, nn.BatchNorm2d):  # one not folded into a conv (e.g. after a ReLU): per-channel affine
            out = self.emit("affine", (x,), name)
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            if isinstance(m, nn.MaxPool2d) and m.dilation not in (1, (1, 1)):
                raise PlanError(f"max pool {name!r} uses dilation, which the plan does not support")
            if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override):
                raise PlanError(f"avg pool {name!r} uses options the plan does not support")
            op = "max_pool2d" if isinstance(m, nn.MaxPool2d) else "avg_pool2d"
            out = self.emit(op, (x,), kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                            ceil_mode=m.ceil_mode)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out = self.emit("adaptive_avg_pool2d", (x,), output_size=m.output_size)
        elif isinstance(m, nn.Flatten):
            if m.end_dim != -1:
                raise PlanError(f"flatten {name!r} must flatten to the last dim")
            out = self.emit("flatten", (x,), start_dim=m.start_dim)
        elif isinstance(m, residual_block_types()):
            out = self.block(name, m, x)
        else:
            raise PlanError(f"module {name!r} ({type(m).__name__}) is not supported by the fast path (native, "
                            "session, triton backends, bundles and ONNX export); it runs: Conv2d, Linear, BatchNorm2d, "
                            "ReLU, SiLU, GELU, LeakyReLU, Hardswish, ReLU6, Tanh, Max/AvgPool2d, AdaptiveAvgPool2d, "
                            "Flatten, Dropout, Identity and torchvision residual blocks. This model still works with "
                            "backend='eager' (the reference; every metric and the CLI use it)")
        self.mark(out, name)
        return out

    def block(self, name: str, block: nn.Module, x: int) -> int:
        from torchvision.models.resnet import Bottleneck  # imported already: `block` is a torchvision block

        convs = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
        for attr in ("bn1", "bn2", "bn3"):
            if isinstance(getattr(block, attr, None), nn.BatchNorm2d):
                raise PlanError(f"block {name!r} still has BatchNorms: canonize the model first")
        h = x
        for attr in convs[:-1]:
            h = self.module_step(f"{name}.{attr}", h)
            h = self.emit("relu", (h,))
        identity = x
        if block.downsample is not None:
            for sub, _ in block.downsample.named_children():
                identity = self.module_step(f"{name}.downsample.{sub}", identity)
        h = self.module_step(f"{name}.{convs[-1]}", h)
        return self.emit("relu", (self.emit("add", (h, identity)),))

    def function_step(self, node: fx.Node, args: list[Any]) -> int:
        if node.target in _RELU_FUNCTIONS and len(args) == 1:
            return self.emit("relu", (args[0],))
        if node.target in _ADD_FUNCTIONS and len(args) == 2 and all(isinstance(a, int) for a in args):
            return self.emit("add", tuple(args))
        if node.target is torch.flatten and len(args) == 2 and not node.kwargs:
            return self.emit("flatten", (args[0],), start_dim=args[1])
        raise PlanError(f"function {getattr(node.target, '__name__', node.target)!r} in the model's forward is "
                        "not supported by the fast path; use backend='eager' for this model")

    def build(self, graph: fx.Graph) -> int:
        env: dict[fx.Node, int] = {}
        output = None
        for node in graph.nodes:
            args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
            if node.op == "placeholder":
                env[node] = 0
            elif node.op == "call_module":
                env[node] = self.module_step(str(node.target), args[0])
            elif node.op == "call_function":
                env[node] = self.function_step(node, args)
            elif node.op == "call_method" and node.target == "flatten" and len(args) == 2:
                env[node] = self.emit("flatten", (args[0],), start_dim=args[1])
            elif node.op == "output":
                output = args[0]
            else:
                raise PlanError(f"{node.op} {node.target!r} in the model's forward is not supported by the fast "
                                "path; use backend='eager' for this model")
        if not isinstance(output, int):
            raise PlanError("the model must return one logits tensor")
        return output


def _fuse(steps: list[Step], output: int) -> list[Step]:
    """conv → relu and conv → add → relu (each intermediate read once) become one conv step."""
    reads = Counter(v for s in steps for v in s.inputs)
    reads[output] += 1
    by_output = {s.output: i for i, s in enumerate(steps)}
    consumer = {v: i for i, s in enumerate(steps) for v in s.inputs}
    dropped: set[int] = set()
    for i, s in enumerate(steps):
        if (s.op not in ("conv2d", "linear") or i in dropped or reads[s.output] != 1 or s.pathway is not None
                or s.output not in consumer):
            continue
        j = consumer[s.output]
        nxt = steps[j]
        if nxt.op == "relu":
            steps[i] = replace(s, output=nxt.output, attrs={**s.attrs, "relu": True}, pathway=nxt.pathway)
            dropped.add(j)
        elif s.op == "conv2d" and nxt.op == "add" and reads[nxt.output] == 1 and nxt.pathway is None:
            k = consumer[nxt.output]
            if steps[k].op != "relu":
                continue
            other = nxt.inputs[1] if nxt.inputs[0] == s.output else nxt.inputs[0]
            if by_output.get(other, -1) > i:  # the residual must exist before the conv runs
                continue
            steps[i] = replace(s, inputs=(s.inputs[0], other), output=steps[k].output,
                               attrs={**s.attrs, "relu": True, "residual": True}, pathway=steps[k].pathway)
            dropped.update((j, k))
    return [s for i, s in enumerate(steps) if i not in dropped]


def _annotate_masks(steps: list[Step]) -> list[Step]:
    """Which pathway mask zeroes each step's input channels, and limits its output channels."""
    zeroed: dict[int, int] = {}  # value -> the pathway layer whose removed channels are zero in it
    out = []
    for s in steps:
        in_mask = zeroed.get(s.inputs[0]) if s.op == "conv2d" else None
        if s.pathway is not None:
            zeroed[s.output] = s.pathway
        elif s.op in ZERO_PRESERVING and s.inputs[0] in zeroed:
            zeroed[s.output] = zeroed[s.inputs[0]]
        out.append(replace(s, in_mask=in_mask, out_mask=s.pathway if s.op == "conv2d" else None))
    # a conv read only as the residual of a masked conv needs only that mask's channels
    readers: dict[int, list[Step]] = {}
    for s in out:
        for v in s.inputs:
            readers.setdefault(v, []).append(s)
    for i, s in enumerate(out):
        users = readers.get(s.output, [])
        if (s.op == "conv2d" and s.out_mask is None and len(users) == 1 and users[0].attrs.get("residual")
                and users[0].inputs[1] == s.output and users[0].out_mask is not None):
            out[i] = replace(s, out_mask=users[0].out_mask)
    return out


def build_plan(model: nn.Module, spec: PathwaySpec) -> Plan:
    """Lowers a canonized eval-mode `model` with pathway layers `spec`; raises PlanError if it cannot."""
    try:
        graph = _BlockTracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable forwards
        raise PlanError(f"{type(model).__name__} cannot be traced by torch.fx ({exc}); use backend='eager'") from exc
    builder = _Builder(model, spec)
    output = builder.build(graph)
    marked = Counter(s.pathway for s in builder.steps if s.pathway is not None)
    missing = [spec.names[i] for i in range(len(spec.layers)) if marked[i] != 1]
    if missing:
        raise PlanError(f"pathway modules {missing} were not found exactly once in the traced forward")
    steps = _annotate_masks(_fuse(builder.steps, output))
    return Plan(tuple(steps), output, spec)
