"""Pathway-layer specs for torchvision architectures, the small VGG and user-named modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pathrt.errors import SpecError
from pathrt.targets import PathwaySpec, build_model, build_spec, spec_from_modules


@pytest.mark.parametrize(
    ("arch", "size", "layers", "neurons"),
    [
        ("small_vgg", 32, 5, 608),
        ("alexnet", 64, 5, 1152),
        ("vgg11", 32, 8, 2752),
        ("vgg11_bn", 32, 8, 2752),
        ("vgg13", 32, 10, 2944),
        ("vgg16_bn", 32, 13, 4224),
        ("vgg19", 32, 16, 5504),
        ("resnet18", 32, 8, 1920),
        ("resnet34", 32, 16, 3776),
        ("resnet50", 32, 16, 15104),
    ],
)
def test_default_specs(arch: str, size: int, layers: int, neurons: int) -> None:
    model = build_model(arch, num_classes=10)
    spec = build_spec(model, (3, size, size))
    assert len(spec.layers) == layers
    assert spec.total_channels == neurons  # SPEC §1: VGG-16 4,224, AlexNet 1,152, ResNet-50 15,104
    assert spec.rule == ("residual-block" if arch.startswith("resnet") else "conv-relu")
    modules = dict(model.named_modules())
    for layer in spec.layers:
        expected_type = nn.ReLU if spec.rule == "conv-relu" else nn.Module
        assert isinstance(modules[layer.name], expected_type)
    assert PathwaySpec.from_dict(spec.to_dict()) == spec


def test_spatial_sizes_are_measured() -> None:
    spec = build_spec(build_model("small_vgg", 10), (3, 32, 32))
    assert [(lay.height, lay.width) for lay in spec.layers] == [(32, 32), (16, 16), (8, 8), (8, 8), (4, 4)]
    assert spec.offsets == (0, 32, 96, 224, 352, 608)


def test_user_named_modules_in_execution_order() -> None:
    model = build_model("resnet18", 10)
    spec = spec_from_modules(model, ["layer2", "layer1.1.conv2", "layer3"], (3, 32, 32))
    assert spec.names == ("layer1.1.conv2", "layer2", "layer3")
    assert spec.channels == (64, 128, 256) and spec.rule == "user"


def test_user_spec_errors() -> None:
    model = build_model("resnet18", 10)
    with pytest.raises(SpecError, match="no module named"):
        spec_from_modules(model, ["layer9"], (3, 32, 32))
    with pytest.raises(SpecError, match="runs 2 times"):
        spec_from_modules(model, ["layer1.0.relu"], (3, 32, 32))  # torchvision reuses this ReLU
    with pytest.raises(SpecError, match=r"\(N, C, H, W\)"):
        spec_from_modules(model, ["fc"], (3, 32, 32))
    with pytest.raises(SpecError, match="no conv->ReLU"):
        build_spec(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 2, 2))


def test_split_flat_masks() -> None:
    spec = build_spec(build_model("small_vgg", 10), (3, 32, 32))
    flat = torch.arange(2 * 608).view(2, 608)
    parts = spec.split(flat)
    assert [p.shape[1] for p in parts] == list(spec.channels)
    assert torch.equal(torch.cat(parts, 1), flat)
