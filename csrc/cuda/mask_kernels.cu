// CUDA kernels of pathrt::pack_masks and pathrt::pairwise_iou. This file includes no torch
// header (nvcc compiles it in seconds); csrc/cuda/mask_ops_cuda.cpp registers the launchers.
#include <cuda_runtime.h>

#include "pathrt/bitops.h"
#include "pathrt/cuda_launchers.h"

namespace pathrt {
namespace {

constexpr int kThreads = 256;

__global__ void pack_masks_kernel(const uint8_t* __restrict__ masks, uint8_t* __restrict__ out,
                                  int64_t n, int64_t k, int64_t nbytes) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * nbytes) return;
  const int64_t row = idx / nbytes, byte = idx % nbytes;
  const int64_t first = byte * 8;
  const int64_t count = k - first < 8 ? k - first : 8;
  out[idx] = pack_byte(masks + row * k + first, count);
}

__global__ void pairwise_iou_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b,
                                    float* __restrict__ out, int64_t n, int64_t m, int64_t nbytes) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * m) return;
  const int64_t i = idx / m, j = idx % m;
  const uint8_t* row_a = a + i * nbytes;
  const uint8_t* row_b = b + j * nbytes;
  out[idx] = iou_from_counts(row_popcount(row_a, nbytes), row_popcount(row_b, nbytes),
                             and_popcount(row_a, row_b, nbytes));
}

unsigned int blocks_for(int64_t work) {
  return static_cast<unsigned int>((work + kThreads - 1) / kThreads);
}

}  // namespace

cudaError_t launch_pack_masks(const uint8_t* masks, uint8_t* out, int64_t n, int64_t k,
                              cudaStream_t stream) {
  const int64_t nbytes = packed_bytes(k);
  if (n * nbytes == 0) return cudaSuccess;
  pack_masks_kernel<<<blocks_for(n * nbytes), kThreads, 0, stream>>>(masks, out, n, k, nbytes);
  return cudaGetLastError();
}

cudaError_t launch_pairwise_iou(const uint8_t* a, const uint8_t* b, float* out, int64_t n,
                                int64_t m, int64_t nbytes, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  pairwise_iou_kernel<<<blocks_for(n * m), kThreads, 0, stream>>>(a, b, out, n, m, nbytes);
  return cudaGetLastError();
}

}  // namespace pathrt
