// CUDA kernels of the fused deployed-path ops (daq_threshold_pack, masked_bias_relu,
// pathway_conv2d). No torch header here; csrc/cuda/fused_ops_cuda.cpp registers the launchers.
// Every value is computed with the pathrt/epilogue.h functions the CPU kernels use.
#include <cuda_runtime.h>

#include "pathrt/cuda_launchers.h"
#include "pathrt/epilogue.h"

namespace pathrt {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t total) { return (total + kThreads - 1) / kThreads; }

// One thread per packed byte: up to 8 scores, masks, the byte, and its popcount into the row count.
__global__ void daq_threshold_pack_kernel(const float* __restrict__ logits, float* __restrict__ scores,
                                          bool* __restrict__ masks, uint8_t* __restrict__ packed,
                                          unsigned long long* __restrict__ counts, int64_t n, int64_t k,
                                          int64_t nbytes) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * nbytes) return;
  const int64_t row = idx / nbytes, first = (idx % nbytes) * 8;
  const int64_t count = k - first < 8 ? k - first : 8, at = row * k + first;
  const uint8_t bits = threshold_pack_byte(logits + at, scores + at, masks + at, count);
  packed[idx] = bits;
  if (bits) atomicAdd(counts + row, static_cast<unsigned long long>(popcount64(bits)));
}

__global__ void masked_bias_relu_kernel(const float* __restrict__ x, const float* __restrict__ bias,
                                        const float* __restrict__ mask, const float* __restrict__ fill, float* out,
                                        int64_t n, int64_t c, int64_t plane) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * c * plane) return;
  const int64_t nc = idx / plane;
  out[idx] = masked_bias_relu_value(x[idx], bias ? bias[nc % c] : 0.0f, mask[nc], fill ? fill[nc % c] : 0.0f);
}

__global__ void pathway_conv2d_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                      const float* __restrict__ bias, const float* __restrict__ residual,
                                      const bool* __restrict__ in_mask, const bool* __restrict__ out_mask,
                                      float* __restrict__ out, ConvShape g, bool relu) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= g.n * g.c_out * g.ho * g.wo) return;
  const int64_t ox = idx % g.wo, oy = (idx / g.wo) % g.ho, o = (idx / (g.wo * g.ho)) % g.c_out;
  const int64_t s = idx / (g.wo * g.ho * g.c_out);
  if (out_mask && !out_mask[s * g.c_out + o]) {
    out[idx] = 0.0f;  // a removed output channel is never computed
    return;
  }
  float acc = 0.0f;
  for (int64_t ci = 0; ci < g.c_in; ++ci) {
    if (in_mask && !in_mask[s * g.c_in + ci]) continue;  // a removed input channel is never read
    const float* plane = x + (s * g.c_in + ci) * g.h * g.w;
    const float* taps = weight + (o * g.c_in + ci) * g.kh * g.kw;
    for (int64_t dy = 0; dy < g.kh; ++dy) {
      const int64_t iy = conv_input_coord(oy, dy, g.sh, g.ph, g.h);
      if (iy < 0) continue;
      for (int64_t dx = 0; dx < g.kw; ++dx) {
        const int64_t ix = conv_input_coord(ox, dx, g.sw, g.pw, g.w);
        if (ix >= 0) acc += plane[iy * g.w + ix] * taps[dy * g.kw + dx];
      }
    }
  }
  out[idx] = bias_act(acc, bias ? bias[o] : 0.0f, residual ? residual[idx] : 0.0f, relu);
}

}  // namespace

cudaError_t launch_daq_threshold_pack(const float* logits, float* scores, bool* masks, uint8_t* packed,
                                      unsigned long long* counts, int64_t n, int64_t k, cudaStream_t stream) {
  const int64_t nbytes = packed_bytes(k);
  if (n * nbytes == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(counts, 0, n * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  daq_threshold_pack_kernel<<<blocks_for(n * nbytes), kThreads, 0, stream>>>(logits, scores, masks, packed,
                                                                              counts, n, k, nbytes);
  return cudaGetLastError();
}

cudaError_t launch_masked_bias_relu(const float* x, const float* bias, const float* mask, const float* fill,
                                    float* out, int64_t n, int64_t c, int64_t plane, cudaStream_t stream) {
  if (n * c * plane == 0) return cudaSuccess;
  masked_bias_relu_kernel<<<blocks_for(n * c * plane), kThreads, 0, stream>>>(x, bias, mask, fill, out, n, c,
                                                                                plane);
  return cudaGetLastError();
}

cudaError_t launch_pathway_conv2d(const float* x, const float* weight, const float* bias, const float* residual,
                                  const bool* in_mask, const bool* out_mask, float* out, ConvShape shape,
                                  bool relu, cudaStream_t stream) {
  const int64_t total = shape.n * shape.c_out * shape.ho * shape.wo;
  if (total == 0) return cudaSuccess;
  pathway_conv2d_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, weight, bias, residual, in_mask, out_mask,
                                                                     out, shape, relu);
  return cudaGetLastError();
}

}  // namespace pathrt
