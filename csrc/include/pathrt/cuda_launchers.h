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

cudaError_t launch_daq_threshold_pack(const float* logits, float* scores, bool* masks, uint8_t* packed,
                                      unsigned long long* counts, int64_t n, int64_t k, cudaStream_t stream);

// mask: float32 (N, C); bias may be null; out may equal x.
cudaError_t launch_masked_bias_relu(const float* x, const float* bias, const float* mask, float* out,
                                    int64_t n, int64_t c, int64_t plane, cudaStream_t stream);

// Direct convolution, one thread per output value; bias, residual, in_mask, out_mask may be null.
struct ConvShape {
  int64_t n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, ho, wo;
};

cudaError_t launch_pathway_conv2d(const float* x, const float* weight, const float* bias, const float* residual,
                                  const bool* in_mask, const bool* out_mask, float* out, ConvShape shape,
                                  bool relu, cudaStream_t stream);

}  // namespace pathrt
