"""The session's pooling (csrc/include/pathrt/pool.h) against torch's. Max pooling on the windows plan
ops give it: equal values bit for bit, a NaN winning its windows as in torch, inputs it does not cover
handed to torch, and bad windows refused with a message. Average pooling without padding (the RFE's input
pooling, a target's avg_pool2d): equal values bit for bit, a NaN propagating, padding, ceil_mode and other
layouts handed to torch. Global average pooling: torch's values within float rounding, a NaN propagating,
other output sizes and layouts handed to torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathrt import _C

# (batch, channels, height, width, kernel, stride, padding): VGG's 2x2/2, ResNet's 3x3/2 padded stem pool on
# odd sizes, one channel, unequal kernels, strides and paddings along the axes, a window covering the map;
# 16, 32 and 64 channels (an output pixel in registers) and others (in memory).
CASES = [
    (2, 32, 8, 8, (2, 2), (2, 2), (0, 0)),
    (3, 64, 17, 15, (3, 3), (2, 2), (1, 1)),
    (1, 1, 5, 6, (2, 2), (1, 1), (0, 0)),
    (2, 24, 9, 7, (3, 2), (1, 2), (1, 0)),
    (1, 40, 4, 4, (4, 4), (4, 4), (0, 0)),
    (2, 64, 9, 9, (3, 3), (2, 2), (1, 1)),
    (1, 16, 6, 6, (2, 2), (2, 2), (0, 0)),
]


@pytest.mark.parametrize("case", CASES)
def test_max_pool_equals_torch_on_channels_last_maps(case: tuple) -> None:
    n, c, h, w, k, s, p = case
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("-inf")
    got = _C.max_pool2d(x, list(k), list(s), list(p))
    want = F.max_pool2d(x, k, s, p)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got.isnan().any())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_max_pool_hands_what_it_does_not_cover_to_torch() -> None:
    x = torch.randn(2, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    for y, ceil_mode in [(x, False), (channels_last.double(), False), (channels_last, True)]:  # NCHW, double, ceil
        got = _C.max_pool2d(y, [2, 2], [2, 2], [0, 0], ceil_mode)
        assert torch.equal(got, F.max_pool2d(y, 2, 2, 0, ceil_mode=ceil_mode))


def test_max_pool_refuses_a_window_torch_refuses() -> None:
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="padding at most half the kernel"):
        _C.max_pool2d(x, [2, 2], [2, 2], [2, 2])
    with pytest.raises(RuntimeError, match="smaller than the 8x8 window"):
        _C.max_pool2d(x, [8, 8], [1, 1], [0, 0])


# (batch, channels, height, width): the embedded model's and ResNet-18@64's joint-tail maps, ResNet-18's at
# 224 px (49 pixels), one pixel, one channel, an empty batch.
AVG_CASES = [(2, 256, 2, 2), (4, 512, 2, 2), (3, 40, 7, 7), (2, 24, 1, 1), (1, 1, 5, 3), (0, 8, 2, 2)]


@pytest.mark.parametrize("case", AVG_CASES)
def test_global_avg_pool_equals_torch_on_channels_last_maps(case: tuple) -> None:
    x = torch.randn(*case, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=torch.channels_last)
    got = _C.adaptive_avg_pool2d(x, [1, 1])
    want = F.adaptive_avg_pool2d(x, 1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if x.numel():
        x[0, 0, 0, 0] = float("nan")
        got = _C.adaptive_avg_pool2d(x, [1, 1])
        assert bool(got[0, 0].isnan()) and int(got.isnan().sum()) == 1


def test_global_avg_pool_hands_what_it_does_not_cover_to_torch() -> None:
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    for y, size in [(x, [1, 1]), (channels_last.double(), [1, 1]), (channels_last, [2, 3])]:  # NCHW, double, 2x3
        assert torch.equal(_C.adaptive_avg_pool2d(y, size), F.adaptive_avg_pool2d(y, size))


# (batch, channels, height, width, kernel, stride): the RFE's input pooling (kernel = stride) of the embedded
# model's 32x32 and 16x16 layers, channels no multiple of 16, overlapping and unequal windows, a window
# covering the map, an empty batch.
AVG_WINDOW_CASES = [
    (2, 32, 32, 32, (4, 4), (4, 4)),
    (2, 64, 16, 16, (2, 2), (2, 2)),
    (3, 40, 9, 7, (3, 3), (2, 2)),
    (1, 3, 6, 8, (2, 4), (1, 3)),
    (2, 17, 5, 5, (5, 5), (5, 5)),
    (0, 16, 4, 4, (2, 2), (2, 2)),
]


@pytest.mark.parametrize("case", AVG_WINDOW_CASES)
def test_avg_pool_equals_torch_bit_for_bit_on_channels_last_maps(case: tuple) -> None:
    n, c, h, w, k, s = case
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(4))
    x = x.contiguous(memory_format=torch.channels_last)
    got = _C.avg_pool2d(x, list(k), list(s), [0, 0])
    want = F.avg_pool2d(x, k, s)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
    if x.numel():
        x[0, -1, 0, 0] = float("nan")
        got = _C.avg_pool2d(x, list(k), list(s), [0, 0])
        assert torch.equal(got.isnan(), F.avg_pool2d(x, k, s).isnan()) and bool(got[0, -1, 0, 0].isnan())


def test_avg_pool_hands_what_it_does_not_cover_to_torch() -> None:
    x = torch.randn(2, 8, 7, 7, generator=torch.Generator().manual_seed(5))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    # NCHW, double, padding, ceil_mode
    for y, padding, ceil_mode in [(x, 0, False), (channels_last.double(), 0, False), (channels_last, 1, False),
                                  (channels_last, 0, True)]:
        got = _C.avg_pool2d(y, [3, 3], [2, 2], [padding, padding], ceil_mode)
        assert torch.equal(got, F.avg_pool2d(y, 3, 2, padding, ceil_mode=ceil_mode))
