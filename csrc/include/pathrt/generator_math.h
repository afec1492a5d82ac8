// Element arithmetic of the fused generator ops (rfe_tail, pdn_encoder_layer, rpd_decode), shared
// by the CPU and CUDA kernels like epilogue.h: both compute every value with these functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "pathrt/bitops.h"

namespace pathrt {

// exp, sigmoid, tanh and erf written branch-free (relative error ~1e-7, absolute ~1.5e-7 for erf),
// so that `#pragma omp simd` loops vectorize them on the CPU; the CUDA kernels use the same
// functions, so both devices give the same values.

// e^x: x = k ln2 + r, e^r by the Cephes polynomial, 2^k by building the float's exponent bits.
PATHRT_HD float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // (a NaN stays NaN through the polynomial)
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

PATHRT_HD float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

PATHRT_HD float tanh_approx(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
PATHRT_HD float erf_approx(float x) {
  const float a = fabsf(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                     t * 1.061405429f))));
  const float y = 1.0f - poly * exp_approx(-a * a);
  return x < 0.0f ? -y : y;
}

// Exact (erf) GELU, as torch's nn.GELU() and the encoder's activation="gelu".
PATHRT_HD float gelu(float x) { return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f)); }

// The sum of term(i) for i < n in one fixed order on every device: eight interleaved partial sums (lane
// i % 8) added pairwise at the end: independent chains, where one running sum waited on every add's
// latency. The encoder's LayerNorm rows and attention scores (chains of 128 and 32 adds) were most of
// its time between GEMMs: the embedded model's batch-64 encoder 1.42-1.43 -> 1.28-1.29 ms, 2 threads.
template <class Term>
PATHRT_HD float interleaved_sum(int64_t n, Term term) {
  float lane[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int u = 0; u < 8; ++u) lane[u] += term(i + u);
  }
  for (int u = 0; i + u < n; ++u) lane[u] += term(i + u);
  return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

// y = LayerNorm(x) * weight + bias (+ add), over one row of d values (two-pass mean and variance,
// biased variance, as torch). y may alias x.
PATHRT_HD void layer_norm_row(const float* x, const float* weight, const float* bias, const float* add, float eps,
                              int64_t d, float* y) {
  const float mean = interleaved_sum(d, [&](int64_t i) { return x[i]; }) / static_cast<float>(d);
  const float var = interleaved_sum(d, [&](int64_t i) { return (x[i] - mean) * (x[i] - mean); });
  const float rstd = 1.0f / sqrtf(var / static_cast<float>(d) + eps);
  for (int64_t i = 0; i < d; ++i) {
    y[i] = (x[i] - mean) * rstd * weight[i] + bias[i] + (add ? add[i] : 0.0f);
  }
}

// One GRUCell output value (gates in torch's order r, z, n): gi = W_ih x + b_ih, gh = W_hh h + b_hh,
// each of 3d values, j < d.
PATHRT_HD float gru_value(const float* gi, const float* gh, float h, int64_t j, int64_t d) {
  const float r = sigmoid_approx(gi[j] + gh[j]);
  const float z = sigmoid_approx(gi[d + j] + gh[d + j]);
  const float n = tanh_approx(gi[2 * d + j] + r * gh[2 * d + j]);
  return (1.0f - z) * n + z * h;
}

// One query row of softmax(q K^T * scale) V over a short sequence of t keys: q, k_j and v_j are
// dh values; k and v rows are `stride` floats apart; out gets dh values. `scores` holds t floats.
PATHRT_HD void attention_row(const float* q, const float* k, const float* v, int64_t stride, int64_t t, int64_t dh,
                             float scale, float* scores, float* out) {
  float top = -INFINITY;
  for (int64_t j = 0; j < t; ++j) {
    const float* kj = k + j * stride;
    scores[j] = interleaved_sum(dh, [&](int64_t e) { return q[e] * kj[e]; }) * scale;
    top = scores[j] > top ? scores[j] : top;
  }
  float total = 0.0f;
  for (int64_t j = 0; j < t; ++j) {
    scores[j] = exp_approx(scores[j] - top);
    total += scores[j];
  }
  for (int64_t e = 0; e < dh; ++e) out[e] = 0.0f;
  for (int64_t j = 0; j < t; ++j) {
    const float p = scores[j] / total;
    for (int64_t e = 0; e < dh; ++e) out[e] += p * v[j * stride + e];
  }
}

}  // namespace pathrt
