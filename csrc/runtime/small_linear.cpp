// SmallLinear (pathrt/small_linear.h): a register-blocked 6x16 micro-kernel over packed weight panels.
#include "pathrt/small_linear.h"

#include <algorithm>
#include <cstring>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"

namespace pathrt {

namespace {

constexpr int64_t kPanel = 16;  // outputs per panel: two 8-float vectors
constexpr int64_t kRows = 6;    // rows per register block: 12 accumulators + 2 weights + 1 broadcast
// A product splits its panels among the call pool's threads from kMinSplitWork multiply-adds (~3 us on
// one core) and kMinSplitPanels panels up: the generator's encoder layers at batch 1 (9 tokens of 128
// on ResNet-18@64), not its GRU steps (one row) nor the RFE convs (32 outputs: two panels).
constexpr int64_t kMinSplitWork = int64_t{1} << 17, kMinSplitPanels = 8;

using V8 = float __attribute__((vector_size(32)));
using V8Unaligned = float __attribute__((vector_size(32), aligned(4), may_alias));

#define PATHRT_LOAD8(p) (*reinterpret_cast<const V8Unaligned*>(p))

// Rows [0, R) of x against one panel: y[r][0, width) = x[r] . panel + bias.
template <int R>
inline __attribute__((always_inline)) void panel_block(const float* x, int64_t ldx, const float* panel, int64_t in,
                                                       const float* bias, float* y, int64_t ldy, int64_t width) {
  // Fewer than 3 rows leave too few independent accumulators to hide the FMA latency (4 cycles): they
  // split the input dimension into kSplit interleaved partial sums.
  constexpr int kSplit = R < 3 ? 4 / R : 1;
  V8 lo[kSplit][R], hi[kSplit][R];
  for (int k = 0; k < kSplit; ++k) {
    for (int r = 0; r < R; ++r) {
      lo[k][r] = k == 0 ? PATHRT_LOAD8(bias) : V8{};
      hi[k][r] = k == 0 ? PATHRT_LOAD8(bias + 8) : V8{};
    }
  }
  int64_t i = 0;
  for (; i + kSplit <= in; i += kSplit) {
    for (int k = 0; k < kSplit; ++k) {
      // One line per input, kPrefetchAhead on (into the next panels: they lie end to end). At batch 1
      // the generator's weights stream from beyond the L2 each call. Generator phase at batch 1,
      // interleaved pairs on 2 cores: ResNet-18@64 0.57-0.61 -> 0.49-0.53 ms (faster in 6 of 6),
      // VGG-11@64 0.77-0.82 -> 0.71-0.73 (3 of 3), embedded 0.23-0.24 -> 0.22-0.23 (3 of 4).
      __builtin_prefetch(panel + (i + k) * kPanel + kPrefetchAhead);
      const V8 w0 = PATHRT_LOAD8(panel + (i + k) * kPanel), w1 = PATHRT_LOAD8(panel + (i + k) * kPanel + 8);
      for (int r = 0; r < R; ++r) {
        const float s = x[r * ldx + i + k];
        lo[k][r] += s * w0;
        hi[k][r] += s * w1;
      }
    }
  }
  for (; i < in; ++i) {
    const V8 w0 = PATHRT_LOAD8(panel + i * kPanel), w1 = PATHRT_LOAD8(panel + i * kPanel + 8);
    for (int r = 0; r < R; ++r) {
      const float s = x[r * ldx + i];
      lo[0][r] += s * w0;
      hi[0][r] += s * w1;
    }
  }
  for (int k = 1; k < kSplit; ++k) {
    for (int r = 0; r < R; ++r) {
      lo[0][r] += lo[k][r];
      hi[0][r] += hi[k][r];
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];
    std::memcpy(out, &lo[0][r], sizeof(lo[0][r]));
    std::memcpy(out + 8, &hi[0][r], sizeof(hi[0][r]));
    std::memcpy(y + r * ldy, out, static_cast<size_t>(width) * sizeof(float));
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void small_gemm(
    const float* x, int64_t ldx, int64_t rows, const float* panels, const float* bias, int64_t in, int64_t out,
    float* y, int64_t ldy) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t block = std::min(kRows, rows - r0);
    for (int64_t p = 0; p * kPanel < out; ++p) {
      const float* panel = panels + p * in * kPanel;
      const float* b = bias + p * kPanel;
      const int64_t width = std::min(kPanel, out - p * kPanel);
      const float* xr = x + r0 * ldx;
      float* yr = y + r0 * ldy + p * kPanel;
      switch (block) {
        case 6: panel_block<6>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 5: panel_block<5>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 4: panel_block<4>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 3: panel_block<3>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 2: panel_block<2>(xr, ldx, panel, in, b, yr, ldy, width); break;
        default: panel_block<1>(xr, ldx, panel, in, b, yr, ldy, width); break;
      }
    }
  }
}

}  // namespace

SmallLinear::SmallLinear(const at::Tensor& weight, const at::Tensor& bias) : in_(weight.size(1)), out_(weight.size(0)) {
  const int64_t panels = (out_ + kPanel - 1) / kPanel;
  const auto w = weight.to(at::kFloat).contiguous();
  const float* wp = w.data_ptr<float>();
  panels_.assign(static_cast<size_t>(panels * in_ * kPanel), 0.0f);
  bias_.assign(static_cast<size_t>(panels * kPanel), 0.0f);
  for (int64_t o = 0; o < out_; ++o) {
    for (int64_t i = 0; i < in_; ++i) panels_[((o / kPanel) * in_ + i) * kPanel + o % kPanel] = wp[o * in_ + i];
  }
  if (bias.defined()) {
    const auto b = bias.to(at::kFloat).contiguous();
    std::copy(b.data_ptr<float>(), b.data_ptr<float>() + out_, bias_.begin());
  }
}

void SmallLinear::operator()(const float* x, int64_t ldx, int64_t rows, float* y, int64_t ldy) const {
  const int64_t panels = (out_ + kPanel - 1) / kPanel;
  if (rows * in_ * out_ < kMinSplitWork || panels < kMinSplitPanels) {
    small_gemm(x, ldx, rows, panels_.data(), bias_.data(), in_, out_, y, ldy);
    return;
  }
  // Panels split among the call pool's threads; each output is one panel's, so the bits do not depend
  // on the split.
  const int64_t grain = std::max<int64_t>(1, kMinSplitWork / 4 / (rows * in_ * kPanel));
  pathrt::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    small_gemm(x, ldx, rows, panels_.data() + p0 * in_ * kPanel, bias_.data() + p0 * kPanel, in_,
               std::min(out_, p1 * kPanel) - p0 * kPanel, y + p0 * kPanel, ldy);
  });
}

}  // namespace pathrt
