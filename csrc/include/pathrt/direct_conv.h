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
// kDirectMaxMacs. Weights over kLargeWeight stream from memory and take the GEMM or dot-product paths
// (the session's rule for its dense convs: direct_conv_pays in pathrt/packed_conv.h).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pathrt {

constexpr int64_t kDirectMaxMacs = int64_t{1} << 24;

// Whether a conv of `images` images, `pixels` output pixels each and `macs` multiply-adds in all runs
// direct: fewer than kMinGemmImages images, more than kGemmPixels pixels (fewer take the dot products), at
// most kDirectMaxMacs multiply-adds.
bool direct_conv_fits(int64_t images, int64_t pixels, int64_t macs);

// The output block of a weight with `outputs` output channels (a multiple of 16): 64, 32 or 16.
int64_t direct_block(int64_t outputs);

// The kernel on raw buffers: y (n * ho * wo, o) = conv of `padded` ((n, hp, wp, c), its zero padding
// included) with `blocked` ((o / block, kh, kw, c, block)) + bias (+ residual, (n * ho * wo, o)) (then ReLU);
// bias and residual may be null. With `kept`, `blocked` is (o / block, kh, kw, weight_channels, block) and
// input channel i meets its channel kept[i]: a channel-sparse conv over the weight in place, with no copy
// of the kept weights.
void direct_conv_raw(const float* padded, int64_t n, int64_t hp, int64_t wp, int64_t c, const float* blocked,
                     int64_t o, int64_t block, int64_t kh, int64_t kw, int64_t ho, int64_t wo, int64_t sh, int64_t sw,
                     const float* bias, const float* residual, bool relu, float* y, const int64_t* kept = nullptr,
                     int64_t weight_channels = 0);

// The kept outputs out_idx (ascending) and kept inputs in_idx of `blocked` ((O/block, taps, c, block)),
// blocked again for direct_conv_raw: dst ((kout rounded up to 16) / out_block, taps, kin, out_block), the
// rounding's outputs zero. Each (tap, input) row of the kept weights is a few whole lines of `blocked`
// (an OIHW weight puts every output on its own line), compacted with AVX-512's compress where there is one.
void direct_kept_weight(const float* blocked, int64_t block, int64_t taps, int64_t c,
                        const std::vector<int64_t>& in_idx, const std::vector<int64_t>& out_idx, int64_t out_block,
                        float* dst);

// An (O, C, kh, kw) float weight blocked for direct_conv2d: (O/B, kh, kw, C, B), B the largest of 64, 32,
// 16 that divides O.
at::Tensor direct_conv_weight(const at::Tensor& weight);

// conv(x, the weight direct_conv_weight blocked) + bias (+ residual) (then ReLU); x NCHW or channels-last
// float; bias and residual may be undefined; channels-last out.
at::Tensor direct_conv2d(const at::Tensor& x, const at::Tensor& blocked, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, c10::IntArrayRef stride, c10::IntArrayRef padding);

}  // namespace pathrt
