// CUDA registrations that other CUDA registrations call directly (no dispatcher round trip).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pathrt {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> daq_threshold_pack_cuda(const at::Tensor& logits);

}  // namespace pathrt
