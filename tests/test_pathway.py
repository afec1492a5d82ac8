"""Feature capture and the pathway forward: exactness, hand-computed masking, hook hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pathrt.errors import InputError, SpecError
from pathrt.targets import build_model, build_spec, capture_features, count_hooks, pathway_forward, spec_from_modules
from tests.conftest import randomize_batchnorms

CASES = [("small_vgg", 32), ("alexnet", 64), ("vgg11_bn", 32), ("resnet18", 32)]


def _target(arch: str, size: int):
    model = randomize_batchnorms(build_model(arch, num_classes=10)).eval()
    return model, build_spec(model, (3, size, size))


@pytest.mark.parametrize(("arch", "size"), CASES)
@torch.no_grad()
def test_all_ones_masks_equal_plain_forward_exactly(arch: str, size: int) -> None:
    model, spec = _target(arch, size)
    x = torch.randn(3, 3, size, size)
    plain = model(x)
    capture = capture_features(model, spec, x)
    assert torch.equal(capture.logits, plain)
    assert [tuple(f.shape) for f in capture.features] == [(3, la.channels, la.height, la.width) for la in spec.layers]
    for masks in (torch.ones(3, spec.total_channels, dtype=torch.bool),
                  [torch.ones(1, c) for c in spec.channels]):
        assert torch.equal(pathway_forward(model, spec, x, masks), plain)
    assert count_hooks(model) == 0


def _manual_small_vgg(model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor], names: tuple[str, ...]):
    """SmallVGG's forward written out by hand, zeroing removed channels after each pathway ReLU."""
    layer = 0
    for name, module in model.features.named_children():
        x = module(x)
        if f"features.{name}" in names:
            x = x.clone()
            x[~masks[layer][:, :, None, None].expand_as(x)] = 0
            layer += 1
    return model.classifier(torch.flatten(model.avgpool(x), 1))


def _manual_resnet(model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """torchvision ResNet's forward written out by hand, zeroing removed channels of each block."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    layer = 0
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            x = block(x) * masks[layer][:, :, None, None].float()
            layer += 1
    return model.fc(torch.flatten(model.avgpool(x), 1))


@torch.no_grad()
def test_random_masks_equal_hand_zeroed_forward_small_vgg() -> None:
    model, spec = _target("small_vgg", 32)
    x = torch.randn(5, 3, 32, 32)
    masks = [torch.rand(5, c) > 0.5 for c in spec.channels]
    expected = _manual_small_vgg(model, x, masks, spec.names)
    torch.testing.assert_close(pathway_forward(model, spec, x, masks), expected, rtol=0, atol=0)
    as_uint8 = [m.to(torch.uint8) * 7 for m in masks]  # uint8: nonzero means kept, not a scale
    torch.testing.assert_close(pathway_forward(model, spec, x, as_uint8), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, model(x))  # the masks matter


@torch.no_grad()
def test_random_masks_equal_hand_zeroed_forward_resnet18() -> None:
    model, spec = _target("resnet18", 32)
    x = torch.randn(4, 3, 32, 32)
    flat = torch.rand(4, spec.total_channels) > 0.3
    expected = _manual_resnet(model, x, spec.split(flat))
    torch.testing.assert_close(pathway_forward(model, spec, x, flat), expected, rtol=0, atol=0)


@torch.no_grad()
def test_per_sample_masks_are_independent() -> None:
    model, spec = _target("small_vgg", 32)
    x = torch.randn(4, 3, 32, 32)
    flat = torch.rand(4, spec.total_channels) > 0.5
    batched = pathway_forward(model, spec, x, flat)
    singles = torch.cat([pathway_forward(model, spec, x[i:i + 1], flat[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles)


def test_float_masks_carry_gradients_through_inplace_relu() -> None:
    model, spec = _target("vgg11_bn", 32)  # torchvision VGG uses ReLU(inplace=True)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    soft = torch.full((2, spec.total_channels), 0.7, requires_grad=True)
    logits = pathway_forward(model, spec, torch.randn(2, 3, 32, 32), soft)
    logits[:, 0].sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert count_hooks(model) == 0


@pytest.mark.parametrize(("arch", "size"), CASES)
def test_hooks_removed_after_exceptions(arch: str, size: int) -> None:
    model, spec = _target(arch, size)
    before = count_hooks(model)
    with pytest.raises(InputError):  # wrong mask width, detected before hooks are installed
        pathway_forward(model, spec, torch.randn(2, 3, size, size), torch.ones(2, 5))
    with pytest.raises(InputError):  # wrong number of rows
        pathway_forward(model, spec, torch.randn(2, 3, size, size), torch.ones(3, spec.total_channels))

    def explode(*_args) -> None:
        raise RuntimeError("boom inside the forward pass")

    last = dict(model.named_modules())[spec.names[-1]]
    handle = last.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            pathway_forward(model, spec, torch.randn(2, 3, size, size), torch.ones(2, spec.total_channels))
        with pytest.raises(RuntimeError, match="boom"):
            capture_features(model, spec, torch.randn(2, 3, size, size))
    finally:
        handle.remove()
    assert count_hooks(model) == before == 0


def test_input_errors() -> None:
    model, spec = _target("small_vgg", 32)
    with pytest.raises(InputError, match="empty batch"):
        capture_features(model, spec, torch.randn(0, 3, 32, 32))
    with pytest.raises(InputError, match=r"\(N, 3, 32, 32\)"):
        capture_features(model, spec, torch.randn(2, 1, 32, 32))
    with pytest.raises(InputError, match="per-layer masks"):
        pathway_forward(model, spec, torch.randn(2, 3, 32, 32), [torch.ones(2, 32)])


class _Overwrites(nn.Module):
    """A model that modifies a captured output in place after it was produced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h.mul_(2)
        return self.head(h.mean((2, 3)))


def test_capture_detects_later_inplace_modification() -> None:
    model = _Overwrites().eval()
    spec = spec_from_modules(model, ["act"], (3, 8, 8))
    with pytest.raises(SpecError, match="modified in place"):
        capture_features(model, spec, torch.randn(2, 3, 8, 8))
    assert count_hooks(model) == 0
