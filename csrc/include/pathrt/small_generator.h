// SmallGenerator: the whole generator (RFE convs, RFE tail, PDN encoder layers, RPD decoder with the DAQ
// threshold) for a few images as plain loops over SmallLinear's packed weights, on the calling thread,
// with per-thread scratch buffers kept across calls. At batch 1 the ATen path (conv2d, addmm and the
// fused generator ops) makes ~60 calls of 5-25 us each for ~5M multiply-adds; here the arithmetic is
// most of the time. The session uses it for batches up to kMaxBatch, the ATen path above (where MKL's
// GEMMs on all threads win); both compute the same functions (tests hold both to SPEC §8's rule).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "pathrt/session.h"
#include "pathrt/small_linear.h"

namespace pathrt {

// A BatchNorm-folded generator's tensors, as the bundle names them (pathrt/bundle.schema.json).
struct GeneratorWeights {
  std::vector<at::Tensor> stem_weights, stem_biases;  // per layer: (d_r, C_l, 1, 1), (d_r,)
  at::Tensor shared_weight, shared_bias;              // (d_r, d_r, 3, 3) stride 2 padding 1, (d_r,)
  at::Tensor cls;                                     // d values
  std::vector<at::Tensor> tail;                       // project weight (d, d_r), bias, norm weight, bias, position (L, d)
  std::vector<std::vector<at::Tensor>> encoder;       // per encoder layer: the 12 of pdn_encoder_layer
  std::vector<at::Tensor> rpd;                        // final norm weight, bias, W_ih, W_hh, b_ih, b_hh
  std::vector<at::Tensor> heads;                      // per layer: W0 (d, d), b0, W2 (C_l, d), b2
  std::vector<std::vector<int64_t>> pool_sizes;       // per layer: the RFE's pooled (H, W)
  std::vector<int64_t> repeats;                       // per layer: applications of the shared block
  int64_t attention_heads = 1;
  double tail_eps = 1e-5, encoder_eps = 1e-5, rpd_eps = 1e-5;
};

class SmallGenerator {
 public:
  // Larger batches go through the ATen path. Measured on the trained embedded model (2 cores, its
  // generator phase, this path on one thread against the ATen path on two): 0.19 against 0.49 ms at
  // batch 1, 0.56 / 1.29 at 4, 1.05 / 1.56 at 8, 2.12 / 2.00 at 16, 8.5 / 4.4 at 64.
  static constexpr int64_t kMaxBatch = 8;

  SmallGenerator() = default;
  // Throws BundleError when a tensor's shape does not fit the generator (call after the ATen path's dry
  // run, which checks them with the ops' messages).
  explicit SmallGenerator(const GeneratorWeights& weights);

  // features[l]: the pooled pathway-layer map (N, C_l, H_l, W_l) of pool_sizes[l], float. Returns (head
  // logits, scores, masks, packed, counts) as rpd_decode, and records the generator's phases in `r`.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> operator()(
      const std::vector<at::Tensor>& features, ExplainResult& r) const;

 private:
  // Layer l's RFE convs over its features (n images) and their global average: pooled[i][l] (d_r each).
  void rfe_layer(const at::Tensor& features, int64_t l, int64_t n, float* pooled) const;

  struct EncoderLayer {
    at::Tensor norm1_weight, norm1_bias, norm2_weight, norm2_bias, mlp_bias;
    SmallLinear qkv, out, mlp, down;  // mlp without its bias (added with the GELU)
  };
  struct Head {
    SmallLinear hidden, logits;  // hidden without its bias (added with the GELU)
    at::Tensor hidden_bias;
  };

  int64_t d_r_ = 0, d_ = 0, total_channels_ = 0;
  std::vector<int64_t> channels_, offsets_, repeats_;  // offsets_[l]: layer l's first column of the head
  std::vector<std::vector<int64_t>> pool_sizes_;
  std::vector<SmallLinear> stems_;
  SmallLinear shared_, project_;  // shared: the 3x3 weight as (d_r, 3 x 3 x d_r), taps outer, channels inner
  at::Tensor cls_, tail_norm_weight_, tail_norm_bias_, position_;
  std::vector<EncoderLayer> encoder_;
  int64_t attention_heads_ = 1;
  float tail_eps_ = 1e-5f, encoder_eps_ = 1e-5f, rpd_eps_ = 1e-5f;
  at::Tensor rpd_norm_weight_, rpd_norm_bias_;
  SmallLinear input_gates_, hidden_gates_;
  std::vector<Head> heads_;
};

}  // namespace pathrt
