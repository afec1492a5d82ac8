"""Property tests (hypothesis) of the ops not covered by a property test next to their unit tests:
daq_threshold_pack, masked_bias_relu(_), rfe_tail and rpd_decode, against the plain-PyTorch
references, across shapes, dtypes (float32 runs; any other dtype is a TypeError from op and
reference alike), memory layouts (contiguous, channels-last, strided views) and masks (bool and
float, any density). pack_masks/pairwise_iou, pathway_conv2d and pdn_encoder_layer have theirs in
test_ops.py, test_fused_ops.py and test_generator_ops.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathrt import opspec
from pathrt.runtime import ops
from tests.conftest import assert_masks_match

OTHER_DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.uint8]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `x` in another memory layout."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.stack([x, torch.full_like(x, float("nan"))], -1)[..., 0]  # every other element
    return x.contiguous()


def _refused_alike(op, reference, *args) -> None:
    for fn in (op, reference):
        with pytest.raises(TypeError):
            fn(*args)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 9), k=st.integers(1, 300), scale=st.floats(0.01, 40.0), layout=st.sampled_from(LAYOUTS),
       dtype=st.sampled_from([torch.float32, *OTHER_DTYPES]), seed=st.integers(0, 2**16))
def test_daq_threshold_pack_property(n: int, k: int, scale: float, layout: str, dtype: torch.dtype,
                                     seed: int) -> None:
    logits = _layout(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale, layout)
    if dtype != torch.float32:
        _refused_alike(ops.daq_threshold_pack, opspec.daq_threshold_pack_reference, logits.to(dtype))
        return
    scores, masks, packed, counts = ops.daq_threshold_pack(logits)
    r_scores, r_masks, _, _ = opspec.daq_threshold_pack_reference(logits)
    torch.testing.assert_close(scores, r_scores, rtol=1e-6, atol=1e-7)
    near = (r_scores - opspec.MASK_THRESHOLD).abs() < 1e-6
    assert bool(((masks == r_masks) | near).all())
    assert torch.equal(masks, scores >= opspec.MASK_THRESHOLD)  # the op's own masks follow its own scores
    assert torch.equal(packed, ops.pack_masks(masks)) and torch.equal(counts, masks.sum(1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 12), h=st.integers(1, 7), w=st.integers(1, 7),
       with_bias=st.booleans(), float_mask=st.booleans(), density=st.floats(0.0, 1.0),
       layout=st.sampled_from(LAYOUTS), inplace=st.booleans(),
       dtype=st.sampled_from([torch.float32, *OTHER_DTYPES]), seed=st.integers(0, 2**16))
def test_masked_bias_relu_property(n, c, h, w, with_bias, float_mask, density, layout, inplace, dtype, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = _layout(torch.randn(n, c, h, w, generator=g), layout)
    bias = torch.randn(c, generator=g) if with_bias else None
    keep = torch.rand(n, c, generator=g) < density
    mask = keep.float() * torch.rand(n, c, generator=g) * 2 if float_mask else keep
    if dtype != torch.float32:
        _refused_alike(ops.masked_bias_relu, opspec.masked_bias_relu_reference, x.to(dtype), bias, mask)
        return
    want = opspec.masked_bias_relu_reference(x, bias, mask)
    if inplace:
        got = x.clone(memory_format=torch.preserve_format) if layout != "strided" else x.contiguous()
        torch.ops.pathrt.masked_bias_relu_(got, bias, mask)
    else:
        got = ops.masked_bias_relu(x, bias, mask)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    removed = (mask == 0)[:, :, None, None].expand_as(got)
    assert bool((got[removed] == 0).all())  # removed channels are exact zeros


def _rfe_args(n: int, layers: int, d_r: int, d: int, sizes: list[int], layout: str, g: torch.Generator) -> tuple:
    maps = [_layout(torch.randn(n, d_r, s, s + 1, generator=g), layout) for s in sizes[:layers]]
    return (maps, torch.randn(d, generator=g), torch.randn(d, d_r, generator=g) / d_r**0.5,
            torch.randn(d, generator=g) * 0.1, 1 + 0.1 * torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g),
            torch.randn(layers, d, generator=g) * 0.1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), layers=st.integers(1, 5), d_r=st.integers(1, 9), d=st.integers(2, 24),
       sizes=st.lists(st.integers(1, 6), min_size=5, max_size=5), layout=st.sampled_from(LAYOUTS),
       dtype=st.sampled_from([torch.float32, *OTHER_DTYPES]), seed=st.integers(0, 2**16))
def test_rfe_tail_property(n, layers, d_r, d, sizes, layout, dtype, seed) -> None:
    maps, *rest = _rfe_args(n, layers, d_r, d, sizes, layout, torch.Generator().manual_seed(seed))
    if dtype != torch.float32:
        _refused_alike(ops.rfe_tail, opspec.rfe_tail_reference, [m.to(dtype) for m in maps], *rest, 1e-5)
        return
    got = ops.rfe_tail(maps, *rest, 1e-5)
    torch.testing.assert_close(got, opspec.rfe_tail_reference(maps, *rest, 1e-5), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), channels=st.lists(st.integers(1, 9), min_size=1, max_size=4), d=st.integers(2, 20),
       scale=st.floats(0.1, 4.0), strided=st.booleans(), dtype=st.sampled_from([torch.float32, *OTHER_DTYPES]),
       seed=st.integers(0, 2**16))
def test_rpd_decode_property(n, channels, d, scale, strided, dtype, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    layers = len(channels)
    z = torch.randn(n, layers + 1, d, generator=g) * scale
    z = _layout(z, "strided") if strided else z
    params = [1 + 0.1 * torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g),
              torch.randn(3 * d, d, generator=g) / d**0.5, torch.randn(3 * d, d, generator=g) / d**0.5,
              0.1 * torch.randn(3 * d, generator=g), 0.1 * torch.randn(3 * d, generator=g)]
    heads = []
    for c in channels:
        heads += [torch.randn(d, d, generator=g) / d**0.5, 0.1 * torch.randn(d, generator=g),
                  torch.randn(c, d, generator=g), torch.randn(c, generator=g)]
    if dtype != torch.float32:
        _refused_alike(ops.rpd_decode, opspec.rpd_decode_reference, z.to(dtype), params, heads, 1e-5)
        return
    got = ops.rpd_decode(z, params, heads, 1e-5)
    want = opspec.rpd_decode_reference(z, params, heads, 1e-5)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)  # head logits
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)  # scores
    assert_masks_match(got[2], want[2], want[1])
    assert torch.equal(got[3], ops.pack_masks(got[2])) and torch.equal(got[4], got[2].sum(1))
