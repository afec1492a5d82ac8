// The CPU kernels of the pathrt ops as C++ functions (schemas and semantics: pathrt/runtime/ops.py).
// They are registered with the dispatcher for torch.ops.pathrt, and the ExplainSession calls them
// directly, so a C++ program needs no Python op registration.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pathrt {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> daq_threshold_pack_cpu(const at::Tensor& logits);

// fill: what a removed channel holds (float32 (C,); none: 0).
at::Tensor masked_bias_relu_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                const c10::optional<at::Tensor>& fill = c10::nullopt);

void masked_bias_relu_inplace_cpu(at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                  const c10::optional<at::Tensor>& fill = c10::nullopt);

// pathway_conv2d computes runs of equal-mask samples of at most kDotMaxPixels output pixels (batch x H x
// W) as dot products over the kept weights read in place (through the direct conv when they read its blocked
// weight in place: every output computed, or few dropped), wider runs of 1-3 samples through the direct
// conv (pathrt/direct_conv.h) while they do at most kSparseDirectMaxMacs multiply-adds, others as GEMMs; one
// sample at stride 1 on rows of 4-8 pixels (a small kept weight) as one pass of every tap over its kept
// inputs' planes, the OIHW weight read in place (fused_ops.cpp's PlanarConv, AVX-512). Runs
// whose masks differ in a few channels are merged, over the union of their masks, where that costs
// fewer multiply-adds than a run's own overhead; a merged run takes the direct conv up to kDirectMaxMacs. It
// reads the weight in its memory layout: OIHW always; channels-last and input-major ((C_in, kH, kW, C_out)
// in memory, C_out a multiple of kInputMajorBlock) when every run takes the dot products, any other layout
// as an OIHW copy.
// Input-major rows hold each kept input's weights contiguously, where OIHW rows hold them scattered:
// for convs whose input alone is masked.
constexpr int64_t kDotMaxPixels = 16, kInputMajorBlock = 64;
at::Tensor pathway_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_mask,
                              const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, bool relu);
// The same, given `blocked`: the weight as direct_conv_weight blocks it (pathrt/direct_conv.h), which
// the direct conv's runs then read in place (undefined: none, as above).
at::Tensor pathway_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_mask,
                              const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, bool relu, const at::Tensor& blocked);

// y (rows, out) = x (rows, in) W^T + bias (null: none), then ReLU if relu: a linear on a few rows (at most
// kDotMaxPixels; x's rows `in` floats apart, `in` a multiple of kFewRowsAlign) as the pathway conv's dot products over
// the weight (out, in, row-major) read in place, four rows at a time, prefetched. For weights too large
// to keep a packed copy of (SmallLinear), which MKL's GEMM streamed at 7-9 GB/s at these shapes.
constexpr int64_t kFewRowsAlign = 16;
void few_rows_linear_cpu(const float* x, int64_t rows, const float* w, int64_t out, int64_t in, const float* bias,
                         bool relu, float* y);

at::Tensor rfe_tail_cpu(at::TensorList maps, const at::Tensor& cls, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& norm_weight, const at::Tensor& norm_bias, const at::Tensor& position,
                        double eps);

at::Tensor pdn_encoder_layer_cpu(const at::Tensor& x, at::TensorList params, int64_t heads, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rpd_decode_cpu(const at::Tensor& z,
                                                                                      at::TensorList params,
                                                                                      at::TensorList heads, double eps);

}  // namespace pathrt
