// Host-side launchers of the CUDA kernels: raw pointers and a stream, no torch types, so the .cu
// files compile without torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace pathrt {

cudaError_t launch_pack_masks(const uint8_t* masks, uint8_t* out, int64_t n, int64_t k,
                              cudaStream_t stream);

cudaError_t launch_pairwise_iou(const uint8_t* a, const uint8_t* b, float* out, int64_t n,
                                int64_t m, int64_t nbytes, cudaStream_t stream);

}  // namespace pathrt
