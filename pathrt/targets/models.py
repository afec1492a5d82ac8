"""Target architectures pathrt knows by name: torchvision's, a small VGG of our own, and user
factories named `package.module:function`.

All are built with random weights; trained weights come from a local file (never a hub), see
`pathrt.targets.target`. A user's model is rebuilt by importing its factory: an `nn.Module`
subclass, or a function marked with `@model_factory`. Only those are called, with the JSON
keyword arguments the target recorded, so a target file can name code to build a model but not
make pathrt call an arbitrary function.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from pathrt.errors import InputError


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU generator seeded with `seed` inside, restored after: random weights made inside are the
    same in every process and run, and the caller's own random stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


# Constructors in torchvision.models, imported when one is built (pathrt.targets.spec says why).
_TORCHVISION: tuple[str, ...] = ("alexnet", *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
                                 "resnet18", "resnet34", "resnet50")

ARCHITECTURES: tuple[str, ...] = ("small_vgg", *_TORCHVISION)


_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_FACTORY = re.compile(f"{_DOTTED}:{_DOTTED}")  # package.module:function (or Class, or Class.method)
F = TypeVar("F", bound=Callable[..., nn.Module])


def model_factory(function: F) -> F:
    """Marks `function` (keyword arguments -> an nn.Module with random weights) as one pathrt may call
    to rebuild a saved target: `pathrt.wrap_model(..., factory="package.module:function")`."""
    function.__pathrt_factory__ = True  # type: ignore[attr-defined]
    return function


def is_factory(arch: str) -> bool:
    """True for a user factory name (`package.module:function`), False for a built-in architecture."""
    return ":" in arch


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The callable `package.module:attribute` names; InputError (with the fix) when it cannot be
    imported or is neither an nn.Module subclass nor marked with `@model_factory`."""
    if not _FACTORY.fullmatch(name):
        raise InputError(f"{name[:200]!r} is not a model factory name; write it as 'package.module:function'")
    module_name, _, attribute = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import the model factory {name!r} ({exc}); install the package that defines it or "
                         "put its folder on PYTHONPATH, then run again") from exc
    if not (isinstance(found, type) and issubclass(found, nn.Module)) and not getattr(found, "__pathrt_factory__",
                                                                                  False):
        raise InputError(f"{name!r} is neither an nn.Module class nor a function marked with "
                         "@pathrt.model_factory; pathrt calls only those to rebuild a model")
    return found


def build_factory(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model the user factory `name` builds from `kwargs`, in eval mode (see `import_factory`)."""
    model = import_factory(name)(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(f"the model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def build_model(arch: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Builds `arch` (see `ARCHITECTURES`) with random weights, in eval mode.

    `kwargs` go to the constructor (e.g. `cfg` for small_vgg). torchvision models are built with
    `weights=None`: pathrt never downloads weights. User factories: `build_factory`.
    """
    if is_factory(arch):
        return build_factory(arch, {"num_classes": num_classes, **kwargs})
    if arch == "small_vgg":
        model = SmallVGG(num_classes=num_classes, **kwargs)
    elif arch in _TORCHVISION:
        from torchvision import models

        model = getattr(models, arch)(weights=None, num_classes=num_classes, **kwargs)
    else:
        raise InputError(f"unknown architecture {arch[:100]!r}; known: {', '.join(ARCHITECTURES)}. For your own "
                         "model, wrap it with pathrt.wrap_model(model, ..., factory='package.module:function') "
                         "(see 'Explain your own model' in the README)")
    return model.eval()
