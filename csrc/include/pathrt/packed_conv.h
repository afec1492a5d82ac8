// PackedConv: a conv2d whose weight is reordered once, at bundle load, into the layout oneDNN's
// kernel wants (torch's mkldnn::_reorder_convolution_weight), then run by
// mkldnn::_convolution_pointwise with the bias, the residual add and the ReLU fused into its
// epilogue, on channels-last activations: what torch.compile's freezing pass emits. at::conv2d
// instead reorders the weight on every call. Measured on 2 cores at batch 1: ResNet-18@64's convs
// 4.6 ms packed against 6.4 ms through at::conv2d (weight-bandwidth bound layers gain most); at
// batch 64 within 10% either way. Small convs (below kMinPackedMacs) keep at::conv2d, whose im2col
// kernel has less per-call setup. Without oneDNN it runs at::conv2d. Convs of 1-3 images that
// direct_conv_pays picks run through pathrt's direct conv (pathrt/direct_conv.h): at batch 1 oneDNN's
// per-call setup is a large share of such a conv. It reads a second copy of the weight, blocked for it
// (weights whose outputs are a multiple of 16): at load under kLargeWeight, else on the first such call.
// The session's dry run at load makes that copy for the convs its batch-1 calls run direct: ResNet-18@64's
// layer-4 convs at 2x2, +30 MB on a 192 MB session; where the dot products ran them, its plain phase took
// 1.54-1.56 -> 1.43-1.47 ms at batch 1 and 3.75-3.81 -> 3.55-3.68 at batch 3 (alternating processes).
// Those the direct conv cannot take, of at most kGemmPixels output pixels per image over 1-3 images, run
// as pathway_conv2d's dot products (dot_conv_pays).
// 1x1 convs of stride 1 over at least kMinPointwiseRows pixels run as one GEMM (pointwise_conv2d).
//
// The packed layout oneDNN wants depends on the input's shape (on AVX2: Acdb32a at batch 1, a padded
// Acdb24a at batch 4): a weight packed for no shape in particular was reordered again on every call
// whose shape wanted another layout, by oneDNN's slow generic reorder (7 ms per call for a 128x128x3x3
// weight at batch 4, against 0.7 ms for the conv itself). The layout depends on the thread count as
// well (one thread wants Acdb24a where two want Acdb32a at batch 1). So the weight is packed per (input
// shape, OpenMP thread count), on first use, with that shape (`input_size`), and the last
// kMaxPackedShapes packings are kept (LRU, shared by copies, safe for concurrent callers): memory is at
// most that many copies of the weight.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

namespace pathrt {

class PackedConv {
 public:
  PackedConv() = default;
  PackedConv(const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding);

  // conv(x) + bias (+ residual) (then ReLU), channels-last out; bias and residual may be undefined.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual, bool relu) const;
  // The same, written into `out`: a channels-last (N, O, H', W') tensor such as a slice of a larger
  // batch. The 1x1 convs of pointwise_conv2d write it in place; the others are copied into it.
  void into(const at::Tensor& x, const at::Tensor& bias, bool relu, const at::Tensor& out) const;

  bool packed() const { return packed_; }
  const at::Tensor& weight() const { return plain_; }
  // The weight blocked at load for the direct conv (direct_conv_weight), or undefined where its shape does
  // not allow or it has kLargeWeight floats or more: pathway_conv2d reads it in place, and a larger one
  // would stream whole where the kept rows it reads otherwise are ~40% (ResNet-18@64's batch-1 pathway
  // phase took 0.94-0.97 -> 1.12-1.18 ms with its layer-4 weights blocked).
  const at::Tensor& blocked() const { return direct_; }

  // Whether conv(x) runs on pathrt's own kernels (the direct conv or the dot products), whose loops
  // a session call shares with its call pool (pathrt/call_pool.h), rather than oneDNN's, at::conv2d's
  // or MKL's, which thread through OpenMP.
  bool own_kernels(const at::Tensor& x) const;
  static constexpr size_t kMaxPackedShapes = 8;

 private:
  struct Cache;
  enum class Kernel { Direct, Conv2d, Dot, Gemm, Pointwise, OneDnn };
  Kernel kernel_for(const at::Tensor& x) const;  // the rules below, in order
  at::Tensor packed_for(const at::Tensor& input) const;
  const at::Tensor& direct_weight_for_call() const;  // direct_, else the weight blocked on first use

