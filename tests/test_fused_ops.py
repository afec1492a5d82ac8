"""The fused deployed-path ops (daq_threshold_pack, masked_bias_relu(_), pathway_conv2d): the native
C++ kernels against their plain-PyTorch references, layouts, skipped channels, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pathrt import _C, opspec
from pathrt.runtime import ops
from tests.conftest import assert_masks_match, assert_python_ok

CL = torch.channels_last


def test_daq_threshold_pack_hand_example() -> None:
    logits = torch.tensor([[0.0, -1e-3, 5.0, -7.0, 1e-3, 0.0, 0.0, 0.0, -1.0]])
    scores, masks, packed, counts = ops.daq_threshold_pack(logits)
    assert masks.tolist() == [[True, False, True, False, True, True, True, True, False]]
    assert packed.tolist() == [[1 + 4 + 16 + 32 + 64 + 128, 0]]  # bits 0, 2, 4..7; byte 1 has bit 8 = 0
    assert counts.tolist() == [6] and counts.dtype == torch.int64
    torch.testing.assert_close(scores, torch.sigmoid(logits), rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 8), (5, 9), (64, 608), (2, 1152), (0, 5), (3, 0)])
def test_daq_threshold_pack_matches_reference(shape: tuple[int, int]) -> None:
    logits = torch.randn(shape) * 3
    logits.view(-1)[::7] = 0.0  # exact ties: score 0.5 is kept
    out = ops.daq_threshold_pack(logits)
    ref = opspec.daq_threshold_pack_reference(logits)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=2e-7)
    assert_masks_match(out[1], ref[1], ref[0])
    assert torch.equal(out[2], ops.pack_masks(out[1])) and torch.equal(out[3], out[1].sum(1))
    assert [t.dtype for t in out] == [torch.float32, torch.bool, torch.uint8, torch.int64]


def test_daq_threshold_pack_non_contiguous_and_errors() -> None:
    logits = torch.randn(20, 30).T[:, ::2]
    out, ref = ops.daq_threshold_pack(logits), opspec.daq_threshold_pack_reference(logits.contiguous())
    assert torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2])
    for fn in (ops.daq_threshold_pack, opspec.daq_threshold_pack_reference):
        with pytest.raises(TypeError, match="float32"):
            fn(torch.zeros(2, 3, dtype=torch.float64))
        with pytest.raises(ValueError, match="2-D"):
            fn(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_bias_relu_matches_reference(layout: str, mask_kind: str, with_bias: bool) -> None:
    x = torch.randn(3, 5, 4, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    elif layout == "strided":
        x = torch.randn(3, 5, 8, 6)[:, :, ::2]
    bias = torch.randn(5) if with_bias else None
    mask = torch.rand(3, 5) > 0.4 if mask_kind == "bool" else torch.rand(3, 5) * (torch.rand(3, 5) > 0.3)
    ref = opspec.masked_bias_relu_reference(x, bias, mask)
    out = ops.masked_bias_relu(x, bias, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    if layout != "strided":
        y = x.clone()
        assert ops.masked_bias_relu(y, bias, mask, inplace=True) is y
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        assert y.is_contiguous(memory_format=CL) == (layout == "channels_last")


def test_masked_bias_relu_removed_channels_are_exact_zeros() -> None:
    x = torch.full((2, 3, 2, 2), float("nan"))
    mask = torch.tensor([[False, False, False], [False, False, False]])
    assert torch.equal(ops.masked_bias_relu(x, torch.ones(3), mask), torch.zeros(2, 3, 2, 2))


def test_masked_bias_relu_errors() -> None:
    x = torch.randn(2, 3, 4, 4)
    for fn in (ops.masked_bias_relu, opspec.masked_bias_relu_reference):
        with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
            fn(x, None, torch.ones(1, 3, dtype=torch.bool))
        with pytest.raises(TypeError, match="mask must be bool or"):
            fn(x, None, torch.ones(2, 3, dtype=torch.int64))
        with pytest.raises(ValueError, match="bias"):
            fn(x, torch.ones(4), torch.ones(2, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="4-D"):
            fn(x[0], None, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="contiguous"):
        ops.masked_bias_relu(torch.randn(2, 3, 8, 4)[:, :, ::2], None, torch.ones(2, 3, dtype=torch.bool),
                             inplace=True)


CONV_CASES = [
    # (N, C_in, H, W, C_out, k, stride, padding)
    (1, 3, 8, 8, 4, 3, 1, 1),
    (3, 6, 5, 4, 7, 3, 2, 1),
    (2, 3, 17, 17, 5, 11, 4, 2),  # AlexNet's first conv, small
    (4, 8, 7, 7, 6, 1, 2, 0),  # a ResNet downsample
    (2, 5, 9, 9, 3, 7, 2, 3),  # a ResNet stem
    (5, 4, 3, 3, 2, 3, 1, 1),
    (1, 16, 4, 4, 7, 3, 2, 1),  # 4 output pixels: dot products, weight rows in place when all inputs are kept
    (1, 40, 8, 8, 37, 1, 2, 0),  # 16 pixels of a 1x1 downsample: dot products over a shallow depth
    # stride 1 and output rows of 16 or more: one GEMM per tap over shifted zero-padded planes
    (2, 5, 16, 20, 6, 3, 1, 1),
    (1, 4, 18, 17, 3, 5, 1, 2),
    (2, 3, 16, 18, 4, 3, 1, 0),
    (1, 6, 4, 16, 5, 1, 1, 0),
    # one sample at stride 1, rows of 4 to 8 pixels: every tap in one pass over the planes (PlanarConv),
    # tiles of 1 to 6 vectors of 16 columns, the last tile overlapping (12x8: 8 vectors), partial blocks
    (1, 24, 6, 7, 37, 3, 1, 1),
    (1, 6, 12, 8, 13, 3, 1, 1),
    (1, 9, 5, 6, 20, 1, 1, 0),
    (1, 4, 7, 7, 5, 5, 1, 2),
    # one sample whose input and output maps fit 16 lanes, under 3/4 of its outputs kept: a vector per kept
    # input, moved under each output by a permute per tap (LaneConv; channels-last, AVX-512): 3x3 taps
    # unrolled, 40 channels (a partial block of 16), a 1x1 kernel over 15 pixels, 5x5 taps over padding
    (1, 40, 4, 4, 24, 3, 1, 1),
    (1, 20, 3, 5, 16, 1, 1, 0),
    (1, 17, 4, 4, 20, 5, 1, 2),
]


def _conv_inputs(case, layout: str, in_p: float, out_p: float, residual: bool, seed: int = 0):
    n, c_in, h, w, c_out, k, s, p = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    weight, bias = torch.randn(c_out, c_in, k, k, generator=g), torch.randn(c_out, generator=g)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    res = torch.randn(n, c_out, ho, wo, generator=g) if residual else None
    in_mask = torch.rand(n, c_in, generator=g) < in_p if in_p < 1 else None
    out_mask = torch.rand(n, c_out, generator=g) < out_p if out_p < 1 else None
    return x, weight, bias, res, in_mask, out_mask, [s, s], [p, p]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("in_p", "out_p", "residual", "relu"),
                         [(1.0, 1.0, False, False), (0.5, 0.4, False, True), (0.3, 1.0, True, True),
                          (1.0, 0.5, True, False), (0.0, 0.0, False, True)])
def test_pathway_conv2d_matches_reference(case, layout: str, in_p: float, out_p: float, residual: bool,
                                          relu: bool) -> None:
    args = _conv_inputs(case, layout, in_p, out_p, residual)
    out = ops.pathway_conv2d(*args[:6], stride=args[6], padding=args[7], relu=relu)
    ref = opspec.pathway_conv2d_reference(*args, relu)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    assert out.is_contiguous(memory_format=CL) == (layout == "channels_last" and out.shape[-2:] != (1, 1))


def _input_major(weight: torch.Tensor) -> torch.Tensor:
    """The same (C_out, C_in, kH, kW) weight, laid out (C_in, kH, kW, C_out) in memory."""
    return weight.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)


def _laid_out(weight: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "input_major":
        return _input_major(weight)
    return weight.contiguous(memory_format=CL) if layout == "channels_last" else weight


# (case, weight layout): gathered weights; kept OIHW or channels-last rows in place over every input
# (16 inputs, at least half kept); an input-major weight read in place (64 outputs, at most 16 output
# pixels per run); one sample's planes, every tap in one pass (8x8); one sample's maps in vectors (4x4,
# LaneConv: the removed channels' NaNs are transposed with the kept ones, never used)
NEVER_READ_CASES = [(CONV_CASES[1], "oihw"), ((1, 16, 4, 4, 7, 3, 2, 1), "oihw"),
                    ((1, 16, 4, 4, 7, 3, 2, 1), "channels_last"), ((2, 12, 4, 4, 64, 3, 2, 1), "input_major"),
                    ((1, 6, 4, 4, 128, 3, 1, 1), "input_major"), ((1, 8, 8, 8, 12, 3, 1, 1), "oihw"),
                    ((1, 40, 4, 4, 24, 3, 1, 1), "oihw")]


@pytest.mark.parametrize(("case", "weight_layout"), NEVER_READ_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])  # channels-last: the pixel epilogues
def test_pathway_conv2d_never_reads_removed_inputs_nor_computes_removed_outputs(case, weight_layout: str,
                                                                                layout: str) -> None:
    x, weight, bias, _, in_mask, out_mask, s, p = _conv_inputs(case, layout, 0.6, 0.5, False)
    poisoned = torch.where(in_mask[:, :, None, None], x, torch.tensor(float("nan")))
    w = _laid_out(weight, weight_layout)
    out = ops.pathway_conv2d(poisoned, w, bias, None, in_mask, out_mask, s, p, relu=False)
    assert not out.isnan().any()  # the NaN channels were never read
    assert (out[~out_mask] == 0).all()  # removed outputs are exact zeros, not relu(bias)
    ref = opspec.pathway_conv2d_reference(x, weight, bias, None, in_mask, out_mask, s, p, False)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_input_major_kernel_skips_kept_inputs_that_are_zero(layout: str) -> None:
    """A kept input that is zero at every pixel (as after a ReLU) adds only zeros: the input-major kernel
    does not read its weights (NaN there changes nothing); a kept input with one nonzero value is read."""
    x, weight, bias, _, in_mask, _, s, p = _conv_inputs((2, 12, 2, 2, 64, 3, 1, 1), layout, 0.8, 1.0, False)
    in_mask[:, :4] = True
    x[:, :4] = 0.0  # inputs 0-2 zero in both samples
    x[0, 3, 1, 0] = 2.0  # input 3: one nonzero value, in the first sample
    poisoned = weight.clone()
    poisoned[:, :3] = float("nan")
    out = ops.pathway_conv2d(x, _input_major(poisoned), bias, None, in_mask, None, s, p, relu=False)
    assert not out.isnan().any()  # the zero inputs' weights were never read
    ref = opspec.pathway_conv2d_reference(x, weight, bias, None, in_mask, None, s, p, False)
    torch.testing.assert_close(out, ref)


WEIGHT_LAYOUT_CASES = [
    (1, 12, 4, 4, 64, 3, 1, 1),  # 16 output pixels: read in place (input-major: by its own kernel)
    (3, 16, 4, 4, 128, 3, 2, 1),  # 4 per sample, runs of up to 12: in place
    (1, 32, 2, 2, 64, 1, 1, 0),  # a 1x1 kernel
    (2, 4, 8, 8, 64, 3, 1, 1),  # 64 per sample: copied to OIHW for the GEMMs
    (1, 4, 4, 4, 48, 3, 1, 1),  # outputs not a multiple of 64: input-major copied to OIHW
]


@pytest.mark.parametrize("case", WEIGHT_LAYOUT_CASES)
@pytest.mark.parametrize("weight_layout", ["input_major", "channels_last"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("in_p", "out_p", "residual"), [(1.0, 1.0, False), (0.6, 1.0, True), (0.5, 0.4, False),
                                                         (0.0, 1.0, True)])
def test_pathway_conv2d_weight_layouts(case, weight_layout: str, layout: str, in_p: float, out_p: float,
                                       residual: bool) -> None:
    """A weight laid out (C_in, kH, kW, C_out) or channels-last in memory gives the OIHW weight's result,
    whichever kernel reads it."""
    args = _conv_inputs(case, layout, in_p, out_p, residual)
    out = ops.pathway_conv2d(args[0], _laid_out(args[1], weight_layout), *args[2:6], stride=args[6],
                             padding=args[7], relu=True)
    ref = opspec.pathway_conv2d_reference(*args, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


# Runs the direct conv takes (1-3 images, more than 16 output pixels, outputs a multiple of 16): a run
# that keeps most outputs, or one run (batch 1) whose dropped outputs cost less than compacting (few pixels),
# reads the blocked weight in place; else one run compacts the kept weights out of the blocked weight (over
# its blocks of 64, 32 or 16 outputs), several gather them.
BLOCKED_CASES = [
    ((1, 12, 8, 8, 32, 3, 1, 1), 0.5, 0.4),
    ((1, 20, 6, 6, 128, 3, 1, 1), 0.5, 0.4),
    ((1, 8, 6, 6, 48, 3, 2, 1), 0.6, 0.5),
    ((1, 24, 5, 5, 64, 1, 1, 0), 0.5, 0.9),
    ((1, 8, 9, 7, 48, 3, 2, 1), 0.6, 1.0),
    ((3, 16, 6, 6, 64, 3, 1, 1), 0.5, 0.3),
    ((3, 16, 6, 6, 64, 3, 1, 1), 0.4, 1.0),
    ((2, 10, 7, 7, 16, 1, 1, 0), 0.7, 0.5),
    # ~51 of 256 outputs at 8x8: compacted (in place would compute 4x the outputs) and cut in two blocks
    ((1, 16, 8, 8, 256, 3, 1, 1), 0.5, 0.2),
    # 16 pixels or fewer read in place (else dot products): every output, or few dropped (3x3 pixels)
    ((1, 24, 4, 4, 64, 3, 1, 1), 0.5, 1.0),
]


@pytest.mark.parametrize(("case", "in_p", "out_p"), BLOCKED_CASES)
@pytest.mark.parametrize("residual", [False, True])
def test_pathway_conv2d_reads_a_blocked_weight_in_place(case, in_p: float, out_p: float, residual: bool) -> None:
    """Given the direct conv's blocked weight (as the session passes its dense conv's), the result is the
    reference's; removed input channels are never read and removed outputs are exact zeros."""
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(case, "channels_last", in_p, out_p, residual)
    poisoned = torch.where(in_mask[:, :, None, None], x, torch.tensor(float("nan")))
    out = _C.pathway_conv2d_blocked(poisoned, weight, bias, res, in_mask, out_mask, s, p, True)
    assert not out.isnan().any()
    if out_mask is not None:
        assert (out[~out_mask] == 0).all()
    ref = opspec.pathway_conv2d_reference(x, weight, bias, res, in_mask, out_mask, s, p, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", [BLOCKED_CASES[1][0], BLOCKED_CASES[5][0], CONV_CASES[6], CONV_CASES[8]])
def test_pathway_conv2d_buffers_kept_across_calls_never_reach_a_result(case) -> None:
    """pathway_conv2d keeps a thread's buffers across calls (weights, planes, columns, pixel rows): a larger
    call that leaves them full of NaNs changes nothing in the next call's result."""
    n, c_in, h, w, c_out, k, s, p = case
    big = _conv_inputs((n, c_in + 8, h, w, c_out + 16, k, s, p), "channels_last", 1.0, 1.0, False)
    nan_x, nan_weight = torch.full_like(big[0], float("nan")), torch.full_like(big[1], float("nan"))
    x, weight, bias, res, in_mask, out_mask, stride, padding = _conv_inputs(case, "channels_last", 0.5, 0.4, True)
    ref = opspec.pathway_conv2d_reference(x, weight, bias, res, in_mask, out_mask, stride, padding, True)
    for conv in [torch.ops.pathrt.pathway_conv2d] + [_C.pathway_conv2d_blocked] * (c_out % 16 == 0):
        assert conv(nan_x, nan_weight, None, None, None, None, big[6], big[7], False).isnan().all()
        out = conv(x, weight, bias, res, in_mask, out_mask, stride, padding, True)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("level", ["", "baseline"])
def test_pathway_conv2d_direct_over_oneDNNs_range(level: str) -> None:
    """A single sample's channel-sparse conv runs direct up to kSparseDirectMaxMacs (64M multiply-adds, 4x
    the dense convs' limit): here 29M (one 256->256 conv at 12x12, 200 x 112 channels kept), its kept
    weights gathered from the OIHW weight, 16 outputs at a time, or compacted from the blocked one,
    padded to 128 outputs (direct_outputs: the last 16 are zeros). The thread's buffers hold NaN from a
    larger call first: every weight the kernel reads is written by this call."""
    code = (
        "import torch\n"
        "from pathrt import _C, opspec\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(1, 256, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)\n"
        "w, b = torch.randn(256, 256, 3, 3, generator=g), torch.randn(256, generator=g)\n"
        "im, om = torch.zeros(1, 256, dtype=torch.bool), torch.zeros(1, 256, dtype=torch.bool)\n"
        "im[0, torch.randperm(256, generator=g)[:200]] = True\n"
        "om[0, torch.randperm(256, generator=g)[:112]] = True\n"
        "nan_x = torch.full((1, 264, 12, 12), float('nan')).contiguous(memory_format=torch.channels_last)\n"
        "nan_w = torch.full((272, 264, 3, 3), float('nan'))\n"
        "ref = opspec.pathway_conv2d_reference(x, w, b, None, im, om, [1, 1], [1, 1], True)\n"
        "for conv in (torch.ops.pathrt.pathway_conv2d, _C.pathway_conv2d_blocked):\n"
        "    assert conv(nan_x, nan_w, None, None, None, None, [1, 1], [1, 1], False).isnan().all()\n"
        "    out = conv(x, w, b, None, im, om, [1, 1], [1, 1], True)\n"
        "    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)\n"
        "print('ok')\n"
    )
    assert_python_ok(code, env={"PATHRT_CPU_KERNELS": level} if level else {})


@pytest.mark.parametrize("level", ["avx2", "baseline"])
def test_pathway_conv2d_dot_products_of_every_instruction_set(level: str) -> None:
    """The few-pixel kernels and the direct conv over kept channels are built for AVX-512, AVX2 and the
    baseline, and the best one for the CPU runs: PATHRT_CPU_KERNELS caps the choice, so the lower builds
    run here against the reference too."""
    code = (
        "import torch\n"
        "from pathrt import opspec\n"
        "from pathrt.runtime import ops\n"
        "from tests.test_fused_ops import _conv_inputs, _laid_out\n"
        "for case, layout in [((1, 16, 4, 4, 7, 3, 2, 1), 'oihw'), ((3, 6, 5, 4, 7, 3, 2, 1), 'oihw'),\n"
        "                     ((1, 16, 4, 4, 7, 3, 2, 1), 'channels_last'),\n"
        "                     ((1, 12, 4, 4, 64, 3, 1, 1), 'input_major'),\n"
        "                     ((3, 8, 4, 4, 128, 3, 2, 1), 'input_major')]:\n"
        "    for in_p, out_p in [(1.0, 0.5), (0.6, 0.5), (0.4, 1.0)]:\n"
        "        x, w, b, r, im, om, s, p = _conv_inputs(case, 'channels_last', in_p, out_p, True)\n"
        "        out = ops.pathway_conv2d(x, _laid_out(w, layout), b, r, im, om, s, p, relu=True)\n"
        "        ref = opspec.pathway_conv2d_reference(x, w, b, r, im, om, s, p, True)\n"
        "        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)\n"
        "from pathrt import _C\n"
        "from tests.test_fused_ops import BLOCKED_CASES\n"
        "for case, in_p, out_p in BLOCKED_CASES:\n"
        "    x, w, b, r, im, om, s, p = _conv_inputs(case, 'channels_last', in_p, out_p, True)\n"
        "    out = _C.pathway_conv2d_blocked(x, w, b, r, im, om, s, p, True)\n"
        "    ref = opspec.pathway_conv2d_reference(x, w, b, r, im, om, s, p, True)\n"
        "    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)\n"
        "print('ok')\n"
    )
    assert_python_ok(code, env={"PATHRT_CPU_KERNELS": level})


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [(12, 6, 9, 9, 5, 3, 1, 1), (9, 4, 8, 8, 6, 3, 2, 1), (40, 3, 16, 16, 4, 3, 1, 1)])
def test_pathway_conv2d_groups_samples_with_equal_masks(case, layout: str) -> None:
    """Samples with equal (in, out) masks share one GEMM (their columns side by side), in groups of
    any size, interleaved with unique ones, and cut into runs when their columns are large (the last
    case: 40 samples of one mask pair, 2 of 3 groups)."""
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(case, layout, 0.5, 0.5, True)
    g = torch.Generator().manual_seed(1)
    patterns = torch.randint(0, 3, (case[0],), generator=g)  # three mask pairs, repeated in random order
    in_mask, out_mask = in_mask[:3][patterns], out_mask[:3][patterns]
    in_mask[-1], out_mask[-1] = ~in_mask[-1], ~out_mask[-1]  # and one sample of its own
    out = ops.pathway_conv2d(x, weight, bias, res, in_mask, out_mask, s, p, relu=True)
    ref = opspec.pathway_conv2d_reference(x, weight, bias, res, in_mask, out_mask, s, p, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


# (case, which channels the samples' masks differ in): the merged runs' paths: the direct conv (8x8,
# 16x16), dot products (2x2: 12 pixels), the im2col GEMM (8x8, 16 samples of 64 x 64 kept channels) and
# shifted planes (16x16, 4 samples)
MERGE_CASES = [((12, 16, 8, 8, 32, 3, 1, 1), "both"), ((3, 16, 2, 2, 8, 3, 1, 1), "both"),
               ((4, 64, 16, 16, 32, 3, 1, 1), "output"), ((16, 128, 8, 8, 128, 3, 1, 1), "input"),
               ((4, 128, 16, 16, 128, 3, 1, 1), "input")]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("case", "differ"), MERGE_CASES)
