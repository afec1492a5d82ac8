// PackedConv: a conv2d whose weight is reordered once, at bundle load, into the layout oneDNN's
// kernel wants (torch's mkldnn::_reorder_convolution_weight), then run by
// mkldnn::_convolution_pointwise with the bias, the residual add and the ReLU fused into its
// epilogue, on channels-last activations: what torch.compile's freezing pass emits. at::conv2d
// instead reorders the weight on every call. Measured on 2 cores at batch 1: ResNet-18@64's convs
// 4.6 ms packed against 6.4 ms through at::conv2d (weight-bandwidth bound layers gain most); at
// batch 64 within 10% either way. Small convs (below kMinPackedMacs) keep at::conv2d, whose im2col
// kernel has less per-call setup. Without oneDNN it runs at::conv2d.
//
// The packed layout oneDNN wants depends on the input's shape (on AVX2: Acdb32a at batch 1, a padded
// Acdb24a at batch 4): a weight packed for no shape in particular was reordered again on every call
// whose shape wanted another layout, by oneDNN's slow generic reorder (7 ms per call for a 128x128x3x3
// weight at batch 4, against 0.7 ms for the conv itself). The layout depends on the thread count as
// well (one thread wants Acdb24a where two want Acdb32a at batch 1). So the weight is packed per (input
// shape, OpenMP thread count), on first use, with that shape (`input_size`), and the last
// kMaxPackedShapes packings are kept (LRU, shared by copies, safe for concurrent callers): memory is at
// most that many copies of the weight.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

namespace pathrt {

class PackedConv {
 public:
  PackedConv() = default;
  PackedConv(const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding);

  // conv(x) + bias (+ residual) (then ReLU), channels-last out; bias and residual may be undefined.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual, bool relu) const;

  bool packed() const { return packed_; }
  const at::Tensor& weight() const { return plain_; }
  static constexpr size_t kMaxPackedShapes = 8;

 private:
  struct Cache;
  at::Tensor packed_for(const at::Tensor& input) const;

  at::Tensor plain_;
  std::vector<int64_t> stride_, padding_;
  bool packed_ = false;
  std::shared_ptr<Cache> cache_;
};

// Whether PackedConv uses oneDNN in this build (torch built with MKLDNN, a CPU with its kernels).
bool packed_convs_available();

}  // namespace pathrt
