// The session's pooling, on channels-last maps without ATen's overheads:
// - max pooling: ATen's CPU max_pool2d computes each maximum's index as well, which a forward-only pass
//   never reads (ResNet-18@64's 3x3/2 stem pool at batch 64 on 2 cores: 1.35 ms, against 0.73 ms for a
//   copy of its input), and at batch 1 wakes OpenMP's team for a few microseconds of work;
// - global average pooling (adaptive to 1x1, the classifier's input in VGG and ResNet): ATen's takes its
//   reduction path (mean, dtype checks, a division kernel), ~20 us for the embedded model's 2 x 256 x 2 x 2
//   joint-tail map at batch 1, inside a session call, against ~1 us of arithmetic.
#pragma once

#include <ATen/ATen.h>

namespace pathrt {

// max_pool2d(x, kernel, stride, padding) with dilation 1, as ATen computes it (a NaN in a window wins),
// channels-last out; pathrt::parallel_for over output rows (the call pool in a session call). Inputs it
// does not cover (not float, not channels-last contiguous, ceil_mode) go to at::max_pool2d.
at::Tensor max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode);

// avg_pool2d(x, kernel, stride, padding, ceil_mode) as ATen computes it without padding: each window's sum
// over its pixels in order, divided by their count, channels-last out; the RFE's input pooling (kernel =
// stride) of the embedded model's 32x32 first layer at batch 64 took ATen ~0.5 ms, four reads of the
// map's time. Padding, ceil_mode and inputs that are not float channels-last maps go to at::avg_pool2d.
at::Tensor avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode);

// adaptive_avg_pool2d(x, output_size): for a 1x1 output of a float channels-last map, each channel's sum
// over the pixels in order, divided by their count (a NaN propagates), out (N, C, 1, 1); pathrt::parallel_for
// over the samples. Other inputs and output sizes go to at::adaptive_avg_pool2d.
at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef output_size);

}  // namespace pathrt
