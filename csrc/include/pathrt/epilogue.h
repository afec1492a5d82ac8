// Element arithmetic of the fused deployed-path ops, shared by the CPU and CUDA kernels.
//
// __host__ __device__ like bitops.h: the CPU kernels (which the tests run) and the CUDA kernels
// (which CI compiles but cannot run) compute every output value with these same functions.
#pragma once

#include <cmath>
#include <cstdint>
#if defined(__SSE__) && !defined(__CUDA_ARCH__)
#include <xmmintrin.h>
#endif

#include "pathrt/bitops.h"

namespace pathrt {

// The DAQ inference threshold (SPEC §3): a neuron is kept when sigmoid(logit) >= 0.5.
constexpr float kMaskThreshold = 0.5f;

PATHRT_HD float sigmoid(float logit) { return 1.0f / (1.0f + expf(-logit)); }

PATHRT_HD bool keeps(float score) { return score >= kMaskThreshold; }

// Scores (sigmoid), masks (kept) and the packed byte (bit j = value j) of up to 8 consecutive logits.
PATHRT_HD uint8_t threshold_pack_byte(const float* logits, float* scores, bool* masks, int64_t count) {
  uint8_t bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    const float s = sigmoid(logits[j]);
    const bool keep = keeps(s);
    scores[j] = s;
    masks[j] = keep;
    bits |= static_cast<uint8_t>(keep) << j;
  }
  return bits;
}

// max(v, 0), 0 for NaN, as a select: relu_value for loops left to the compiler's vectorizer, where the
// scalar MAXSS would keep them scalar.
PATHRT_HD float relu_select(float v) { return v > 0.0f ? v : 0.0f; }

// max(v, 0), 0 for NaN. On x86 hosts one MAXSS: GCC compiled `v > 0 ? v : 0` to a branch, mispredicted
// on half of the values (VGG-11's sparse 64->128 conv at 32x32, batch 1: 50k values took 285 us in its
// epilogue), and fmaxf to a libm call.
PATHRT_HD float relu_value(float v) {
#if defined(__CUDA_ARCH__)
  return fmaxf(v, 0.0f);
#elif defined(__SSE__)
  return _mm_cvtss_f32(_mm_max_ss(_mm_set_ss(v), _mm_setzero_ps()));  // v > 0 ? v : 0
#else
  return relu_select(v);
#endif
}

// The conv epilogue: acc + bias (+ residual), then ReLU when asked.
PATHRT_HD float bias_act(float acc, float bias, float residual, bool relu) {
  const float v = acc + bias + residual;
  return relu ? relu_value(v) : v;
}

// relu(x + bias) * mask, the pathway pass's epilogue for one value; a zero mask gives exactly
// `fill` (0 for zero ablation, the channel's mean activation for mean ablation).
PATHRT_HD float masked_bias_relu_value(float x, float bias, float mask, float fill) {
  return mask == 0.0f ? fill : bias_act(x, bias, 0.0f, true) * mask;
}

// Input coordinate read by output coordinate `o` at kernel offset `d`; -1 when it lies in the
// zero padding.
PATHRT_HD int64_t conv_input_coord(int64_t o, int64_t d, int64_t stride, int64_t pad, int64_t size) {
  const int64_t i = o * stride - pad + d;
  return (i >= 0 && i < size) ? i : -1;
}

// Output size of a convolution along one axis.
PATHRT_HD int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad) {
  return (size + 2 * pad - kernel) / stride + 1;
}

}  // namespace pathrt
