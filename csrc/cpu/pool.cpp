// Channels-last max and global average pooling (pathrt/pool.h).
#include "pathrt/pool.h"

#include <algorithm>
#include <limits>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"

namespace pathrt {
namespace {

// out[c] = max(out[c], in[c]) over c channels, a NaN winning as in ATen's kernel.
PATHRT_CLONES void max_into(const float* in, int64_t c, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < c; ++i) {
    const float v = in[i];
    out[i] = (v > out[i] || v != v) ? v : out[i];
  }
}

// out[c] += in[c] over c channels.
PATHRT_CLONES void add_into(const float* in, int64_t c, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < c; ++i) out[i] += in[i];
}

}  // namespace

at::Tensor max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool ceil_mode) {
  const bool covered = x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && !ceil_mode &&
                       kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                       x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!covered) return at::max_pool2d(x, kernel, stride, padding, {1, 1}, ceil_mode);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "max_pool2d: kernel and stride must be positive and padding at most half the kernel, got kernel ",
              kernel, ", stride ", stride, ", padding ", padding);
  const int64_t ho = (h + 2 * ph - kh) / sh + 1, wo = (w + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "max_pool2d: the ", h, "x", w, " input is smaller than the ", kh, "x", kw, " window");
  auto out = at::empty({n, c, ho, wo}, x.options(), at::MemoryFormat::ChannelsLast);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t row_work = std::max<int64_t>(1, wo * kh * kw * c);
  pathrt::parallel_for(0, n * ho, std::max<int64_t>(1, (int64_t{1} << 15) / row_work), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r / ho, oy = r % ho;
      const int64_t y0 = std::max<int64_t>(0, oy * sh - ph), y1 = std::min(h, oy * sh - ph + kh);
      for (int64_t ox = 0; ox < wo; ++ox) {
        const int64_t x0 = std::max<int64_t>(0, ox * sw - pw), x1 = std::min(w, ox * sw - pw + kw);
        float* o = dst + (r * wo + ox) * c;
        std::fill(o, o + c, -std::numeric_limits<float>::infinity());
        for (int64_t iy = y0; iy < y1; ++iy) {
          for (int64_t ix = x0; ix < x1; ++ix) max_into(src + ((s * h + iy) * w + ix) * c, c, o);
        }
      }
    }
  });
  return out;
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& x, at::IntArrayRef output_size) {
  const bool covered = x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
                       output_size.size() == 2 && output_size[0] == 1 && output_size[1] == 1 && x.size(2) > 0 &&
                       x.size(3) > 0 && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!covered) return at::adaptive_avg_pool2d(x, output_size);
  const int64_t n = x.size(0), c = x.size(1), pixels = x.size(2) * x.size(3);
  auto out = at::empty({n, c, 1, 1}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float count = static_cast<float>(pixels);
  pathrt::parallel_for(0, n, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, pixels * c)),
                       [&](int64_t s0, int64_t s1) {
                         for (int64_t s = s0; s < s1; ++s) {
                           float* o = dst + s * c;
                           std::fill(o, o + c, 0.0f);
                           for (int64_t p = 0; p < pixels; ++p) add_into(src + (s * pixels + p) * c, c, o);
                           for (int64_t ch = 0; ch < c; ++ch) o[ch] /= count;
                         }
                       });
  return out;
}

}  // namespace pathrt