def test_pathway_conv2d_merges_samples_with_nearby_masks(case, differ: str, layout: str) -> None:
    """Samples whose masks differ in a channel run together over the union of their masks (mask_groups
    in csrc/cpu/fused_ops.cpp), and each sample's own masks still decide: the inputs it drops are never
    read (NaN there) and the outputs it drops are exact zeros."""
    x, weight, bias, _, in_mask, out_mask, s, p = _conv_inputs(case, layout, 0.5, 0.5, False)
    n = case[0]
    in_mask, out_mask = in_mask[:1].repeat(n, 1), out_mask[:1].repeat(n, 1)
    for i in range(1, n):
        if differ == "input" and i < n // 2:
            in_mask[i, 0] = ~in_mask[i, 0]
        if differ in ("both", "output") and i >= n // 2:
            out_mask[i, i % case[4]] = ~out_mask[i, i % case[4]]
        if differ == "both":
            in_mask[i, i % case[1]] = ~in_mask[i, i % case[1]]
    poisoned = torch.where(in_mask[:, :, None, None], x, torch.tensor(float("nan")))
    out = ops.pathway_conv2d(poisoned, weight, bias, None, in_mask, out_mask, s, p, relu=False)
    assert not out.isnan().any()
    assert (out[~out_mask] == 0).all()
    ref = opspec.pathway_conv2d_reference(x, weight, bias, None, in_mask, out_mask, s, p, False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_pathway_conv2d_many_mask_groups() -> None:
    """A batch like a trained generator's: 48 samples around 6 mask pairs, each flipped in a few channels
    (48 distinct pairs), so mask_groups merges many groups (by each group's cheapest partner) and the
    threads claim its 7 runs of unequal cost in turn: every sample is still computed with its own masks."""
    case = (48, 32, 8, 8, 48, 3, 1, 1)
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(case, "channels_last", 0.4, 0.4, True)
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, 6, (case[0],), generator=g)
    in_mask = in_mask[:6][base] ^ (torch.rand(in_mask.shape, generator=g) < 0.03)
    out_mask = out_mask[:6][base] ^ (torch.rand(out_mask.shape, generator=g) < 0.03)
    assert len(torch.cat([in_mask, out_mask], 1).unique(dim=0)) > 20
    out = ops.pathway_conv2d(x, weight, bias, res, in_mask, out_mask, s, p, relu=True)
    ref = opspec.pathway_conv2d_reference(x, weight, bias, res, in_mask, out_mask, s, p, True)
    assert (out[~out_mask] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_pathway_conv2d_reads_any_nonzero_mask_byte_as_kept() -> None:
    """A bool mask whose kept bytes are not 1 (a uint8 tensor viewed as bool) keeps the same channels:
    mask_bits packs 8 bytes at a time, each byte's bits folded, as pack_byte tests `!= 0`."""
    case = (6, 72, 8, 8, 40, 3, 1, 1)  # 72 inputs: whole words of 8 bytes and a second 64-bit word
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(case, "channels_last", 0.5, 0.5, True)
    g = torch.Generator().manual_seed(4)
    odd = [torch.randint(1, 256, m.shape, generator=g, dtype=torch.uint8) * m for m in (in_mask, out_mask)]
    odd_in, odd_out = (m.view(torch.bool) for m in odd)
    out = ops.pathway_conv2d(x, weight, bias, res, odd_in, odd_out, s, p, relu=True)
    ref = ops.pathway_conv2d(x, weight, bias, res, in_mask, out_mask, s, p, relu=True)
    assert torch.equal(out, ref)


def test_pathway_conv2d_mixed_residual_layout() -> None:
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(CONV_CASES[0], "channels_last", 0.5, 0.5, True)
    out = ops.pathway_conv2d(x, weight, bias, res.contiguous(), in_mask, out_mask, s, p, relu=True)
    ref = opspec.pathway_conv2d_reference(x, weight, bias, res, in_mask, out_mask, s, p, True)
    torch.testing.assert_close(out, ref,
                               rtol=1e-5, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), c_in=st.integers(1, 6), c_out=st.integers(1, 6), size=st.integers(1, 9),
       k=st.sampled_from([1, 3, 5]), s=st.integers(1, 3), p=st.integers(0, 2), density=st.floats(0.0, 1.0),
       cl=st.booleans())