  at::Tensor plain_;
  at::Tensor direct_;  // blocked for direct_conv2d (pathrt/direct_conv.h) at load, under kLargeWeight
  std::vector<int64_t> stride_, padding_;
  bool packed_ = false;
  std::shared_ptr<Cache> cache_;
};

// conv(x, weight) + bias (+ residual) (then ReLU) by oneDNN's conv with the bias, the residual add and
// the ReLU fused (mkldnn::_convolution_pointwise), channels-last out: `weight` packed by PackedConv, or a
// dense channels-last weight that oneDNN reorders on the call. Needs packed_convs_available().
at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, c10::IntArrayRef stride, c10::IntArrayRef padding);

// The end of a conv computed without its bias, in one pass over the pixels: `y`, (N, kout, H, W), the
// outputs `keep` (undefined: every output) of a conv with `channels` outputs, to its (N, channels, H, W)
// channels-last output with bias (undefined: none), the residual's channels (read in place), ReLU when
// asked and the pathway mask (N, channels) (undefined: none); the channels outside keep 0, in place on
// y when keep is undefined. For a session union conv it replaced gathering the residual's kept channels,
// the bias, ReLU and mask passes and placing the kept channels, each a pass of its own (ResNet-18@64's
// pathway phase at batch 64 on 2 cores: 36.6 -> 33.7 ms, medians of three interleaved runs); for the
// batched GEMM conv, GEMM's own bias (a copy of the bias to every row first) and the residual and ReLU
// passes.
at::Tensor conv_epilogue(const at::Tensor& y, const at::Tensor& keep, int64_t channels, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, const at::Tensor& mask);

// A conv on small output maps as one GEMM over the whole batch: oneDNN runs a batch image by image,
// and a map of a few pixels does too little arithmetic per weight to hide streaming a weight larger
// than the L2 again for every image (ResNet-18@64's 512->512 3x3 at 2x2, batch 64: 10.7 ms in
// oneDNN's packed conv, 62 GMAC/s on 2 cores). The im2col of the batch (rows: output pixels,
// (tap, channel) columns, copied as channel runs from channels-last input) times the channels-last
// weight read as a (O, kh*kw*C) matrix reads every weight once per call; bias, residual and ReLU by
// conv_epilogue after it; channels-last out. Measured in the session (2 threads, interleaved): ResNet-18@64's
// plain phase at batch 64 82 -> 53.6 ms, at 16 22.8 -> 16.3, at 4 7.6 -> 6.9, its pathway phase at
// 64 45 -> 34 ms (union convs); at batch 1 slower (plain 3.8 -> 4.7 ms: MKL's GEMM of 4 rows against
// oneDNN's), and so are VGG-11@64's 4x4 convs at batches 1 and 2 (plain 5.1 -> 5.9 and 9.3 -> 9.6 ms;
// 16.0 -> 15.7 at 4): hence kMinGemmImages. At 4x4 it pays only for weights larger than the L2
// (VGG-11@64's 512->512: plain 211 -> 202 ms at batch 64; the embedded model's 128->256 at 4x4 was
// slower, 9.1 -> 9.7).
constexpr int64_t kMinGemmImages = 4, kMinGemmRows = 16, kGemmPixels = 4, kGemmPixelsLargeWeight = 16;
constexpr int64_t kLargeWeight = int64_t{1} << 20;  // floats: 4 MB
// gemm_conv2d skips the padding's taps from this many images on, one GEMM per kernel window (ResNet-18@64
// at batch 64, session phases, means of 3 interleaved rounds: plain 73.9 -> 68.9 ms, pathway 33.4 -> 31.6);
// at 4 it was slower (plain 8.9 -> 9.2: the windows' weight blocks, 16/9 of the weight at 2x2, stream per
// GEMM of a few rows) and at 16 no faster.
constexpr int64_t kMinWindowImages = 32;
bool gemm_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding);
// The kept weights as gemm_conv2d's matrix: rows keep_out of the (O, C, kh, kw) weight, each its (tap,
// channel) values over the channels keep_in (undefined: all; a view of a channels-last weight when both
// are), gathered in one pass; viewed (kout, kh, kw, kin), a channels-last conv weight.
at::Tensor kept_weight(const at::Tensor& weight, const at::Tensor& keep_out, const at::Tensor& keep_in);
// Whether an (O, C, kh, kw) weight is input-major: a view of (C, kh, kw, O) memory. Read from the strides
// (as permute({1, 2, 3, 0}).is_contiguous() would, without the view: ~2 us of a batch-1 pathway conv).
bool is_input_major(const at::Tensor& weight);
// The kept input channels keep_in of an input-major weight (an (O, C, kh, kw) view of (C, kh, kw, O)
// memory) as a (kh * kw * kin, O) matrix, one contiguous copy of O floats per (tap, kept channel): a
// conv that keeps every output but a few inputs reads only those inputs' weights (ResNet-18@64's
// layer4.1.conv1, 208 of 512 inputs at batch 64: kept_weight's gather 824 us).
at::Tensor kept_inputs(const at::Tensor& input_major, const at::Tensor& keep_in);
// conv(x's channels keep_in (undefined: all), weight_matrix (kh * kw * kin, O): kept_inputs or
// kept_weight transposed) + bias (+ residual) (then ReLU) as above, kh x kw kernel, over each output
// pixel's taps inside the input only from kMinWindowImages images on; x NCHW or channels-last, float;
// channels-last out.
at::Tensor gemm_conv2d(const at::Tensor& x, const at::Tensor& weight_matrix, const at::Tensor& keep_in, int64_t kh,
                       int64_t kw, const at::Tensor& bias, const at::Tensor& residual, bool relu,
                       c10::IntArrayRef stride, c10::IntArrayRef padding);

