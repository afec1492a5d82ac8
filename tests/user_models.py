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
    model = TinyNet(classes, width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()