def test_pathway_conv2d_property(n, c_in, c_out, size, k, s, p, density, cl) -> None:
    if size + 2 * p < k:
        return
    args = _conv_inputs((n, c_in, size, size, c_out, k, s, p), "channels_last" if cl else "nchw",
                        density, density, True, seed=n + 7 * c_in + 31 * size)
    ref = opspec.pathway_conv2d_reference(*args, True)
    torch.testing.assert_close(ops.pathway_conv2d(*args[:6], stride=args[6], padding=args[7], relu=True), ref,
                               rtol=1e-5, atol=1e-4)


def test_pathway_conv2d_errors() -> None:
    x, weight, bias, res, in_mask, out_mask, s, p = _conv_inputs(CONV_CASES[1], "nchw", 0.5, 0.5, True)
    for fn in (ops.pathway_conv2d, opspec.pathway_conv2d_reference):
        with pytest.raises(ValueError, match=r"input channels|do not match"):
            fn(x, weight[:, :3], bias, None, None, None, s, p, True)
        with pytest.raises(ValueError, match="residual"):
            fn(x, weight, bias, res[:, :, :1], None, None, s, p, True)
        with pytest.raises(TypeError, match="in_mask must be bool"):
            fn(x, weight, bias, None, in_mask.float(), None, s, p, True)
        with pytest.raises(ValueError, match="out_mask must have shape"):
            fn(x, weight, bias, None, None, out_mask[:1], s, p, True)
        with pytest.raises(ValueError, match="stride"):
            fn(x, weight, bias, None, None, None, [0, 1], p, True)
        with pytest.raises(ValueError, match="does not fit"):
            fn(x[:, :, :1, :1], weight, bias, None, None, None, [1, 1], [0, 0], True)


