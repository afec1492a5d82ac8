// Channels-last max and average pooling (pathrt/pool.h).
#include "pathrt/pool.h"

#include <algorithm>
#include <limits>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/cpu_empty.h"

namespace pathrt {
namespace {

// A window's running value after input v: kMax, the maximum, a NaN winning as in ATen's kernel; else the sum.
template <bool kMax>
[[gnu::always_inline]] inline float take(float v, float acc) {
  return kMax ? ((v > acc || v != v) ? v : acc) : acc + v;
}

// One output pixel of a map of kChannels channels, accumulated in registers over its window (input rows
// [0, rows), columns [x0, x1) of `src`, w pixels a row) and stored once: the maximum (kMax), else the sum
// divided by `count`.
template <bool kMax, int64_t kChannels>
[[gnu::always_inline]] inline void window_in_registers(const float* src, int64_t rows, int64_t w, int64_t x0,
                                                       int64_t x1, float count, float* out) {
  float acc[kChannels];
  std::fill_n(acc, kChannels, kMax ? -std::numeric_limits<float>::infinity() : 0.0f);
  for (int64_t iy = 0; iy < rows; ++iy) {
    for (int64_t ix = x0; ix < x1; ++ix) {
      const float* in = src + (iy * w + ix) * kChannels;
#pragma omp simd
      for (int64_t i = 0; i < kChannels; ++i) acc[i] = take<kMax>(in[i], acc[i]);
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < kChannels; ++i) out[i] = kMax ? acc[i] : acc[i] / count;
}

// A row of output pixels of a channels-last window reduction: pixel ox of `out` (c channels each) from the
// input rows [0, rows) of `src` (w pixels of c channels a row) and its window's columns [ox * sw - pw, + kw)
// inside the map, as window_in_registers computes it. A call covers a whole row, its loops inlined: a call
// per input pixel (the old max_into) took the embedded model's first 2x2 pool (32 channels) at batch 64
// 0.31 ms, five times a read of its input. Maps of 16, 32 or 64 channels keep the output pixel in registers
// (that pool: 0.12 ms; the RFE's 4x4 average pool of the same map: ATen 0.23, in L1 0.13-0.16, in registers
// 0.07-0.10); wider ones accumulate in the output pixel (in L1), reading each input pixel's channels in one
// run: a [64, 128, 32, 32] max pool from memory took 1.0-1.25 ms so and 1.3-1.4 ms in registers 16 channels
// at a time (the reads then leave address order).
template <bool kMax>
[[gnu::always_inline]] inline void pool_row(const float* src, int64_t rows, int64_t w, int64_t c, int64_t wo,
                                            int64_t kw, int64_t sw, int64_t pw, float count, float* out) {
  for (int64_t ox = 0; ox < wo; ++ox, out += c) {
    const int64_t x0 = std::max<int64_t>(0, ox * sw - pw), x1 = std::min(w, ox * sw - pw + kw);
    switch (c) {
      case 16: window_in_registers<kMax, 16>(src, rows, w, x0, x1, count, out); continue;
      case 32: window_in_registers<kMax, 32>(src, rows, w, x0, x1, count, out); continue;
      case 64: window_in_registers<kMax, 64>(src, rows, w, x0, x1, count, out); continue;
      default: break;
    }
    std::fill_n(out, c, kMax ? -std::numeric_limits<float>::infinity() : 0.0f);
    for (int64_t iy = 0; iy < rows; ++iy) {
      for (int64_t ix = x0; ix < x1; ++ix) {
        const float* in = src + (iy * w + ix) * c;
#pragma omp simd
        for (int64_t i = 0; i < c; ++i) out[i] = take<kMax>(in[i], out[i]);
      }
    }
    if constexpr (!kMax) {
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) out[i] /= count;
    }
  }
}

PATHRT_CLONES void max_row(const float* src, int64_t rows, int64_t w, int64_t c, int64_t wo, int64_t kw, int64_t sw,
                           int64_t pw, float* out) {
  pool_row<true>(src, rows, w, c, wo, kw, sw, pw, 1.0f, out);
}

PATHRT_CLONES void mean_row(const float* src, int64_t rows, int64_t w, int64_t c, int64_t wo, int64_t kw, int64_t sw,
                            float count, float* out) {
  pool_row<false>(src, rows, w, c, wo, kw, sw, 0, count, out);
}

// out (N, C, ho, wo), channels-last: each output row by max_row or mean_row on pathrt::parallel_for; `ph`:
// the padding above the map (rows outside it are skipped).
void pool_rows(const at::Tensor& x, at::Tensor& out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
               int64_t pw, bool max) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), ho = out.size(2), wo = out.size(3);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const auto count = static_cast<float>(kh * kw);
  const int64_t row_work = std::max<int64_t>(1, wo * kh * kw * c);
  pathrt::parallel_for(0, n * ho, std::max<int64_t>(1, (int64_t{1} << 15) / row_work), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r / ho, oy = r % ho;
      const int64_t y0 = std::max<int64_t>(0, oy * sh - ph), y1 = std::min(h, oy * sh - ph + kh);
      const float* rows = src + (s * h + y0) * w * c;
      if (max) {
        max_row(rows, y1 - y0, w, c, wo, kw, sw, pw, dst + r * wo * c);
      } else {
        mean_row(rows, y1 - y0, w, c, wo, kw, sw, count, dst + r * wo * c);
      }
    }
  });
}

