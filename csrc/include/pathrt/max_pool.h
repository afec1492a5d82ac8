// The session's max pooling: ATen's CPU max_pool2d computes each maximum's index as well, which a
// forward-only pass never reads (ResNet-18@64's 3x3/2 stem pool at batch 64 on 2 cores: 1.35 ms, against
// 0.73 ms for a copy of its input), and at batch 1 wakes OpenMP's team for a few microseconds of work.
#pragma once

#include <ATen/ATen.h>

namespace pathrt {

// max_pool2d(x, kernel, stride, padding) with dilation 1, as ATen computes it (a NaN in a window wins),
// channels-last out; pathrt::parallel_for over output rows (the call pool in a session call). Inputs it
// does not cover (not float, not channels-last contiguous, ceil_mode) go to at::max_pool2d.
at::Tensor max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode);

}  // namespace pathrt
