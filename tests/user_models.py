"""Models as a user writes them, outside pathrt, for the user-model tests and the README walkthrough
check: a factory marked `@pathrt.model_factory`, a class that builds itself without arguments, and
a model that neither rebuilds (explainable in memory only)."""

from __future__ import annotations

import torch
from torch import nn

import pathrt


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """Conv-BN-ReLU blocks with max-pools and a two-layer head; 3x32x32 input, `classes` logits."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(Block(3, width), nn.MaxPool2d(2), Block(width, 2 * width), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 64, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pathrt.model_factory
def tiny_net(classes: int = 4, width: int = 8) -> nn.Module:
    return TinyNet(classes, width)


def not_a_factory(classes: int = 4) -> nn.Module:
    return TinyNet(classes)


def random_tiny_net(seed: int = 0, classes: int = 4, width: int = 8) -> TinyNet:
    """A TinyNet with seeded random weights and BatchNorm statistics (so BN is not the identity)."""
    torch.manual_seed(seed)
    return randomize_batchnorms(TinyNet(classes, width), seed)  # type: ignore[return-value]


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(0.1),
               "hardswish": nn.Hardswish}


class KerasStyleNet(nn.Module):
    """conv -> activation -> BatchNorm blocks (BN after the activation, as models exported from Keras
    have), dropout, max pools and dense layers; 3x32x32 input."""

    def __init__(self, classes: int = 4, activation: str = "relu") -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), act(), nn.BatchNorm2d(8), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), act(), nn.Dropout2d(0.2), nn.BatchNorm2d(16), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3), act(), nn.BatchNorm2d(16))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 6 * 6, 32), act(), nn.Dropout(0.3),
                                        nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded BatchNorm statistics and affine parameters far from the identity (shifts matter)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return model.eval()
