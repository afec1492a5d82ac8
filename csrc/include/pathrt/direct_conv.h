// The direct conv: pathrt's own kernel for the convs of a batch-1 explanation, where oneDNN's per-call
// setup (torch's mkldnn ops build the primitive's descriptors on every call: 31 us for an 8->8 conv at
// 2x2 on one thread) is a large share of a conv of a few million multiply-adds. It reads the input,
// zero-padded and channels-last, in place: each output pixel's window is a fixed offset per tap from
// one base, so there is no im2col. The weight is blocked once, at load, as (O/B, kh, kw, C, B): a block
// of B outputs' weights is one contiguous run, read as vectors over the outputs while each input value
// is broadcast, in register tiles of 4 vectors x 6 pixels (B = 64, AVX-512) down to 2 x 6 (AVX2).
// Bias, residual and ReLU are its epilogue (pathrt/epilogue.h's arithmetic, vectorised).
//
// Measured on one thread against torch's prepacked oneDNN conv (channels-last, bias and ReLU fused),
// us: the embedded model's convs 3->32 at 32x32 16 / 47, 32->64 at 16x16 54 / 83, 64->128 at 8x8 61 /
// 82, 128->128 at 8x8 119 / 125, 128->256 at 4x4 65 / 89; ResNet-18@64's stem 119 / 149, 64->64 at
// 16x16 107 / 126, 128->256 stride 2 57 / 89. Above ~16M multiply-adds oneDNN's kernel is as fast or
// faster (VGG-11@64's 64->128 at 32x32: 891 against 827; 256->256 at 16x16 2040 against 1584): hence
// kDirectMaxMacs, which a weight over kLargeWeight (streamed from memory) fits only on maps of a few
// pixels (the session's rule for its dense convs: direct_conv_pays in pathrt/packed_conv.h).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pathrt {

constexpr int64_t kDirectMaxMacs = int64_t{1} << 24;
// Output pixels per parallel task of direct_conv_raw (with each block of outputs): a multiple of every
// kernel's register tile.
constexpr int64_t kDirectTilePixels = 48;
// The same for the pathway pass's channel-sparse convs of 1-3 samples, whose other way is an im2col GEMM
// or shifted planes (pathway_conv2d's), not oneDNN: VGG-11@64's 24-31M multiply-add pathway convs at
// batch 1 took 250-270 us (256->256 at 16x16) and 360-390 (512->512 at 8x8) direct against 340-390 and
// 600-640 us through those on 2 cores, and 40%-kept 256->256 at 24x24 and 32x32 and 512->512 at 16x16
// (48-95M) 590, 880 and 1700 us against 740, 1030 and 1980; 128->128 at 64x64 (89M), whose rows suit the
// shifted planes, 1220 against 1070.
constexpr int64_t kSparseDirectMaxMacs = int64_t{1} << 26;

// Whether a conv of `images` images and `macs` multiply-adds in all runs direct: fewer than
// kMinGemmImages images, at most `max_macs` multiply-adds. Down to one output pixel: at 2x2 and 1x1 maps
// the direct conv beat the dot products that ran there before, weights streamed (2 threads, batch 1, a
// rotation of weight copies over 24 MB, us): 512->512 3x3 at 2x2 197 / 158, at 1x1 176 / 157, 256->512
// stride 2 from 4x4 108 / 87, 256->256 at 2x2 59 / 45, 128->128 20 / 15, 64->64 11 / 7.
bool direct_conv_fits(int64_t images, int64_t macs, int64_t max_macs = kDirectMaxMacs);

// The outputs a copy of `kept` outputs' weights holds for direct_conv_raw: `kept` rounded up to 16 while it
// is at most 16, else to 32, so that its blocks are 32 or 64 outputs wide (direct_block). Blocks of 16 run
// the 1 x 12 register tile, ~150 GFLOP/s on one AVX-512 core where 2 x 12 and 4 x 6 run 190-225 (the
// rounding's extra outputs cost less: VGG-11@64's 128->256 pathway conv at batch 1, 104 kept outputs,
// 165-169 -> 145-156 us).
int64_t direct_outputs(int64_t kept);

