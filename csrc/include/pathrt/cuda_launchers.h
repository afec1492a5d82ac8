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
cudaError_t launch_masked_bias_relu(const float* x, const float* bias, const float* mask, const float* fill,
                                    float* out, int64_t n, int64_t c, int64_t plane, cudaStream_t stream);

// Direct convolution, one thread per output value; bias, residual, in_mask, out_mask may be null.
struct ConvShape {
  int64_t n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, ho, wo;
};

cudaError_t launch_pathway_conv2d(const float* x, const float* weight, const float* bias, const float* residual,
                                  const bool* in_mask, const bool* out_mask, float* out, ConvShape shape,
                                  bool relu, cudaStream_t stream);

}  // namespace pathrt

namespace pathrt {

// Generator ops (generator_kernels.cu); element math from pathrt/generator_math.h.
// Mean over the plane of a channels-last map (n, plane, c) into out[s * out_stride + c].
cudaError_t launch_mean_pool_cl(const float* map, float* out, int64_t n, int64_t plane, int64_t c, int64_t out_stride,
                                cudaStream_t stream);

// y[r] = LayerNorm(x[r] (+ in_bias, written back to x)) * w + b (+ add[r % add_rows]); one thread per row.
cudaError_t launch_layer_norm_rows(float* x, const float* in_bias, const float* w, const float* b, const float* add,
                                   int64_t add_rows, float eps, int64_t rows, int64_t d, float* y, cudaStream_t stream);

// Short-sequence attention over qkv (n, t, 3d) into out (n, t, d); t <= kMaxAttentionTokens.
constexpr int64_t kMaxAttentionTokens = 64;
cudaError_t launch_attention(const float* qkv, float* out, int64_t n, int64_t t, int64_t d, int64_t heads,
                             cudaStream_t stream);

// x[r, i] = gelu(x + bias[i]) or x + bias[i], for rows of d values.
cudaError_t launch_bias_act(float* x, const float* bias, int64_t rows, int64_t d, bool gelu, cudaStream_t stream);

// One GRU step of layer l: out[s, j] from gi (n, layers, 3d), gh (n, 3d) and h (n, d).
cudaError_t launch_gru(const float* gi, const float* gh, const float* h, float* out, int64_t n, int64_t layers,
                       int64_t layer, int64_t d, cudaStream_t stream);

}  // namespace pathrt