// A conv of at most kGemmPixels output pixels per image over fewer than kMinGemmImages images that the
// direct conv cannot take (it is faster still where it can: direct_conv_fits in pathrt/direct_conv.h): oneDNN
// streams the weight once per image at a few multiply-adds per weight, on one thread per image at batch
// 1. pathway_conv2d's dot products read it once per call, in place (the channels-last rows), on every
// thread the call has. Measured on 2 cores with a 512->512 3x3 weight at 2x2: batch 1 459 -> 393 us on 1
// thread, 359 -> 301 on 2; batch 2 631 -> 370 and batch 3 705 -> 486 us on 2; ResNet-18@64's plain pass
// at batch 1 3.75 -> 3.27 ms. Smaller weights too (2 threads, oneDNN's prepacked conv against the dot
// products, us, batch 1 / 2 / 3): 256->512 1x1 stride 2 at 2x2 35 / 18, 64 / 30, 49 / 40; 128->128 3x3
// at 2x2 33 / 18, 39 / 31, 43 / 41; 64->64 3x3 at 2x2 30 / 18, 29 / 17, 29 / 21; and in a session call a
// step on oneDNN wakes OpenMP's team too (ResNet-18@64's layer4 downsample at batch 1 took ~180 us there).
// At 3x3 and 4x4 maps oneDNN is faster (525 against 668 us and 643 against 898 on 1 thread).
bool dot_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding);

// Whether conv(x, weight) runs through the direct conv (pathrt/direct_conv.h): a float CPU weight whose
// output channels are a multiple of 16 (direct_conv_weight can block it), and a conv that direct_conv_fits.
bool direct_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding);

// Whether conv(x, weight) is a 1x1 conv of stride 1, unpadded, over at least kMinPointwiseRows output
// pixels of the batch: on channels-last input it is one GEMM of the pixels' rows by the transposed
// (O, C) weight, read in place with no im2col, and pointwise_conv2d runs it so. oneDNN's conv was about
// twice as slow on such shapes, the generator's RFE stems at batch 64 (64 x C x 8 x 8 to 32 channels,
// 2 threads): C = 32 164 against 82 us, 64 179 / 149, 128 299 / 188, 256 at 4x4 215 / 120.
constexpr int64_t kMinPointwiseRows = 256;
bool pointwise_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride,
                         c10::IntArrayRef padding);
// The 1x1 conv pointwise_conv_pays takes: mm of x's channels-last rows by weight's (O, C) transpose,
// then bias (+ residual) (then ReLU) by conv_epilogue; channels-last out, into `out` when it is defined
// (channels-last (N, O, H, W)).
at::Tensor pointwise_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& residual, bool relu, const at::Tensor& out = {});

// Whether PackedConv and onednn_conv2d use oneDNN in this build (torch built with MKLDNN, a CPU with its
// kernels).
bool packed_convs_available();

}  // namespace pathrt
