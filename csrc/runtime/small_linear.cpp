// SmallLinear (pathrt/small_linear.h): a register-blocked 6x16 micro-kernel over packed weight panels.
#include "pathrt/small_linear.h"

#include <algorithm>
#include <cstring>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"

namespace pathrt {

namespace {

constexpr int64_t kPanel = 16;  // outputs per panel: one 16-float vector or two 8-float ones
constexpr int64_t kRows = 6;    // rows per register block: 6 or 12 accumulators, the weights, a broadcast
// A product splits its panels among the call pool's threads from kMinSplitWork multiply-adds and
// kMinSplitPanels panels up, one chunk per thread. At batch 1 a product streams its weight from beyond
// the L2 at one core's read bandwidth (~30 GB/s here: the embedded model's 128 -> 384 QKV product, 6
// tokens, 6.2 us), so two cores read it in about half the time; a job costs ~1 us of hand-over between
// the cores, which the 98k of the embedded model's 128 -> 128 output product does not repay (2.2 -> 2.6
// us split) and the 246k of its GRU input gates do (6.0 -> 3.8-4.2). More chunks than threads cost more
// hand-overs: with the pool's four a thread, splitting from 65k made the embedded encoder 61 -> 69-77 us;
// one a thread from 196k, 61 -> 52-55 (ResNet-18@64's 95-97 -> 79-83, VGG-11@64's 97-104 -> 93-94).
constexpr int64_t kMinSplitWork = int64_t{3} << 16, kMinSplitPanels = 8;

using V8 = float __attribute__((vector_size(32)));
using V16 = float __attribute__((vector_size(64)));

template <typename V>
constexpr int kVecsOf = kPanel / (sizeof(V) / sizeof(float));

// acc[r] += x[r][i] * the panel's input i, for rows [0, R)
template <typename V, int R>
[[gnu::always_inline]] inline void panel_step(V (&acc)[R][kVecsOf<V>], const float* x, int64_t ldx,
                                              const float* panel, int64_t i) {
  constexpr int kVecs = kVecsOf<V>;
  V w[kVecs];
  for (int v = 0; v < kVecs; ++v) std::memcpy(&w[v], panel + i * kPanel + v * kPanel / kVecs, sizeof(V));
  for (int r = 0; r < R; ++r) {
    const float s = x[r * ldx + i];
    for (int v = 0; v < kVecs; ++v) acc[r][v] += s * w[v];
  }
}

// Rows [0, R) of x against one panel: y[r][0, width) = x[r] . panel + bias, the panel's 16 outputs in
// vectors of V.
template <typename V, int R>
[[gnu::always_inline]] inline void panel_block(const float* x, int64_t ldx, const float* panel, int64_t in,
                                               const float* bias, float* y, int64_t ldy, int64_t width) {
  constexpr int kVecs = kVecsOf<V>;
  // Fewer than 8 independent accumulators leave the FMA latency (4 cycles, 2 ports) exposed: few rows
  // split the input dimension into kSplit interleaved partial sums.
  constexpr int kSplit = R * kVecs < 8 ? 8 / (R * kVecs) : 1;
  V acc[kSplit][R][kVecs];
  for (int k = 0; k < kSplit; ++k) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < kVecs; ++v) {
        if (k == 0) {
          std::memcpy(&acc[k][r][v], bias + v * kPanel / kVecs, sizeof(V));
        } else {
          acc[k][r][v] = V{};
        }
      }
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
      panel_step<V, R>(acc[k], x, ldx, panel, i + k);
    }
  }
  for (; i < in; ++i) panel_step<V, R>(acc[0], x, ldx, panel, i);
  for (int k = 1; k < kSplit; ++k) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < kVecs; ++v) acc[0][r][v] += acc[k][r][v];
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];
    std::memcpy(out, &acc[0][r], sizeof(out));
    std::memcpy(y + r * ldy, out, static_cast<size_t>(width) * sizeof(float));
  }
}

template <typename V>
[[gnu::always_inline]] inline void small_gemm_body(const float* x, int64_t ldx, int64_t rows, const float* panels,
                                                   const float* bias, int64_t in, int64_t out, float* y,
                                                   int64_t ldy) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t block = std::min(kRows, rows - r0);
    for (int64_t p = 0; p * kPanel < out; ++p) {
      const float* panel = panels + p * in * kPanel;
      const float* b = bias + p * kPanel;
      const int64_t width = std::min(kPanel, out - p * kPanel);
      const float* xr = x + r0 * ldx;
      float* yr = y + r0 * ldy + p * kPanel;
      switch (block) {
        case 6: panel_block<V, 6>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 5: panel_block<V, 5>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 4: panel_block<V, 4>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 3: panel_block<V, 3>(xr, ldx, panel, in, b, yr, ldy, width); break;
        case 2: panel_block<V, 2>(xr, ldx, panel, in, b, yr, ldy, width); break;
        default: panel_block<V, 1>(xr, ldx, panel, in, b, yr, ldy, width); break;
      }
    }
  }
}

// AVX-512: a panel is one vector, half the FMAs of two 8-float ones (the target_clones of one 8-float body
// before). Generator phase at batch 1, interleaved processes on 2 cores: embedded 0.163-0.166 ->
// 0.139-0.141 ms, ResNet-18@64 0.341-0.350 -> 0.294-0.328.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void small_gemm_avx512(
    const float* x, int64_t ldx, int64_t rows, const float* panels, const float* bias, int64_t in, int64_t out,
    float* y, int64_t ldy) {
  small_gemm_body<V16>(x, ldx, rows, panels, bias, in, out, y, ldy);
}
__attribute__((target("avx2,fma"))) void small_gemm_avx2(const float* x, int64_t ldx, int64_t rows,
                                                        const float* panels, const float* bias, int64_t in,
                                                        int64_t out, float* y, int64_t ldy) {
  small_gemm_body<V8>(x, ldx, rows, panels, bias, in, out, y, ldy);
}
void small_gemm_baseline(const float* x, int64_t ldx, int64_t rows, const float* panels, const float* bias,
                         int64_t in, int64_t out, float* y, int64_t ldy) {
  small_gemm_body<V8>(x, ldx, rows, panels, bias, in, out, y, ldy);
}
const auto small_gemm = for_this_cpu(small_gemm_avx512, small_gemm_avx2, small_gemm_baseline);

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
  // Panels split among the call pool's threads, a run of them each; each output is one panel's, so the
  // bits do not depend on the split.
  const int64_t threads = parallel_width();
  pathrt::parallel_for(0, panels, (panels + threads - 1) / threads, [&](int64_t p0, int64_t p1) {
    small_gemm(x, ldx, rows, panels_.data() + p0 * in_ * kPanel, bias_.data() + p0 * kPanel, in_,
               std::min(out_, p1 * kPanel) - p0 * kPanel, y + p0 * kPanel, ldy);
  });
}

}  // namespace pathrt
