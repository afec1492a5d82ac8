"""The fused generator ops (rfe_tail, pdn_encoder_layer, rpd_decode): references against the
generator's nn modules, the native C++ kernels against the references, errors, opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pathrt import opspec
from pathrt.runtime import ops
from pathrt.runtime.fused_generator import FusedGenerator, folded_generator
from tests.conftest import assert_masks_match, torchvision_target, varied_generator

REFERENCE_OPS = type("ReferenceOps", (), {
    "rfe_tail": staticmethod(opspec.rfe_tail_reference),
    "pdn_encoder_layer": staticmethod(opspec.pdn_encoder_layer_reference),
    "rpd_decode": staticmethod(opspec.rpd_decode_reference),
})


def _encoder_layer(d: int, heads: int, ff: int) -> nn.TransformerEncoderLayer:
    layer = nn.TransformerEncoderLayer(d, heads, ff, 0.0, activation="gelu", batch_first=True, norm_first=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # LayerNorm weights away from 1, biases away from 0
    return layer.eval()


def _layer_params(layer: nn.TransformerEncoderLayer) -> list[torch.Tensor]:
    return [layer.get_parameter(p).detach() for p in opspec.PDN_PARAMS]


def _rpd_inputs(n: int, layers: int, d: int, channels: list[int]) -> tuple:
    z = torch.randn(n, layers + 1, d)
    params = [1 + 0.1 * torch.randn(d), 0.1 * torch.randn(d), torch.randn(3 * d, d) / d**0.5,
              torch.randn(3 * d, d) / d**0.5, 0.1 * torch.randn(3 * d), 0.1 * torch.randn(3 * d)]
    heads = []
    for c in channels:
        heads += [torch.randn(d, d) / d**0.5, 0.1 * torch.randn(d), torch.randn(c, d), torch.randn(c)]
    return z, params, heads


@pytest.mark.parametrize(("d", "heads", "t", "n"), [(16, 1, 2, 1), (32, 4, 6, 3), (128, 8, 9, 5)])
def test_pdn_encoder_layer_reference_is_the_torch_layer(d: int, heads: int, t: int, n: int) -> None:
    layer = _encoder_layer(d, heads, 4 * d)
    x = torch.randn(n, t, d)
    with torch.no_grad():
        want = layer(x)
    got = opspec.pdn_encoder_layer_reference(x, _layer_params(layer), heads, layer.norm1.eps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("d", "heads", "t", "n"), [(16, 1, 2, 1), (32, 4, 6, 3), (128, 8, 9, 64), (24, 3, 17, 2)])
def test_pdn_encoder_layer_kernel_matches_reference(d: int, heads: int, t: int, n: int) -> None:
    layer = _encoder_layer(d, heads, 3 * d)
    x = torch.randn(n, t, d)
    params = _layer_params(layer)
    got = ops.pdn_encoder_layer(x, params, heads, 1e-5)
    torch.testing.assert_close(got, opspec.pdn_encoder_layer_reference(x, params, heads, 1e-5), rtol=1e-5, atol=2e-5)
    strided = torch.randn(n, d, t).transpose(1, 2)  # non-contiguous input
    torch.testing.assert_close(ops.pdn_encoder_layer(strided, params, heads, 1e-5),
                               opspec.pdn_encoder_layer_reference(strided, params, heads, 1e-5), rtol=1e-5, atol=2e-5)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), t=st.integers(1, 12), heads=st.sampled_from([1, 2, 4]), dh=st.integers(1, 8),
       scale=st.floats(0.01, 20.0))
def test_pdn_encoder_layer_property(n: int, t: int, heads: int, dh: int, scale: float) -> None:
    torch.manual_seed(n * 1000 + t * 10 + heads)
    d = heads * dh
    layer = _encoder_layer(d, heads, 2 * d)
    x = torch.randn(n, t, d) * scale  # large scales drive softmax and GELU to their tails
    params = _layer_params(layer)
    want = opspec.pdn_encoder_layer_reference(x, params, heads, 1e-5)
    torch.testing.assert_close(ops.pdn_encoder_layer(x, params, heads, 1e-5), want, rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize(("n", "d_r", "d", "sizes"), [(1, 4, 8, [(1, 1)]), (3, 8, 16, [(2, 2), (1, 1), (3, 5)]),
                                                       (64, 32, 128, [(2, 2)] * 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rfe_tail_kernel_matches_reference(n: int, d_r: int, d: int, sizes: list, channels_last: bool) -> None:
    maps = [torch.randn(n, d_r, h, w) for h, w in sizes]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    args = (torch.randn(d), torch.randn(d, d_r), torch.randn(d), 1 + 0.1 * torch.randn(d), torch.randn(d),
            torch.randn(len(sizes), d))
    want = opspec.rfe_tail_reference(maps, *args, 1e-5)
    assert want.shape == (n, len(sizes) + 1, d)
    torch.testing.assert_close(ops.rfe_tail(maps, *args, 1e-5), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("n", "d", "channels"), [(1, 8, [3]), (3, 16, [5, 9, 1]), (64, 128, [32, 64, 64, 128, 128])])
def test_rpd_decode_kernel_matches_reference(n: int, d: int, channels: list[int]) -> None:
    z, params, heads = _rpd_inputs(n, len(channels), d, channels)
    got, want = ops.rpd_decode(z, params, heads, 1e-5), opspec.rpd_decode_reference(z, params, heads, 1e-5)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=5e-5)  # head logits
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)  # scores
    assert_masks_match(got[2], want[2], want[1])
    assert torch.equal(got[3], ops.pack_masks(got[2])) and torch.equal(got[4], got[2].sum(1))
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.bool, torch.uint8, torch.int64]


def test_rpd_decode_reference_is_the_generator_modules() -> None:
    spec = torchvision_target("alexnet").spec
    generator = varied_generator(spec).eval()
    z = torch.randn(4, len(spec.layers) + 1, generator.config.d)
    with torch.no_grad():
        normed = generator.pdn.encoder.norm(z)
        want = torch.cat(generator.rpd(normed[:, 0], normed[:, 1:]), 1)
    fused = FusedGenerator(folded_generator(generator), REFERENCE_OPS)
    got = opspec.rpd_decode_reference(z, fused.rpd, fused.head_params, fused.rpd_eps)
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], torch.sigmoid(want), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["alexnet", "resnet18"])
def test_fused_generator_matches_the_generator(arch: str) -> None:
    """The whole generator through the three ops (reference and native) = head_logits + threshold."""
    target = torchvision_target(arch)
    generator = varied_generator(target.spec)
    features = target.capture(torch.randn(3, 3, 64, 64)).features
    with torch.no_grad():
        want = torch.cat(generator.head_logits(features), 1)
        folded = folded_generator(generator)
        for namespace in (REFERENCE_OPS, torch.ops.pathrt):
            logits, scores, masks, packed, counts = FusedGenerator(folded, namespace)(features)
            torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(scores, torch.sigmoid(want), rtol=0, atol=1e-5)
            assert_masks_match(masks, torch.sigmoid(want) >= 0.5, torch.sigmoid(want))
            assert torch.equal(counts, masks.sum(1)) and torch.equal(packed, ops.pack_masks(masks))


def test_fused_generator_needs_folded_batchnorms() -> None:
    generator = varied_generator(torchvision_target("alexnet").spec)
    with pytest.raises(ValueError, match="folded"):
        FusedGenerator(generator, torch.ops.pathrt)


@pytest.mark.parametrize("fn", [ops.pdn_encoder_layer, opspec.pdn_encoder_layer_reference])
def test_pdn_encoder_layer_errors(fn) -> None:
    params = _layer_params(_encoder_layer(16, 2, 32))
    with pytest.raises(TypeError, match="float32"):
        fn(torch.zeros(2, 3, 16, dtype=torch.float64), params, 2, 1e-5)
    with pytest.raises(ValueError, match="heads must divide"):
        fn(torch.zeros(2, 3, 16), params, 3, 1e-5)
    with pytest.raises(ValueError, match="in_proj"):
        fn(torch.zeros(2, 3, 16), [params[0], params[1], params[2][:8], *params[3:]], 2, 1e-5)
    with pytest.raises(ValueError, match="12 parameters"):
        fn(torch.zeros(2, 3, 16), params[:5], 2, 1e-5)


@pytest.mark.parametrize("fns", [(ops.rfe_tail, ops.rpd_decode),
                                 (opspec.rfe_tail_reference, opspec.rpd_decode_reference)])
def test_rfe_tail_and_rpd_decode_errors(fns) -> None:
    rfe_tail, rpd_decode = fns
    args = (torch.randn(8), torch.randn(8, 4), torch.randn(8), torch.randn(8), torch.randn(8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="maps\\[1\\]"):
        rfe_tail([torch.randn(2, 4, 2, 2), torch.randn(2, 5, 2, 2)], *args, 1e-5)
    with pytest.raises(ValueError, match="position"):
        rfe_tail([torch.randn(2, 4, 2, 2)], *args, 1e-5)
    z, params, heads = _rpd_inputs(2, 2, 8, [3, 4])
    with pytest.raises(ValueError, match="4 head tensors"):
        rpd_decode(z, params, heads[:4], 1e-5)
    with pytest.raises(ValueError, match="L >= 1"):
        rpd_decode(z[:, :1], params, heads, 1e-5)
    with pytest.raises(TypeError, match="float32"):
        rpd_decode(z.double(), params, heads, 1e-5)


def test_opcheck_generator_ops() -> None:
    layer = _encoder_layer(16, 2, 32)
    torch.library.opcheck(torch.ops.pathrt.pdn_encoder_layer.default, (torch.randn(3, 4, 16), _layer_params(layer),
                                                                       2, 1e-5))
    maps = [torch.randn(3, 4, 2, 2), torch.randn(3, 4, 1, 1).contiguous(memory_format=torch.channels_last)]
    args = (torch.randn(8), torch.randn(8, 4), torch.randn(8), torch.randn(8), torch.randn(8), torch.randn(2, 8))
    torch.library.opcheck(torch.ops.pathrt.rfe_tail.default, (maps, *args, 1e-5))
    torch.library.opcheck(torch.ops.pathrt.rpd_decode.default, (*_rpd_inputs(3, 2, 8, [3, 9]), 1e-5))


def test_generator_math_matches_torch() -> None:
    """The approximate exp/erf of generator_math.h, seen through the kernels: GELU at extreme inputs."""
    x = torch.linspace(-30, 30, 2001).reshape(1, 1, -1)
    d = x.shape[-1]
    eye = [torch.ones(d), torch.zeros(d)]
    zero_attn = [torch.zeros(3 * d, d), torch.zeros(3 * d), torch.zeros(d, d), torch.zeros(d)]
    params = [*eye, *zero_attn, *eye, torch.eye(d), torch.zeros(d), torch.eye(d), torch.zeros(d)]
    # y = x + gelu(LN(x)) with the attention branch zero
    got = ops.pdn_encoder_layer(x, params, 1, 1e-5)
    ln = F.layer_norm(x, (d,), eps=1e-5)
    torch.testing.assert_close(got, x + F.gelu(ln), rtol=0, atol=3e-6)
