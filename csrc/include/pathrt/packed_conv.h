// PackedConv: a conv2d whose weight is reordered once, at bundle load, into the layout oneDNN's
// kernel wants (torch's mkldnn::_reorder_convolution_weight), then run by
// mkldnn::_convolution_pointwise with the bias, the residual add and the ReLU fused into its
// epilogue, on channels-last activations: what torch.compile's freezing pass emits. at::conv2d
// instead reorders the weight on every call. Measured on 2 cores at batch 1: ResNet-18@64's convs
// 4.6 ms packed against 6.4 ms through at::conv2d (weight-bandwidth bound layers gain most); at
// batch 64 within 10% either way. Small convs (below kMinPackedMacs) keep at::conv2d, whose im2col
// kernel has less per-call setup. Without oneDNN it runs at::conv2d.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pathrt {

class PackedConv {
 public:
  PackedConv() = default;
  // Packed for any input size: packing for one batch size measured no faster at batch 1 and 13%
  // slower at batch 64 than this generic layout.
  PackedConv(const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding);

  // conv(x) + bias (+ residual) (then ReLU), channels-last out; bias and residual may be undefined.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual, bool relu) const;

  bool packed() const { return packed_; }
  const at::Tensor& weight() const { return plain_; }

 private:
  at::Tensor plain_, packed_weight_;
  std::vector<int64_t> stride_, padding_;
  bool packed_ = false;
};

// Whether PackedConv uses oneDNN in this build (torch built with MKLDNN, a CPU with its kernels).
bool packed_convs_available();

}  // namespace pathrt
