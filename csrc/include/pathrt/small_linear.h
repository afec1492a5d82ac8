// SmallLinear: y = x W^T + b for a handful of rows, the GEMM shape of a batch-1 generator (6 tokens of
// 128 values, one GRU state, 64 pixels of a pooled map). ATen's addmm spends 5-15 us per call there on
// dispatch, allocation and MKL's setup, more than the arithmetic (0.2M multiply-adds take ~5 us on one
// core). The weight is packed once, at load, into 16-wide column panels ([out / 16][in][16], zero
// padded), so the kernel broadcasts one x value against two 8-wide weight vectors per step and keeps
// up to 6 rows x 16 outputs in registers; per-ISA clones (AVX-512/AVX2/baseline) are picked at load.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace pathrt {

class SmallLinear {
 public:
  SmallLinear() = default;
  // weight: float (out, in), any strides; bias: float (out,) or undefined (zero).
  SmallLinear(const at::Tensor& weight, const at::Tensor& bias);

  // y (rows, out; rows `ldy` floats apart) = x (rows, in; rows `ldx` floats apart) W^T + b, on the
  // calling thread; inside a session call, products of kMinSplitWork (196k) multiply-adds and 8 panels
  // up also on the call pool's helpers (pathrt/call_pool.h).
  void operator()(const float* x, int64_t ldx, int64_t rows, float* y, int64_t ldy) const;
  void operator()(const float* x, int64_t rows, float* y) const { (*this)(x, in_, rows, y, out_); }

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }

 private:
  int64_t in_ = 0, out_ = 0;
  std::vector<float> panels_, bias_;  // bias_ padded to whole panels
};

}  // namespace pathrt
