"""The session's direct conv (csrc/include/pathrt/direct_conv.h): its three builds against torch's conv
over the geometries the session gives it, its choice rule, and threads that split its tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathrt import _C
from tests.conftest import assert_python_ok

# (batch, in channels, height, width, out channels, kernel, stride, padding): output blocks of 64, 32 and
# 16 channels, odd maps whose pixels are no multiple of a register tile, stride 2, 1x1 and 7x7 kernels,
# padding wider than 1, unequal strides and paddings along the axes, batches 1 to 3.
CASES = [
    (1, 16, 7, 10, 32, 3, (2, 1), (1, 0)),
    (1, 3, 32, 32, 32, 3, 1, 1),
    (1, 32, 16, 16, 64, 3, 1, 1),
    (2, 16, 9, 7, 48, 3, 2, 1),
    (3, 8, 6, 6, 16, 1, 2, 0),
    (1, 3, 20, 20, 64, 7, 2, 3),
    (1, 5, 5, 5, 80, 3, 1, 2),
    (1, 128, 4, 4, 256, 3, 1, 1),
]


def conv_inputs(case: tuple, layout: str, residual: bool, seed: int = 0):
    n, c, h, w, o, k, s, p = case
    (sh, sw), (ph, pw) = (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, k, k, generator=g) / (c * k * k) ** 0.5
    bias = torch.randn(o, generator=g)
    ho, wo = (h + 2 * ph - k) // sh + 1, (w + 2 * pw - k) // sw + 1
    res = torch.randn(n, o, ho, wo, generator=g) if residual else None
    return x, weight, bias, res, [sh, sw], [ph, pw]


def reference(x, weight, bias, res, stride, padding, relu: bool) -> torch.Tensor:
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), stride, padding)
    if res is not None:
        y = y + res.double()
    return (y.relu() if relu else y).float()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("residual", [False, True])
def test_direct_conv_matches_torch(case: tuple, layout: str, residual: bool) -> None:
    x, weight, bias, res, stride, padding = conv_inputs(case, layout, residual)
    for relu, b in [(True, bias), (False, None)]:
        out = _C.direct_conv2d(x, weight, b, res, relu, stride, padding)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, reference(x, weight, b, res, stride, padding, relu), rtol=1e-5, atol=1e-4)


def test_direct_conv_threads_split_tiles_not_sums() -> None:
    """Two threads take whole tiles (output blocks x 48 pixels): each value is summed in the same order
    as on one thread, so the results are equal bit for bit."""
    x, weight, bias, res, stride, padding = conv_inputs((1, 32, 16, 16, 128, 3, 1, 1), "channels_last", True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _C.direct_conv2d(x, weight, bias, res, True, stride, padding)
        torch.set_num_threads(2)
        two = _C.direct_conv2d(x, weight, bias, res, True, stride, padding)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("level", ["avx2", "baseline"])
def test_direct_conv_of_every_instruction_set(level: str) -> None:
    """The kernel is built for AVX-512, AVX2 and the baseline; PATHRT_CPU_KERNELS caps the choice, so the
    lower builds run here against torch too."""
    code = (
        "import torch\n"
        "from pathrt import _C\n"
        "from tests.test_direct_conv import CASES, conv_inputs, reference\n"
        "for case in CASES:\n"
        "    x, w, b, r, s, p = conv_inputs(case, 'channels_last', True)\n"
        "    out = _C.direct_conv2d(x, w, b, r, True, s, p)\n"
        "    torch.testing.assert_close(out, reference(x, w, b, r, s, p, True), rtol=1e-5, atol=1e-4)\n"
    )
    assert_python_ok(code, env={"PATHRT_CPU_KERNELS": level})


def test_direct_conv_rule() -> None:
    """Direct below 4 images, up to 16M multiply-adds, weights whose outputs are a multiple of 16; the
    rest stays with the GEMM conv, the dot products or oneDNN."""
    def pays(n: int, c: int, hw: int, o: int, k: int = 3, s: int = 1, p: int = 1) -> bool:
        return _C.direct_conv_pays(torch.empty(n, c, hw, hw), torch.empty(o, c, k, k), [s, s], [p, p])

    assert pays(1, 3, 32, 32) and pays(1, 128, 4, 256) and pays(3, 64, 8, 128) and pays(1, 64, 16, 128, 1, 2, 0)
    assert not pays(4, 3, 32, 32)  # a batch of 4: the batched GEMM conv
    assert pays(1, 256, 2, 256) and pays(1, 512, 1, 512)  # 4 and 1 output pixels
    assert pays(1, 512, 2, 512)  # a 9.4 MB weight, blocked on its first call, at 9.4M multiply-adds
    assert not pays(2, 512, 2, 512)  # the same at 2 images: 19M multiply-adds, the dot products
    assert not pays(1, 64, 8, 24)  # 24 outputs: no 16-wide block
    assert not pays(1, 64, 32, 128)  # 75M multiply-adds: oneDNN's kernel
    assert not _C.direct_conv_pays(torch.empty(1, 8, 8, 8, dtype=torch.float64),
                                   torch.empty(16, 8, 3, 3, dtype=torch.float64), [1, 1], [1, 1])
