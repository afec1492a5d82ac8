"""Canonization (BatchNorm folding): same function, reversible, refuses what it cannot fold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pathrt.errors import CanonizationError
from pathrt.targets import BatchNormFolding, build_model, canonize, canonized, foldable_pairs
from tests.conftest import randomize_batchnorms


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("arch", "folds"), [("vgg11_bn", 8), ("resnet18", 20), ("resnet50", 53), ("small_vgg", 5)])
@torch.no_grad()
def test_folding_keeps_the_function_and_is_reversible(arch: str, folds: int) -> None:
    model = randomize_batchnorms(build_model(arch, num_classes=10)).eval()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with canonized(model) as folding:
        assert folding.folded == folds
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_count - folds
        assert _relative_error(model(x), before) <= 1e-5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_count
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert torch.equal(model(x), before)


def test_folding_restores_after_an_exception() -> None:
    model = randomize_batchnorms(build_model("vgg11_bn", num_classes=10)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), canonized(model):
        raise RuntimeError("failure inside the block")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@torch.no_grad()
def test_linear_batchnorm1d_and_conv_without_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 6 * 6, 5), nn.BatchNorm1d(5), nn.ReLU())
    randomize_batchnorms(model).eval()
    x = torch.randn(3, 3, 8, 8)
    before = model(x)
    folding = canonize(model)
    assert folding.folded == 2 and model[0].bias is not None
    assert _relative_error(model(x), before) <= 1e-5
    folding.remove()
    assert model[0].bias is None and isinstance(model[1], nn.BatchNorm2d)


def test_batchnorm_with_a_second_reader_is_not_folded() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # y is read twice: folding would change the second use

    assert foldable_pairs(Branchy().eval()) == []


def test_refuses_training_mode_and_double_apply() -> None:
    model = build_model("small_vgg", 10)
    model.train()
    with pytest.raises(CanonizationError, match="eval mode"):
        canonize(model)
    model.eval()
    folding = BatchNormFolding(model).apply()
    with pytest.raises(CanonizationError, match="already applied"):
        folding.apply()
    folding.remove()