def test_opcheck_fused_ops() -> None:
    logits = torch.randn(5, 21)
    torch.library.opcheck(torch.ops.pathrt.daq_threshold_pack.default, (logits,))
    x = torch.randn(3, 4, 5, 5)
    mask = torch.rand(3, 4) > 0.5
    for xx in (x, x.contiguous(memory_format=CL)):
        torch.library.opcheck(torch.ops.pathrt.masked_bias_relu.default, (xx, torch.randn(4), mask))
        torch.library.opcheck(torch.ops.pathrt.masked_bias_relu.default, (xx, None, mask.float()))
        torch.library.opcheck(torch.ops.pathrt.masked_bias_relu_.default, (xx.clone(), torch.randn(4), mask))
    for layout in ("nchw", "channels_last"):
        args = _conv_inputs(CONV_CASES[1], layout, 0.5, 0.5, True)
        torch.library.opcheck(torch.ops.pathrt.pathway_conv2d.default, (*args, True))
        torch.library.opcheck(torch.ops.pathrt.pathway_conv2d.default, (args[0], args[1], None, None, None, None,
                                                                        args[6], args[7], False))


@pytest.mark.slow
def test_fused_ops_under_torch_compile_fullgraph() -> None:
    x, weight, bias, res, in_mask, _, s, p = _conv_inputs(CONV_CASES[1], "nchw", 0.5, 0.5, True)

    def explain_tail(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, masks, packed, counts = torch.ops.pathrt.daq_threshold_pack(logits)
        y = torch.ops.pathrt.pathway_conv2d(x, weight, bias, res, in_mask, masks[:, :7], s, p, True)
        z = torch.ops.pathrt.masked_bias_relu(y * 2.0, None, masks[:, 7:14])
        w = z.clone()
        torch.ops.pathrt.masked_bias_relu_(w, bias, masks[:, :7])
        return scores, packed, counts, z, w

    logits = torch.randn(3, 14)
    compiled = torch.compile(explain_tail, fullgraph=True, backend="inductor")
    for got, want in zip(compiled(logits, x), explain_tail(logits, x), strict=True):
        torch.testing.assert_close(got, want)
