// CUDA kernels of the fused generator ops (rfe_tail, pdn_encoder_layer, rpd_decode): everything
// between the GEMMs (which the registration runs with ATen / cuBLAS). No torch header here;
// csrc/cuda/generator_ops_cuda.cpp registers the ops. Every value comes from pathrt/generator_math.h,
// the functions the CPU kernels use.
#include <cuda_runtime.h>

#include "pathrt/cuda_launchers.h"
#include "pathrt/generator_math.h"

namespace pathrt {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t total) { return (total + kThreads - 1) / kThreads; }

__global__ void mean_pool_cl_kernel(const float* __restrict__ map, float* __restrict__ out, int64_t n, int64_t plane,
                                    int64_t c, int64_t out_stride) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * c) return;
  const int64_t s = idx / c, ch = idx % c;
  float total = 0.0f;
  for (int64_t px = 0; px < plane; ++px) total += map[(s * plane + px) * c + ch];
  out[s * out_stride + ch] = total / static_cast<float>(plane);
}

__global__ void layer_norm_rows_kernel(float* x, const float* __restrict__ in_bias, const float* __restrict__ w,
                                       const float* __restrict__ b, const float* __restrict__ add, int64_t add_rows,
                                       float eps, int64_t rows, int64_t d, float* y) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float* xr = x + r * d;
  if (in_bias) {
    for (int64_t i = 0; i < d; ++i) xr[i] += in_bias[i];
  }
  layer_norm_row(xr, w, b, add ? add + (r % add_rows) * d : nullptr, eps, d, y + r * d);
}

__global__ void attention_kernel(const float* __restrict__ qkv, float* __restrict__ out, int64_t n, int64_t t,
                                 int64_t d, int64_t heads, float scale) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * heads * t) return;
  const int64_t s = idx / (heads * t), head = (idx / t) % heads, i = idx % t, dh = d / heads;
  float scores[kMaxAttentionTokens];
  const float* base = qkv + s * t * 3 * d + head * dh;
  attention_row(base + i * 3 * d, base + d, base + 2 * d, 3 * d, t, dh, scale, scores, out + (s * t + i) * d + head * dh);
}

__global__ void bias_act_kernel(float* x, const float* __restrict__ bias, int64_t rows, int64_t d, bool apply_gelu) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * d) return;
  const float v = x[idx] + bias[idx % d];
  x[idx] = apply_gelu ? gelu(v) : v;
}

__global__ void gru_kernel(const float* __restrict__ gi, const float* __restrict__ gh, const float* __restrict__ h,
                           float* __restrict__ out, int64_t n, int64_t layers, int64_t layer, int64_t d) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * d) return;
  const int64_t s = idx / d, j = idx % d;
  out[idx] = gru_value(gi + (s * layers + layer) * 3 * d, gh + s * 3 * d, h[idx], j, d);
}

}  // namespace

cudaError_t launch_mean_pool_cl(const float* map, float* out, int64_t n, int64_t plane, int64_t c, int64_t out_stride,
                                cudaStream_t stream) {
  if (n * c == 0) return cudaSuccess;
  mean_pool_cl_kernel<<<blocks_for(n * c), kThreads, 0, stream>>>(map, out, n, plane, c, out_stride);
  return cudaGetLastError();
}

cudaError_t launch_layer_norm_rows(float* x, const float* in_bias, const float* w, const float* b, const float* add,
                                   int64_t add_rows, float eps, int64_t rows, int64_t d, float* y,
                                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  layer_norm_rows_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(x, in_bias, w, b, add, add_rows, eps, rows, d, y);
  return cudaGetLastError();
}

cudaError_t launch_attention(const float* qkv, float* out, int64_t n, int64_t t, int64_t d, int64_t heads,
                             cudaStream_t stream) {
  if (n * t == 0) return cudaSuccess;
  const float scale = 1.0f / sqrtf(static_cast<float>(d / heads));
  attention_kernel<<<blocks_for(n * heads * t), kThreads, 0, stream>>>(qkv, out, n, t, d, heads, scale);
  return cudaGetLastError();
}

cudaError_t launch_bias_act(float* x, const float* bias, int64_t rows, int64_t d, bool gelu, cudaStream_t stream) {
  if (rows * d == 0) return cudaSuccess;
  bias_act_kernel<<<blocks_for(rows * d), kThreads, 0, stream>>>(x, bias, rows, d, gelu);
  return cudaGetLastError();
}

cudaError_t launch_gru(const float* gi, const float* gh, const float* h, float* out, int64_t n, int64_t layers,
                       int64_t layer, int64_t d, cudaStream_t stream) {
  if (n * d == 0) return cudaSuccess;
  gru_kernel<<<blocks_for(n * d), kThreads, 0, stream>>>(gi, gh, h, out, n, layers, layer, d);
  return cudaGetLastError();
}

}  // namespace pathrt
