// Uninitialised CPU tensors made without the dispatcher.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

namespace pathrt {

// at::empty(sizes, dtype on the CPU, format) through at::detail::empty_cpu, the function at::empty's CPU
// kernel calls: the same allocator (pathrt/buffer_pool.h's pool inside a session call) and tensor, without
// the dispatcher's per-call work (~0.3-0.8 us inside a session call, cold after the kernels around it;
// a ResNet-18@64 explanation at batch 1 made 69 outputs and buffers this way).
inline at::Tensor cpu_empty(at::IntArrayRef sizes, at::ScalarType dtype = at::kFloat,
                            at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return at::Tensor(at::detail::empty_cpu(sizes, dtype, false, format));
}

}  // namespace pathrt
