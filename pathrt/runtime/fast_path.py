"""The hook-free explain path (SPEC §8) over a lowered plan, shared by the native and triton backends.

`PlanRunner.plain` runs the canonized target step by step (no module hooks) and keeps the
pathway-layer outputs; `PlanRunner.pathway` runs the pathway pass from layer 1's captured output
(F_1 · m_1, no recompute). Each conv after it runs one of three ways (`strategy` forces one):
  * "sparse": channel-sparse per sample (`pathway_conv2d`: removed output channels never computed,
    removed input channels never read); it does mean_n(d_in · d_out) of the dense conv's FLOPs
    (d = a sample's kept fraction);
  * "union": one batched conv over the union of the batch's kept input and output channels, then
    the fused epilogue with each sample's mask; u_in · u_out of the FLOPs (u = the union's
    fraction): one-sided sparsity, e.g. inside ResNet blocks, and batches whose samples keep
    similar channels;
  * "dense": the full conv with the fused `masked_bias_relu` epilogue.
Which one runs is the policy of the plan contract (`pathrt.bundle_format.conv_strategies`: the first
strategy whose measure is at most its limit, measured break-evens in `bundle.schema.json`), which
the C++ session follows too, from its bundle.

One algebraic rewrite: adaptive average pooling that enlarges the map (VGG and AlexNet pool a
2×2 or 1×1 map at 64×64 input up to 7×7 or 6×6) followed by flatten and linear is one linear map,
so the runner folds the pool into the linear weight (computed once per input size): the same
function with up to 36× fewer multiply-adds in the first classifier layer.

The runner works in channels-last layout on CPU: oneDNN convs and especially torch's pooling are
several times faster there than in NCHW (2× for the whole embedded model's plain pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pathrt import opspec
from pathrt.bundle_format import FALLBACK_STRATEGY, STRATEGIES, StrategyRule, conv_strategies, union_runs_as_sparse
from pathrt.runtime import ops
from pathrt.targets.plan import ZERO_PRESERVING, Plan, Step, batchnorm_affine, build_plan
from pathrt.targets.spec import PathwaySpec


@dataclass(frozen=True)
class KernelSet:
    """The three fused ops a fast backend supplies (signatures of `pathrt.runtime.ops`)."""

    name: str
    daq_threshold_pack: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    masked_bias_relu: Callable[..., torch.Tensor]
    pathway_conv2d: Callable[..., torch.Tensor]


NATIVE = KernelSet("native", ops.daq_threshold_pack, ops.masked_bias_relu, ops.pathway_conv2d)


def _reference_masked_bias_relu(x: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                                inplace: bool = False, fill: torch.Tensor | None = None) -> torch.Tensor:
    return opspec.masked_bias_relu_math(x, bias, mask, fill)  # out of place, any float dtype: traceable, exportable


def _reference_pathway_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                              residual: torch.Tensor | None = None, in_mask: torch.Tensor | None = None,
                              out_mask: torch.Tensor | None = None, stride: tuple[int, int] = (1, 1),
                              padding: tuple[int, int] = (0, 0), relu: bool = False) -> torch.Tensor:
    return opspec.pathway_conv2d_reference(x, weight, bias, residual, in_mask, out_mask, list(stride), list(padding),
                                        relu)


# The plain-PyTorch references as a kernel set: with strategy="dense" (no per-batch choice) the runner is
# made of standard torch ops alone, which is what ONNX export traces.
REFERENCE = KernelSet("reference", opspec.daq_threshold_pack_reference, _reference_masked_bias_relu,
                      _reference_pathway_conv2d)


# The plan's elementwise activations (`kind`, `alpha`: LeakyReLU's slope), as the C++ session runs them.
ACTIVATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "silu": lambda x, _: F.silu(x),
    "gelu": lambda x, _: F.gelu(x),
    "gelu_tanh": lambda x, _: F.gelu(x, approximate="tanh"),
    "leaky_relu": F.leaky_relu,
    "hardswish": lambda x, _: F.hardswish(x),
    "relu6": lambda x, _: F.relu6(x),
    "tanh": lambda x, _: torch.tanh(x),
}


def _ends_in_relu(step: Step) -> bool:
    return step.op == "relu" or bool(step.attrs.get("relu"))


class PlanRunner:
    """Runs a target's plan: the plain pass with capture, and the channel-sparse pathway pass."""

    def __init__(self, model: nn.Module, spec: PathwaySpec, kernels: KernelSet = NATIVE,
                 policy: tuple[StrategyRule, ...] | None = None, channels_last: bool = True,
                 strategy: str | None = None, plan: Plan | None = None) -> None:
        """`policy`: the conv-strategy rules (default: the contract's for the model's device);
        `strategy`: force one of STRATEGIES for every masked conv (None: choose per batch);
        `plan`: the model's plan when the caller lowered it already."""
        self.plan: Plan = plan if plan is not None else build_plan(model, spec)
        self.kernels = kernels
        self.strategy = strategy
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        modules = dict(model.named_modules())
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.conv_weights: dict[str, torch.Tensor] = {}  # in the runner's layout, for the dense convs
        for step in self.plan.steps:
            if step.op == "affine":  # a BatchNorm2d as its per-channel scale and shift
                self.weights[step.module] = batchnorm_affine(modules[step.module])  # type: ignore[index]
            elif step.module is not None:
                m = modules[step.module]
                bias = m.bias.detach() if m.bias is not None else None
                self.weights[step.module] = (m.weight.detach().contiguous(), bias)
                if step.op == "conv2d":
                    self.conv_weights[step.module] = m.weight.detach().contiguous(memory_format=self.memory_format)
        device = next(iter(self.weights.values()))[0].device if self.weights else torch.device("cpu")
        self.device_type = device.type
        self.policy = policy if policy is not None else conv_strategies(device.type)
        self.first = self.plan.pathway_steps[0]
        self.last_read = {v: i for i, s in enumerate(self.plan.steps) for v in s.inputs}
        self.skip: set[int] = set()
        self.folded_pools: dict[str, Step] = {}  # linear module -> the adaptive pool folded into it
        self._folded: dict[tuple[str, int, int], torch.Tensor] = {}
        self.shapes = self._shapes(spec.input_shape)  # of every value, for one input of the spec's size
        self._find_pool_folds(self.shapes)
        self.resume, self.chain = self._unmasked_chain()
        self.saved = self.plan.values_needed_after(self.resume - 1)

    def pathway_flops(self, kept: list[float]) -> float:
        """Predicted FLOPs of one image's pathway pass when layer l keeps the fraction kept[l] of its
        channels: each conv after layer 1 costs its dense FLOPs × kept(in) × kept(out) (what the
        channel-sparse kernel computes), linears their dense FLOPs (after pool folding)."""
        return sum(self._step_flops(i, kept) for i in range(self.resume, len(self.plan.steps)))

    def steps_flops(self, start: int) -> float:
        """FLOPs per image of the plan's steps from `start` on, dense, as they run (folded pools: the
        linear's folded weight, as the bundle stores it)."""
        return sum(self._step_flops(i) for i in range(start, len(self.plan.steps)))

    def _step_flops(self, i: int, kept: list[float] | None = None) -> float:
        """Step i's FLOPs per image: a conv's dense FLOPs × kept(in) × kept(out) (1 without `kept`), a
        linear's after pool folding; 0 for the rest and for steps folded away."""
        step = self.plan.steps[i]
        if step.op == "conv2d":
            fraction = 1.0 if kept is None else \
                (kept[step.in_mask] if step.in_mask is not None else 1.0) * \
                (kept[step.out_mask] if step.out_mask is not None else 1.0)
            weight = self.weights[step.module][0]  # type: ignore[index]
            return 2.0 * weight[0].numel() * math.prod(self.shapes[step.output][1:]) * fraction
        if step.op == "linear" and i not in self.skip:
            weight = self.weights[step.module][0]  # type: ignore[index]
            pool = self.folded_pools.get(step.module)  # type: ignore[arg-type]
            inputs = math.prod(self.shapes[pool.inputs[0]][1:]) if pool is not None else weight.shape[1]
            return 2.0 * weight.shape[0] * inputs
        return 0.0

    def _unmasked_chain(self) -> tuple[int, set[int]]:
        """Where the pathway pass starts, and the plain-pass values it reuses before masking.

        Channel masks commute with per-channel ops (relu, pools): pool(F_1) · m_1 = pool(F_1 · m_1).
        So the pathway pass reuses the plain pass's values from layer 1's output up to the next
        conv, and masks them only where a consumer needs it: a channel-sparse conv reads only the
        kept channels and needs no masking at all.
        """
        chain = {self.plan.steps[self.first].output}
        i = self.first + 1
        while (i < len(self.plan.steps) and i not in self.skip and self.plan.steps[i].pathway is None
               and self.plan.steps[i].op in ZERO_PRESERVING
               and self.plan.steps[i].inputs[0] in chain):
            chain.add(self.plan.steps[i].output)
            i += 1
        return i, chain

    def to_dtype(self, dtype: torch.dtype) -> PlanRunner:
        """Casts the runner's weights (and folded classifier weights) to `dtype`, e.g. float16 for export."""
        self.weights = {k: (w.to(dtype), b.to(dtype) if b is not None else None) for k, (w, b) in self.weights.items()}
        self.conv_weights = {k: w.to(dtype) for k, w in self.conv_weights.items()}
        self._folded = {k: w.to(dtype) for k, w in self._folded.items()}
        return self

    def _shapes(self, input_shape: tuple[int, int, int]) -> dict[int, tuple[int, ...]]:
        """Shape of every value for one input of the spec's size (a dry run on zeros)."""
        param = next(iter(self.weights.values()))[0]
        values = {0: torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)}
        with torch.no_grad():
            for step in self.plan.steps:
                values[step.output] = self._dense(step, values)
        return {v: tuple(t.shape) for v, t in values.items()}

    def _find_pool_folds(self, shapes: dict[int, tuple[int, ...]]) -> None:
        """Folds adaptive pool → flatten → linear chains whose pool enlarges the map (see the docstring)."""
        steps = self.plan.steps
        readers: dict[int, list[int]] = {}
        for i, s in enumerate(steps):
            for v in s.inputs:
                readers.setdefault(v, []).append(i)
        for i, pool in enumerate(steps):
            if pool.op != "adaptive_avg_pool2d" or pool.pathway is not None or len(readers.get(pool.output, [])) != 1:
                continue
            j = readers[pool.output][0]
            flat = steps[j]
            if flat.op != "flatten" or flat.attrs["start_dim"] != 1 or len(readers.get(flat.output, [])) != 1:
                continue
            k = readers[flat.output][0]
            h, w = shapes[pool.inputs[0]][-2:]
            if steps[k].op != "linear" or i <= self.first or h * w >= math.prod(shapes[pool.output][-2:]):
                continue
            self.skip.update((i, j))
            self.folded_pools[steps[k].module] = pool  # type: ignore[index]
            self.last_read[pool.inputs[0]] = k

    def folded_linear_weight(self, module: str) -> torch.Tensor:
        """The weight of a folded pool → flatten → linear chain for inputs of the spec's size."""
        pool_input = self.shapes[self.folded_pools[module].inputs[0]]
        return self._linear_weight(module, torch.empty(pool_input, device="meta"))

    def _linear_weight(self, module: str, x: torch.Tensor) -> torch.Tensor:
        """The linear weight, or for a folded pool → flatten → linear chain W·P for x's spatial size."""
        weight = self.weights[module][0]
        if module not in self.folded_pools:
            return weight
        h, w = x.shape[-2:]
        key = (module, h, w)
        if key not in self._folded:
            basis = torch.eye(h * w, dtype=weight.dtype, device=weight.device).view(h * w, 1, h, w)
            output_size = self.folded_pools[module].attrs["output_size"]
            pool = F.adaptive_avg_pool2d(basis, output_size).flatten(1)  # (h*w, oh*ow)
            channels = x.shape[1]
            folded = weight.view(weight.shape[0], channels, -1) @ pool.T  # (out, C, h*w)
            self._folded[key] = folded.reshape(weight.shape[0], channels * h * w).contiguous()
        return self._folded[key]

    def _dense(self, step: Step, values: dict[int, torch.Tensor]) -> torch.Tensor:
        x = values.get(step.inputs[0])  # absent only for the linear of a folded pool chain
        a = step.attrs
        if step.op in ("conv2d", "linear"):
            weight, bias = self.weights[step.module]  # type: ignore[index]
            if step.op == "conv2d":
                y = F.conv2d(x, self.conv_weights[step.module], bias, a["stride"], a["padding"])  # type: ignore[index]
            elif step.module in self.folded_pools:
                pooled_from = values[self.folded_pools[step.module].inputs[0]]  # type: ignore[index]
                y = F.linear(pooled_from.flatten(1), self._linear_weight(step.module, pooled_from), bias)
            else:
                y = F.linear(x, weight, bias)
            if a.get("residual"):
                y.add_(values[step.inputs[1]])
            return y.relu_() if a.get("relu") else y
        if step.op == "relu":
            return torch.relu(x)
        if step.op == "activation":
            return ACTIVATIONS[a["kind"]](x, a["alpha"])
        if step.op == "affine":
            scale, shift = self.weights[step.module]  # type: ignore[index]
            return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        if step.op == "max_pool2d":
            return F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"])
        if step.op == "avg_pool2d":
            return F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"])
        if step.op == "adaptive_avg_pool2d":
            return F.adaptive_avg_pool2d(x, a["output_size"])
        if step.op == "flatten":
            return torch.flatten(x, a["start_dim"])
        if step.op == "add":
            return x + values[step.inputs[1]]
        raise AssertionError(f"unknown plan op {step.op}")  # build_plan emits only the ops above

    def _forget(self, index: int, values: dict[int, torch.Tensor], keep: set[int]) -> None:
        for v in self.plan.steps[index].inputs:
            if self.last_read.get(v) == index and v not in keep:
                values.pop(v, None)

    def plain(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, torch.Tensor]]:
        """Logits, pathway-layer features (spec order) and the values the pathway pass reuses."""
        values = {0: x.contiguous(memory_format=self.memory_format)}
        features: list[torch.Tensor] = [x] * len(self.plan.spec.layers)
        keep = self.saved | {self.plan.output}
        for i, step in enumerate(self.plan.steps):
            if i in self.skip:
                continue
            values[step.output] = self._dense(step, values)
            if step.pathway is not None:
                features[step.pathway] = values[step.output]
            self._forget(i, values, keep)
        return values[self.plan.output], features, {v: values[v] for v in self.saved}

    def _mask(self, step: Step, y: torch.Tensor, mask: torch.Tensor, fresh: bool,
              fill: torch.Tensor | None = None) -> torch.Tensor:
        if _ends_in_relu(step):  # relu(y) = y, so the fused epilogue only masks
            return self.kernels.masked_bias_relu(y, None, mask, inplace=fresh, fill=fill)
        if fill is None:
            return y * mask[:, :, None, None].to(y.dtype)
        return torch.where(mask[:, :, None, None], y, opspec.removed_value(y, fill))

    def _choose(self, step: Step, stats: _MaskStats) -> str:
        """The conv strategy for this step and these masks: the policy's first rule whose measure is
        at most its limit (see the module docstring), else the fallback."""
        if step.in_mask is None and step.out_mask is None:
            return FALLBACK_STRATEGY
        if self.strategy is not None:
            if self.strategy not in STRATEGIES:
                raise ValueError(f"unknown conv strategy {self.strategy!r}; use None or one of {STRATEGIES}")
            return self.strategy
        pixels = stats.batch * math.prod(self.shapes[step.output][2:])
        for rule in self.policy:
            if pixels >= rule.min_batch_pixels and stats.measure(rule.measure, step) <= rule.limit:
                # (sparse also when nothing is kept: the sparse kernel handles empty sets). Union runs as sparse
                # at one sample (the same channels, one weight gather instead of three copies) and, on CPU, on
                # a few pixels (the bundle_format.UNION_AS_SPARSE_MAX_PIXELS rule)
                if rule.name == "union" and union_runs_as_sparse(self.device_type, stats.batch, pixels):
                    return "sparse"
                return rule.name
        return FALLBACK_STRATEGY

    def _conv(self, step: Step, values: dict[int, torch.Tensor], masks: list[torch.Tensor], stats: _MaskStats,
              clean: Callable[[int], None]) -> torch.Tensor:
        weight, bias = self.weights[step.module]  # type: ignore[index]
        a = step.attrs
        in_mask = masks[step.in_mask] if step.in_mask is not None else None
        out_mask = masks[step.out_mask] if step.out_mask is not None else None
        strategy = self._choose(step, stats)
        if strategy != "sparse" or in_mask is None:  # only a sparse conv skips the removed input channels itself
            clean(step.inputs[0])
        if a.get("residual"):
            clean(step.inputs[1])
        residual = values[step.inputs[1]] if a.get("residual") else None
        x = values[step.inputs[0]]
        if strategy == "sparse":
            return self.kernels.pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, a["stride"],
                                               a["padding"], bool(a["relu"]))
        if strategy == "union":
            return self._union_conv(step, x, residual, masks, stats)
        return self._dense_conv(step, values, masks)

    def _dense_conv(self, step: Step, values: dict[int, torch.Tensor], masks: list[torch.Tensor],
                    fill: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The full conv, then the fused epilogue (bias, ReLU, the layer's mask; removed channels 0 or fill)."""
        a = step.attrs
        layer_fill = fill[step.pathway] if fill is not None and step.pathway is not None else None
        if step.pathway is not None and a["relu"]:
            y = F.conv2d(values[step.inputs[0]], self.conv_weights[step.module], None,  # type: ignore[index]
                         a["stride"], a["padding"])
            if a.get("residual"):
                y.add_(values[step.inputs[1]])
            return self.kernels.masked_bias_relu(y, self.weights[step.module][1],  # type: ignore[index]
                                                 masks[step.pathway], inplace=True, fill=layer_fill)
        y = self._dense(step, values)
        return self._mask(step, y, masks[step.pathway], True, layer_fill) if step.pathway is not None else y

    def _union_conv(self, step: Step, x: torch.Tensor, residual: torch.Tensor | None, masks: list[torch.Tensor],
                    stats: _MaskStats) -> torch.Tensor:
        """One batched conv over the union of the batch's kept channels, scattered back into place."""
        weight, bias = self.weights[step.module]  # type: ignore[index]
        a = step.attrs
        keep_in, keep_out = stats.union(step.in_mask), stats.union(step.out_mask)
        if keep_in is not None:
            x, weight = x.index_select(1, keep_in), weight.index_select(1, keep_in)
        if keep_out is not None:
            weight = weight.index_select(0, keep_out)
            bias = bias.index_select(0, keep_out) if bias is not None else None
            residual = residual.index_select(1, keep_out) if residual is not None else None
        y = F.conv2d(x, weight.contiguous(memory_format=self.memory_format), None, a["stride"], a["padding"])
        if residual is not None:
            y.add_(residual)
        if step.pathway is not None and a["relu"]:
            mask = masks[step.pathway]
            y = self.kernels.masked_bias_relu(y, bias, mask if keep_out is None else mask.index_select(1, keep_out),
                                              inplace=y.is_contiguous())
        else:
            if bias is not None:
                y.add_(bias[:, None, None])
            if a["relu"]:
                y.relu_()
            if step.pathway is not None:
                mask = masks[step.pathway] if keep_out is None else masks[step.pathway].index_select(1, keep_out)
                y = y * mask[:, :, None, None].to(y.dtype)
        if keep_out is None:
            return y
        channels = self.weights[step.module][0].shape[0]  # type: ignore[index]
        out = y.new_zeros((y.shape[0], channels, *y.shape[2:])).contiguous(memory_format=self.memory_format)
        return out.index_copy_(1, keep_out, y)

    def pathway(self, saved: dict[int, torch.Tensor], features: list[torch.Tensor],
                masks: list[torch.Tensor], fill: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of H(x; m) for per-layer bool masks (N, C_l), from the plain pass's outputs. `fill`:
        per-layer values (C_l,) that removed channels hold instead of 0 (mean ablation)."""
        if fill is not None:
            return self._filled_pathway(saved, features, masks, fill)
        values = dict(saved)
        first = self.plan.steps[self.first]
        dirty = self.chain & set(values)  # plain-pass values still waiting for layer 1's mask

        def clean(value: int) -> None:
            if value in dirty:
                values[value] = self._mask(first, values[value], masks[0], fresh=False)
                dirty.discard(value)

        stats = _MaskStats(masks)

        keep = {self.plan.output}
        if self.plan.output in dirty:  # a model that ends in its first pathway layer's chain
            clean(self.plan.output)
        for i in range(self.resume, len(self.plan.steps)):
            step = self.plan.steps[i]
            if i in self.skip:
                continue
            if step.op == "conv2d":
                y = self._conv(step, values, masks, stats, clean)
            else:
                for v in step.inputs:
                    clean(v)
                y = self._dense(step, values)
                if step.pathway is not None:
                    y = self._mask(step, y, masks[step.pathway], fresh=step.op != "flatten")
            values[step.output] = y
            self._forget(i, values, keep)
        return values[self.plan.output]


    def _filled_pathway(self, saved: dict[int, torch.Tensor], features: list[torch.Tensor],
                        masks: list[torch.Tensor], fill: list[torch.Tensor]) -> torch.Tensor:
        """The pathway pass when removed channels hold fill values (mean ablation). A removed input
        channel is then read (it holds its fill), so every masked conv runs dense with the fill in
        its fused epilogue; and the plain-pass values after layer 1 are recomputed from the filled
        layer-1 output (a pool of a constant channel is that constant only away from padding)."""
        first = self.plan.steps[self.first]
        values = dict(saved)
        values[first.output] = self._mask(first, features[0], masks[0], False, fill[0])
        keep = {self.plan.output}
        for i in range(self.first + 1, len(self.plan.steps)):
            step = self.plan.steps[i]
            if i in self.skip:
                continue
            if step.op == "conv2d":
                y = self._dense_conv(step, values, masks, fill)
            else:
                y = self._dense(step, values)
                if step.pathway is not None:
                    y = self._mask(step, y, masks[step.pathway], step.op != "flatten", fill[step.pathway])
            values[step.output] = y
            self._forget(i, values, keep)
        return values[self.plan.output]


class _MaskStats:
    """Per-layer statistics of one batch's masks, computed on first use: each sample's kept fraction,
    and the union of kept channels over the batch (None when it is every channel)."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        self.masks = masks
        self._density: dict[int, torch.Tensor] = {}
        self._union: dict[int, torch.Tensor | None] = {}

    @property
    def batch(self) -> int:
        """The number of samples (read only when a strategy is chosen: reading it while torch.export
        traces would fix the batch size of the exported graph)."""
        return self.masks[0].shape[0]

    def density(self, layer: int | None) -> torch.Tensor:
        if layer is None:
            return torch.ones(())
        if layer not in self._density:
            self._density[layer] = self.masks[layer].float().mean(1).cpu()
        return self._density[layer]

    def union(self, layer: int | None) -> torch.Tensor | None:
        if layer is None:
            return None
        if layer not in self._union:
            kept = self.masks[layer].any(0).nonzero().squeeze(1)
            self._union[layer] = None if len(kept) == self.masks[layer].shape[1] else kept
        return self._union[layer]

    def measure(self, name: str, step: Step) -> float:
        """A measure of the strategy policy (`bundle.schema.json`) for one conv step."""
        if name == "mean_kept_product":
            return float((self.density(step.in_mask) * self.density(step.out_mask)).mean())
        if name == "union_kept_product":
            return self.union_fraction(step.in_mask) * self.union_fraction(step.out_mask)
        raise ValueError(f"unknown strategy measure {name!r} (the plan contract names {name!r}: update pathrt)")

    def union_fraction(self, layer: int | None) -> float:
        kept = self.union(layer)
        return 1.0 if kept is None else len(kept) / self.masks[layer].shape[1]  # type: ignore[index]