// The output block of a weight with `outputs` output channels (a multiple of 16): 64, 32 or 16.
int64_t direct_block(int64_t outputs);

// The kernel on raw buffers: y (n * ho * wo, o) = conv of `padded` ((n, hp, wp, c), its zero padding
// included) with `blocked` ((o / block, kh, kw, c, block)) + bias (+ residual, (n * ho * wo, o)) (then ReLU);
// bias and residual may be null. With `kept`, `blocked` is (o / block, kh, kw, weight_channels, block) and
// input channel i meets its channel kept[i]: a channel-sparse conv over the weight in place, with no copy
// of the kept weights. With `keep` (o words, each all ones or zero), the outputs whose word is zero are
// written as 0 (a channel mask applied in the epilogue: 0 for NaN and Inf too).
void direct_conv_raw(const float* padded, int64_t n, int64_t hp, int64_t wp, int64_t c, const float* blocked,
                     int64_t o, int64_t block, int64_t kh, int64_t kw, int64_t ho, int64_t wo, int64_t sh, int64_t sw,
                     const float* bias, const float* residual, bool relu, float* y, const int64_t* kept = nullptr,
                     int64_t weight_channels = 0, const uint32_t* keep = nullptr);

// The kept outputs out_idx (ascending) and kept inputs in_idx of `blocked` ((O/block, taps, c, block)),
// blocked again for direct_conv_raw: dst (direct_outputs(kout) / out_block, taps, kin, out_block), the
// rounding's outputs zero. Each (tap, input) row of the kept weights is a few whole lines of `blocked`
// (an OIHW weight puts every output on its own line), compacted with AVX-512's compress where there is one.
void direct_kept_weight(const float* blocked, int64_t block, int64_t taps, int64_t c,
                        const std::vector<int64_t>& in_idx, const std::vector<int64_t>& out_idx, int64_t out_block,
                        float* dst);

// Where a conv weight's kept weights lie, in any layout: output o's for kept input j and tap t at
// weight + o * out_stride + in_at[j] + tap_at[t]; blocked rows of `block` floats.
struct KeptWeights {
  const float* weight;
  int64_t out_stride;
  const int64_t* in_at;
  int64_t kin;
  const int64_t* tap_at;
  int64_t taps, block;
};

// Up to 16 kept outputs (out[0, lanes)) of `g` blocked for direct_conv_raw: row (tap, j) at
// dst + (tap * kin + j) * block holds their weights in its first `lanes` floats, then zeros to 16. One
// AVX-512 gather per row where there is one: an OIHW weight holds an output's kept weights a few floats
// apart, and a float at a time took 150 us of VGG-11@64's batch-1 pathway 256->512 conv (106 x 190 kept,
// 270 us in all) and 310 of its 512->512 (190 x 214, 500-530 us); gathered, 100-115 and 180-200 on 2
// cores. (16 x 16 transposes of masked loads measured the same: the scattered lines bound it.)
void direct_gathered_weight(const KeptWeights& g, const int64_t* out, int64_t lanes, float* dst);

// An (O, C, kh, kw) float weight blocked for direct_conv2d: (O/B, kh, kw, C, B), B the largest of 64, 32,
// 16 that divides O.
at::Tensor direct_conv_weight(const at::Tensor& weight);

// conv(x, the weight direct_conv_weight blocked) + bias (+ residual) (then ReLU); x NCHW or channels-last
// float; bias and residual may be undefined; channels-last out.
at::Tensor direct_conv2d(const at::Tensor& x, const at::Tensor& blocked, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, c10::IntArrayRef stride, c10::IntArrayRef padding);

}  // namespace pathrt
