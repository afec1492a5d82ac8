"""Canonization (SPEC §2): fold each BatchNorm that directly follows a conv/linear into that layer.

With s = γ / sqrt(σ² + ε): W' = s·W per output channel, b' = (b − μ)·s + β, and the BN becomes
an identity. Reversible: `BatchNormFolding(model).apply()` returns an object whose `remove()`
restores the original parameters and modules; `canonized(model)` does both as a context manager
(restoring also after an exception). Pairs are found on the torch.fx graph (a BN whose only input
is a conv/linear output that nothing else reads); models fx cannot trace fall back to adjacent
pairs inside nn.Sequential containers.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pathrt.errors import CanonizationError

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class _Fold:
    layer: nn.Module
    parent: nn.Module
    attr: str
    bn: _BatchNorm
    weight: nn.Parameter
    bias: nn.Parameter | None


def _split(name: str) -> tuple[str, str]:
    parent, _, attr = name.rpartition(".")
    return parent, attr


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules[src.target], _FOLDABLE)
            and len(src.users) == 1
            and uses[src.target] == 1
            and uses[node.target] == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if isinstance(a, _FOLDABLE) and isinstance(b, _BatchNorm):
                prefix = f"{seq_name}." if seq_name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) module-name pairs that can be folded in `model`."""
    try:
        return _pairs_from_fx(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow; fall back, say so
        pairs = _pairs_from_sequentials(model)
        warnings.warn(f"torch.fx could not trace {type(model).__name__} ({exc}); folding only BatchNorms "
                      f"adjacent to a conv/linear inside nn.Sequential ({len(pairs)} found)", stacklevel=2)
        return pairs


def batchnorm_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = x·scale + shift per channel (float64), with s = γ / sqrt(σ² + ε)
    and shift = β − μ·s; CanonizationError if it keeps no running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise CanonizationError(f"{bn} keeps no running statistics (track_running_stats=False); it "
                                "normalizes with batch statistics, which pathrt cannot fold or run as an affine step")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _fold_values(layer: nn.Module, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise CanonizationError(f"{bn} has {bn.num_features} features but {layer} has {out_channels} outputs")
    scale, shift = batchnorm_scale_shift(bn)
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    weight = w * scale.view(-1, *([1] * (w.dim() - 1)))
    bias = b * scale + shift
    return weight.to(layer.weight.dtype), bias.to(layer.weight.dtype)


class BatchNormFolding:
    """Folds BatchNorms into their preceding conv/linear layers, reversibly (see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._folds: list[_Fold] = []

    @property
    def folded(self) -> int:
        """How many BatchNorms are currently folded."""
        return len(self._folds)

    def apply(self) -> BatchNormFolding:
        if self._folds:
            raise CanonizationError("this BatchNormFolding is already applied; call remove() first")
        if self.model.training:
            raise CanonizationError("canonization needs eval mode (BatchNorm must use running statistics); "
                                    "call model.eval() first")
        modules = dict(self.model.named_modules())
        try:
            for layer_name, bn_name in foldable_pairs(self.model):
                layer, bn = modules[layer_name], modules[bn_name]
                weight, bias = _fold_values(layer, bn)
                parent_name, attr = _split(bn_name)
                fold = _Fold(layer, modules[parent_name], attr, bn, layer.weight, layer.bias)
                layer.weight = nn.Parameter(weight, requires_grad=fold.weight.requires_grad)
                layer.bias = nn.Parameter(bias, requires_grad=fold.weight.requires_grad)
                setattr(fold.parent, attr, nn.Identity())
                self._folds.append(fold)
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Restores every folded layer's original parameters and its BatchNorm module."""
        while self._folds:
            fold = self._folds.pop()
            fold.layer.weight = fold.weight
            fold.layer.bias = fold.bias
            setattr(fold.parent, fold.attr, fold.bn)


def canonize(model: nn.Module) -> BatchNormFolding:
    """Folds `model`'s BatchNorms in place; keep the result to undo it with `.remove()`."""
    return BatchNormFolding(model).apply()


def canonized_copy(model: nn.Module) -> nn.Module:
    """A frozen, canonized deep copy of `model` in eval mode (the model the explain path runs)."""
    clone = copy.deepcopy(model).eval()
    canonize(clone)
    return clone.requires_grad_(False)


@contextmanager
def canonized(model: nn.Module) -> Iterator[BatchNormFolding]:
    """Context manager: `model` is canonized inside the block and restored after it, always."""
    folding = BatchNormFolding(model).apply()
    try:
        yield folding
    finally:
        folding.remove()