bool channels_last_float(const at::Tensor& x) {
  return x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

at::Tensor max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode) {
  const bool covered = channels_last_float(x) && !ceil_mode && kernel.size() == 2 && stride.size() == 2 &&
                       padding.size() == 2;
  if (!covered) return at::max_pool2d(x, kernel, stride, padding, {1, 1}, ceil_mode);
  const int64_t h = x.size(2), w = x.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "max_pool2d: kernel and stride must be positive and padding at most half the kernel, got kernel ",
              kernel, ", stride ", stride, ", padding ", padding);
  const int64_t ho = (h + 2 * ph - kh) / sh + 1, wo = (w + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "max_pool2d: the ", h, "x", w, " input is smaller than the ", kh, "x", kw, " window");
  auto out = cpu_empty({x.size(0), x.size(1), ho, wo}, at::kFloat, at::MemoryFormat::ChannelsLast);
  pool_rows(x, out, kh, kw, sh, sw, ph, pw, true);
  return out;
}

at::Tensor avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode) {
  const bool covered = channels_last_float(x) && !ceil_mode && kernel.size() == 2 && stride.size() == 2 &&
                       padding.size() == 2 && padding[0] == 0 && padding[1] == 0 && kernel[0] > 0 && kernel[1] > 0 &&
                       stride[0] > 0 && stride[1] > 0 && kernel[0] <= x.size(2) && kernel[1] <= x.size(3);
  if (!covered) return at::avg_pool2d(x, kernel, stride, padding, ceil_mode);
  const int64_t ho = (x.size(2) - kernel[0]) / stride[0] + 1, wo = (x.size(3) - kernel[1]) / stride[1] + 1;
  auto out = cpu_empty({x.size(0), x.size(1), ho, wo}, at::kFloat, at::MemoryFormat::ChannelsLast);
  pool_rows(x, out, kernel[0], kernel[1], stride[0], stride[1], 0, 0, false);
  return out;
}
at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef output_size) {
  const bool covered = channels_last_float(x) && output_size.size() == 2 && output_size[0] == 1 &&
                       output_size[1] == 1 && x.size(2) > 0 && x.size(3) > 0;
  if (!covered) return at::adaptive_avg_pool2d(x, output_size);
  // one window over the whole map; (N, C, 1, 1) is the same memory in either layout
  auto out = cpu_empty({x.size(0), x.size(1), 1, 1});
  pool_rows(x, out, x.size(2), x.size(3), x.size(2), x.size(3), 0, 0, false);
  return out;
}

}  // namespace pathrt
