"""Target architectures pathrt knows by name: torchvision's and a small VGG of our own.

All are built with random weights; trained weights come from a local file (never a hub), see
`pathrt.targets.target`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from pathrt.errors import InputError

# Widths of the embedded default's conv layers; "M" is a 2x2 max-pool.
SMALL_VGG_CFG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M", 256, "M")


class SmallVGG(nn.Module):
    """A CIFAR-style VGG for 32x32 inputs: conv3x3(+BN)+ReLU blocks, max-pools, a small classifier.

    The embedded default target (608 neurons in 5 pathway layers with the default widths).
    """

    def __init__(
        self,
        num_classes: int = 10,
        cfg: Sequence[int | str] = SMALL_VGG_CFG,
        batch_norm: bool = True,
        in_channels: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, int(item), 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(item)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_TORCHVISION: dict[str, Callable[..., nn.Module]] = {
    "alexnet": tvm.alexnet,
    **{f"vgg{d}{bn}": getattr(tvm, f"vgg{d}{bn}") for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
}

ARCHITECTURES: tuple[str, ...] = ("small_vgg", *_TORCHVISION)


def build_model(arch: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Builds `arch` (see `ARCHITECTURES`) with random weights, in eval mode.

    `kwargs` go to the constructor (e.g. `cfg` for small_vgg). torchvision models are built with
    `weights=None`: pathrt never downloads weights.
    """
    if arch == "small_vgg":
        model = SmallVGG(num_classes=num_classes, **kwargs)
    elif arch in _TORCHVISION:
        model = _TORCHVISION[arch](weights=None, num_classes=num_classes, **kwargs)
    else:
        raise InputError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}. "
                         "For another model, build it yourself and name its pathway modules "
                         "(pathrt.targets.spec_from_modules).")
    return model.eval()
