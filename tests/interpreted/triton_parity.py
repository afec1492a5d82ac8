"""Triton kernels against the plain-PyTorch references, on CPU under TRITON_INTERPRET=1.

Not collected by the main pytest run (the file name does not match test_*.py): the interpreter
must be switched on before triton is imported and breaks fake-tensor tracing, so
tests/test_triton_kernels.py runs this file in its own pytest process with the variable set.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":  # fail loudly rather than launch on a missing GPU
    raise RuntimeError("run this file with TRITON_INTERPRET=1 (tests/test_triton_kernels.py does)")

from pathrt import opspec
from pathrt.generator import GeneratorConfig, PathwayGenerator
from pathrt.kernels import triton_fused as triton_ops
from pathrt.kernels import triton_generator as triton_gen
from pathrt.runtime import Explainer, ops
from pathrt.runtime.fused_generator import FusedGenerator, folded_generator
from pathrt.targets import create_target
from tests.conftest import assert_masks_match

CL = torch.channels_last


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 8), (4, 37), (2, 300), (0, 5)])
def test_daq_threshold_pack(shape: tuple[int, int]) -> None:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(shape[1])) * 3
    logits.view(-1)[::5] = 0.0
    got, want = triton_ops.daq_threshold_pack(logits), opspec.daq_threshold_pack_reference(logits)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=2e-7)
    assert_masks_match(got[1], want[1], want[0])
    assert torch.equal(got[2], ops.pack_masks(got[1])) and torch.equal(got[3], got[1].sum(1))


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("with_fill", [False, True])
def test_masked_bias_relu(mask_kind: str, with_bias: bool, layout: str, with_fill: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, 6, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    bias = torch.randn(5, generator=g) if with_bias else None
    fill = torch.randn(5, generator=g) if with_fill else None  # mean ablation's removed-channel values
    mask = torch.rand(3, 5, generator=g) > 0.4
    if mask_kind == "float":
        mask = mask * torch.rand(3, 5, generator=g)
    want = opspec.masked_bias_relu_reference(x, bias, mask, fill)
    torch.testing.assert_close(triton_ops.masked_bias_relu(x, bias, mask, fill=fill), want, rtol=0, atol=0)
    y = x.contiguous().clone()
    assert triton_ops.masked_bias_relu(y, bias, mask, inplace=True, fill=fill) is y
    torch.testing.assert_close(y, want, rtol=0, atol=0)


@pytest.mark.parametrize(("case", "in_p", "out_p", "residual", "relu"), [
    ((2, 3, 6, 6, 4, 3, 1, 1), 0.5, 0.5, False, True),
    ((3, 4, 5, 4, 3, 3, 2, 1), 1.0, 0.6, True, True),
    ((1, 3, 9, 9, 2, 5, 2, 2), 0.4, 1.0, True, False),
    ((2, 4, 4, 4, 5, 1, 2, 0), 0.0, 0.0, False, True),
])
def test_pathway_conv2d(case, in_p: float, out_p: float, residual: bool, relu: bool) -> None:
    n, c_in, h, w, c_out, k, s, p = case
    g = torch.Generator().manual_seed(n + c_in)
    x = torch.randn(n, c_in, h, w, generator=g)
    weight, bias = torch.randn(c_out, c_in, k, k, generator=g), torch.randn(c_out, generator=g)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    res = torch.randn(n, c_out, ho, wo, generator=g) if residual else None
    in_mask = torch.rand(n, c_in, generator=g) < in_p if in_p < 1 else None
    out_mask = torch.rand(n, c_out, generator=g) < out_p if out_p < 1 else None
    if in_mask is not None:  # removed input channels hold NaN: a kernel that reads them fails
        x = torch.where(in_mask[:, :, None, None], x, torch.tensor(float("nan")))
    got = triton_ops.pathway_conv2d(x, weight, bias, res, in_mask, out_mask, (s, s), (p, p), relu)
    clean = torch.nan_to_num(x, nan=0.0)
    want = opspec.pathway_conv2d_reference(clean, weight, bias, res, in_mask, out_mask, [s, s], [p, p], relu)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_triton_backend_matches_eager() -> None:
    target = create_target("small_vgg", 4, (3, 16, 16), cfg=(4, "M", 8, 8, "M"), hidden=8)
    torch.manual_seed(0)
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(head_bias=0.0)).eval()
    with torch.no_grad():
        for head in generator.rpd.heads:
            head[-1].weight.mul_(20.0)
    eager = Explainer(target, generator)
    triton = Explainer(target, generator, backend="triton")
    assert triton.backend == "triton" and "triton kernels on cpu" in triton.backend_reason
    assert triton.engine.fused is not None and triton.engine.fused.ops.__name__ == "pathrt.kernels.triton_generator"
    for strategy in ("dense", "union", "sparse"):
        triton.engine.runner.strategy = strategy
        x = torch.randn(3, 3, 16, 16)
        a, b = eager.explain(x), triton.explain(x)
        assert b.backend == "triton" and 0.1 < float(a.sparsity.mean()) < 0.9
        report = opspec.parity.compare(b, a)
        assert report.ok, report.describe()
    # mean ablation: removed channels hold their mean activation (the fused epilogue's fill)
    x = torch.randn(3, 3, 16, 16)
    target.measure_channel_means(torch.randn(4, 3, 16, 16))
    masks = torch.rand(3, target.spec.total_channels) > 0.5
    want = eager.explain_with_masks(x, masks, fill=target.channel_means)
    got = triton.explain_with_masks(x, masks, fill=target.channel_means)
    assert "triton" in got.backend_reason and "mean ablation" in got.backend_reason
    torch.testing.assert_close(got.pathway_logits, want.pathway_logits, rtol=1e-4, atol=1e-4)
    zero = eager.explain_with_masks(x, masks)
    assert (zero.pathway_logits - want.pathway_logits).abs().max() > 1e-4


def _random_params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) / (s[-1] ** 0.5 if len(s) == 2 else 4.0) for s in shapes]


@pytest.mark.parametrize(("n", "sizes", "d_r", "d"), [(1, [(1, 1)], 4, 8), (3, [(2, 2), (3, 5)], 8, 16)])
def test_rfe_tail(n: int, sizes: list, d_r: int, d: int) -> None:
    maps = [torch.randn(n, d_r, h, w) for h, w in sizes]
    args = _random_params([(d,), (d, d_r), (d,), (d,), (d,), (len(sizes), d)], seed=n)
    torch.testing.assert_close(triton_gen.rfe_tail(maps, *args, 1e-5), opspec.rfe_tail_reference(maps, *args, 1e-5),
                               rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("n", "t", "d", "heads"), [(1, 1, 8, 1), (2, 6, 16, 4), (3, 9, 24, 3)])
def test_pdn_encoder_layer(n: int, t: int, d: int, heads: int) -> None:
    ff = 2 * d
    params = _random_params([(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff),
                             (d,)], seed=t)
    x = torch.randn(n, t, d)
    torch.testing.assert_close(triton_gen.pdn_encoder_layer(x, params, heads, 1e-5),
                               opspec.pdn_encoder_layer_reference(x, params, heads, 1e-5), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("n", "d", "channels"), [(1, 8, [3]), (4, 16, [5, 9, 12])])
def test_rpd_decode(n: int, d: int, channels: list[int]) -> None:
    params = _random_params([(d,), (d,), (3 * d, d), (3 * d, d), (3 * d,), (3 * d,)], seed=d)
    heads = []
    for i, c in enumerate(channels):
        heads += _random_params([(d, d), (d,), (c, d), (c,)], seed=100 + i)
    z = torch.randn(n, len(channels) + 1, d)
    got, want = triton_gen.rpd_decode(z, params, heads, 1e-5), opspec.rpd_decode_reference(z, params, heads, 1e-5)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    assert_masks_match(got[2], want[2], want[1])
    assert torch.equal(got[3], ops.pack_masks(got[2])) and torch.equal(got[4], got[2].sum(1))


def test_fused_generator_on_triton() -> None:
    target = create_target("small_vgg", 4, (3, 16, 16), cfg=(4, "M", 8, 8, "M"), hidden=8)
    torch.manual_seed(0)
    generator = PathwayGenerator(target.spec, GeneratorConfig.small(head_bias=0.0)).eval()
    features = target.capture(torch.randn(3, 3, 16, 16)).features
    with torch.no_grad():
        want = torch.cat(generator.head_logits(features), 1)
        got = FusedGenerator(folded_generator(generator), triton_gen)(features)
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)
