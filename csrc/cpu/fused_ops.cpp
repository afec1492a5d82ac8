// CPU kernels of the fused deployed-path ops (schemas: pathrt/runtime/ops.py):
//   daq_threshold_pack  head logits -> scores, masks, packed masks, kept counts in one pass;
//   masked_bias_relu(_) relu(x + bias[c]) * mask[n, c], removed channels 0 or fill[c], out of place and
//                       in place;
//   pathway_conv2d      a per-sample channel-sparse convolution: removed output channels are never
//                       computed, removed input channels never read (a GEMM per group of samples with
//                       equal masks, over shifted padded planes at stride 1 and gathered columns
//                       otherwise; for 1-3 samples and up to 16M multiply-adds the direct conv of
//                       pathrt/direct_conv.h; for a few pixels, dot products over the kept weights read
//                       in place: OIHW rows, or an input-major weight's kept-input rows; one sample on
//                       rows of 4-8 pixels, every tap in one pass over its planes: PlanarConv; one sample
//                       whose maps fit a vector, a permute per tap: LaneConv).
// Element arithmetic comes from pathrt/epilogue.h, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/cpu_empty.h"
#include "pathrt/direct_conv.h"
#include "pathrt/epilogue.h"
#include "pathrt/fused_checks.h"
#include "pathrt/kernels.h"
#include "pathrt/packed_conv.h"

// BLAS's sgemm (column-major, 32-bit sizes), which torch's x86 builds export from MKL; weak, so a build
// without it loads and gathers columns instead.
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*)
    __attribute__((weak));

namespace pathrt {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> daq_threshold_pack_cpu(const at::Tensor& logits) {
  check_logits(logits);
  const auto lc = logits.contiguous();
  const int64_t n = lc.size(0), k = lc.size(1), nbytes = packed_bytes(k);
  auto scores = at::empty({n, k}, lc.options());
  auto masks = at::empty({n, k}, lc.options().dtype(at::kBool));
  auto packed = at::empty({n, nbytes}, lc.options().dtype(at::kByte));
  auto counts = at::empty({n}, lc.options().dtype(at::kLong));
  const float* src = lc.data_ptr<float>();
  float* s_out = scores.data_ptr<float>();
  bool* m_out = masks.data_ptr<bool>();
  uint8_t* p_out = packed.data_ptr<uint8_t>();
  int64_t* c_out = counts.data_ptr<int64_t>();
  pathrt::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t kept = 0;
      for (int64_t byte = 0; byte < nbytes; ++byte) {
        const int64_t at = row * k + byte * 8, count = std::min<int64_t>(8, k - byte * 8);
        const uint8_t bits = threshold_pack_byte(src + at, s_out + at, m_out + at, count);
        p_out[row * nbytes + byte] = bits;
        kept += popcount64(bits);
      }
      c_out[row] = kept;
    }
  });
  return {scores, masks, packed, counts};
}

// masked_bias_relu_value over channels-last pixels [p0, p1) of c channels (`plane` pixels per sample),
// per-channel bias and fill rows, the sample's mask row: a select instead of its branch, so that the
// compiler vectorizes it (scalar, ResNet-18@64's layer-1 map at batch 64, 4 MB, took 535 us in place).
PATHRT_CLONES static void masked_bias_relu_pixels(const float* x, const float* bias, const float* mask,
                                                  const float* fill, int64_t p0, int64_t p1, int64_t plane, int64_t c,
                                                  float* out) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* m = mask + p / plane * c;
    const float* src = x + p * c;
    float* dst = out + p * c;
#pragma omp simd
    for (int64_t ch = 0; ch < c; ++ch) {
      const float v = src[ch] + bias[ch];
      dst[ch] = m[ch] == 0.0f ? fill[ch] : relu_select(v) * m[ch];
    }
  }
}

// masked_bias_relu_value over one NCHW plane of a kept channel (mask != 0), vectorized as above.
PATHRT_CLONES static void masked_bias_relu_plane(const float* x, float bias, float mask, int64_t count, float* out) {
#pragma omp simd
  for (int64_t e = 0; e < count; ++e) {
    const float v = x[e] + bias;
    out[e] = relu_select(v) * mask;
  }
}

// A (bool or float, any strides) mask of shape (n, c) as contiguous floats, with plain loops: inside a
// session call ATen's mask.to(kFloat) and at::zeros for the absent bias took 10 and 4 us (dispatch, cold
// after the generator), where ResNet-18@64's batch-1 masking of its 64 x 16 x 16 chain map is 4 us of work.
static std::vector<float> mask_floats(const at::Tensor& mask) {
  const int64_t n = mask.size(0), c = mask.size(1), s0 = mask.stride(0), s1 = mask.stride(1);
  const bool* b = mask.scalar_type() == at::kBool ? mask.data_ptr<bool>() : nullptr;
  const float* f = b == nullptr ? mask.data_ptr<float>() : nullptr;
  std::vector<float> out(static_cast<size_t>(n * c));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < c; ++j) out[i * c + j] = b != nullptr ? static_cast<float>(b[i * s0 + j * s1]) : f[i * s0 + j * s1];
  }
  return out;
}

// out may alias x (the in-place variant); both contiguous in the same memory format.
static void masked_bias_relu_kernel(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                    const c10::optional<at::Tensor>& fill, at::Tensor& out) {
  const int64_t n = x.size(0), c = x.size(1), plane = x.size(2) * x.size(3);
  const auto m = mask_floats(mask);
  const std::vector<float> zeros(static_cast<size_t>(c), 0.0f);
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto f = fill.has_value() ? fill->contiguous() : at::Tensor();
  const float* src = x.data_ptr<float>();
  const float* mp = m.data();
  const float* bp = b.defined() ? b.data_ptr<float>() : zeros.data();
  const float* fp = f.defined() ? f.data_ptr<float>() : zeros.data();
  float* dst = out.data_ptr<float>();
  if (channels_last(x)) {  // NHWC: one pixel's channels are contiguous
    pathrt::parallel_for(0, n * plane, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, c)), [&](int64_t begin, int64_t end) {
      masked_bias_relu_pixels(src, bp, mp, fp, begin, end, plane, c, dst);
    });
    return;
  }
  pathrt::parallel_for(0, n * c, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, plane)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* o = dst + p * plane;
      if (mp[p] == 0.0f) {
        std::fill(o, o + plane, fp[p % c]);
      } else {
        masked_bias_relu_plane(src + p * plane, bp[p % c], mp[p], plane, o);
      }
    }
  });
}

at::Tensor masked_bias_relu_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                const c10::optional<at::Tensor>& fill) {
  check_masked_bias_relu(x, bias, mask, fill);
  const auto xc = x.contiguous(dense_format(x));
  auto out = cpu_empty(xc.sizes(), at::kFloat, dense_format(xc));
  masked_bias_relu_kernel(xc, bias, mask, fill, out);
  return out;
}

void masked_bias_relu_inplace_cpu(at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                  const c10::optional<at::Tensor>& fill) {
  check_masked_bias_relu(x, bias, mask, fill);
  TORCH_CHECK_VALUE(x.is_contiguous(dense_format(x)), "pathrt::masked_bias_relu_: x must be contiguous (NCHW or "
                    "channels-last) for the in-place variant; use pathrt::masked_bias_relu");
  masked_bias_relu_kernel(x, bias, mask, fill, x);
}

constexpr int64_t kMinPlanarRow = 16;

// Sample s's row of a batch's (N, channels) mask, null without a mask.
static inline const bool* mask_row(const bool* mask, int64_t s, int64_t channels) {
  return mask != nullptr ? mask + s * channels : nullptr;
}

// Channel c of a pixel whose channels lie `stride` apart, or 0 where the sample's own input mask `own`
// (null: none) drops it: a merged run (mask_groups) computes over the union of its members' kept inputs.
static inline float own_value(const float* pixel, int64_t stride, int64_t c, const bool* own) {
  return own == nullptr || own[c] ? pixel[c * stride] : 0.0f;
}

// im2col restricted to the kept input channels: row (j, dy, dx), column (oy, ox), rows `ld` floats
// apart (several samples' columns lie side by side). `x` points at one sample; strides (channel,
// row, column) cover NCHW and channels-last layouts. A channels-last sample's kept channels may first
// be copied to planes (`planes`, one pass over the sample), so that every row below copies runs of a
// plane row instead of reading one float per pixel of a channels-last sample nine times over.
static void gather_columns(const float* x, const bool* own, at::IntArrayRef strides, const std::vector<int64_t>& in_idx,
                           const ConvGeometry& g, int64_t ld, float* cols, std::vector<float>& planes) {
  const int64_t kin = static_cast<int64_t>(in_idx.size());
  int64_t s_c = strides[1], s_h = strides[2], s_w = strides[3];
  // Channels innermost and output rows of 16 or more: compact the kept channels into planes. Shorter
  // rows copy too little per run to repay the extra pass (8x8 maps: 64 -> 79 us; 16x16: 450 -> 390).
  const bool planar = s_c < s_w && g.wo >= kMinPlanarRow;
  if (planar) {
    planes.resize(static_cast<size_t>(kin * g.h * g.w));
    for (int64_t iy = 0; iy < g.h; ++iy) {
      for (int64_t ix = 0; ix < g.w; ++ix) {
        const float* pixel = x + iy * s_h + ix * s_w;
        float* dst = planes.data() + iy * g.w + ix;
        for (int64_t j = 0; j < kin; ++j) dst[j * g.h * g.w] = own_value(pixel, s_c, in_idx[j], own);
      }
    }
    x = planes.data();
    own = nullptr;
    s_c = g.h * g.w;
    s_h = g.w;
    s_w = 1;
  }
  for (int64_t j = 0; j < kin; ++j) {
    const float* plane = x + (planar ? j : in_idx[j]) * s_c;
    if (own != nullptr && !own[in_idx[j]]) {  // a channel this sample does not keep: zero rows
      for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) {
        std::fill_n(cols + (j * g.kh * g.kw + tap) * ld, g.ho * g.wo, 0.0f);
      }
      continue;
    }
    for (int64_t dy = 0; dy < g.kh; ++dy) {
      for (int64_t dx = 0; dx < g.kw; ++dx) {
        float* row = cols + ((j * g.kh + dy) * g.kw + dx) * ld;
        // the output columns whose input column lies inside the image: [lo, hi)
        const int64_t lo = std::min(g.wo, std::max<int64_t>(0, (g.pw - dx + g.sw - 1) / g.sw));
        const int64_t hi = g.w - 1 + g.pw - dx < 0 ? 0 : std::min(g.wo, (g.w - 1 + g.pw - dx) / g.sw + 1);
        for (int64_t oy = 0; oy < g.ho; ++oy) {
          float* dst = row + oy * g.wo;
          const int64_t iy = conv_input_coord(oy, dy, g.sh, g.ph, g.h);
          if (iy < 0 || hi <= lo) {
            std::fill(dst, dst + g.wo, 0.0f);
            continue;
          }
          std::fill(dst, dst + lo, 0.0f);
          std::fill(dst + hi, dst + g.wo, 0.0f);
          const float* src = plane + iy * s_h + (lo * g.sw - g.pw + dx) * s_w;
          if (g.sw == 1 && s_w == 1) {
            std::memcpy(dst + lo, src, static_cast<size_t>(hi - lo) * sizeof(float));
          } else {
            for (int64_t ox = lo; ox < hi; ++ox) dst[ox] = src[(ox - lo) * g.sw * s_w];
          }
        }
      }
    }
  }
}

// A stride-1 conv as kh * kw GEMMs over the kept input channels, zero-padded: output (oy, ox) of sample t
// is column t * sample + oy * row + ox, and tap (dy, dx) reads the planes at that column + dy * row + dx.
// The columns past a row's wo (and between samples) are computed and dropped: 12% more multiply-adds at
// 16x16, where this replaces an im2col that wrote every kept input nine times (a 256-channel 16x16 conv
// at batch 64: 20.1-20.9 -> 17.6-18.4 ms on 2 threads).
struct Shifted {
  int64_t row, sample, columns, plane;  // floats per padded row, per sample, GEMM columns, per plane
  Shifted(const ConvGeometry& g, int64_t count)
      : row(g.w + 2 * g.pw), sample((g.h + 2 * g.ph) * row), columns((count - 1) * sample + g.ho * row),
        plane(count * sample + g.kw - 1) {}  // the last tap reads kw - 1 floats past the last sample
};

// The kept channels of the `members` samples of x (strides: any layout) as zero-padded planes; `imp`: a
// merged run's input mask (the batch's rows; null: none), whose dropped channels are planes of zeros.
static void padded_planes(const float* x, const bool* imp, at::IntArrayRef strides, const std::vector<int64_t>& members,
                          const std::vector<int64_t>& in_idx, const ConvGeometry& g, const Shifted& sh,
                          std::vector<float>& planes) {
  const int64_t kin = static_cast<int64_t>(in_idx.size());
  planes.assign(static_cast<size_t>(kin * sh.plane), 0.0f);
  for (size_t t = 0; t < members.size(); ++t) {
    const float* sample = x + members[t] * strides[0];
    const bool* own = mask_row(imp, members[t], g.c_in);
    for (int64_t iy = 0; iy < g.h; ++iy) {
      for (int64_t ix = 0; ix < g.w; ++ix) {
        const float* pixel = sample + iy * strides[2] + ix * strides[3];
        float* dst = planes.data() + static_cast<int64_t>(t) * sh.sample + (iy + g.ph) * sh.row + ix + g.pw;
        for (int64_t j = 0; j < kin; ++j) dst[j * sh.plane] = own_value(pixel, strides[1], in_idx[j], own);
      }
    }
  }
}

namespace {

using V8 = float __attribute__((vector_size(32)));
using V16 = float __attribute__((vector_size(64)));
constexpr int64_t kRowAlign = 16;      // floats: pixel rows (and in-place weight rows) are a multiple
constexpr int64_t kBlockOuts = 4;      // weight rows per register block
constexpr int64_t kSlabOuts = kInputMajorBlock;  // outputs per block of the input-major kernel
constexpr int64_t kSlabPrefetch = 16;  // rows ahead the input-major kernel prefetches

// Blocks per parallel_for chunk for the dot-product kernels, blocks of `block_macs` multiply-adds each:
// chunks of at least 128k multiply-adds, below which a helper thread costs more than it saves.
int64_t dot_grain(int64_t block_macs) {
  return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, block_macs));
}

template <typename V>
[[gnu::always_inline]] inline float lane_sum(const V& v) {
  constexpr int lanes = sizeof(V) / sizeof(float);
  float l[lanes];
  std::memcpy(l, &v, sizeof(V));
  for (int width = lanes / 2; width > 0; width /= 2) {
    for (int i = 0; i < width; ++i) l[i] += l[i + width];
  }
  return l[0];
}

// The lane sums of 16 vectors of 16 floats to sums[0, 16) (sums[i]: v[i]'s), in 15 shuffle-and-add
// steps, each halving the vectors and doubling the accumulators a vector holds, instead of 16 scalar sums
// of 15 adds each: a 1x1 conv's few-pixel dot products (depth = its kept inputs) spent most of their time
// in those (ResNet-18@64's 128 -> 256 downsample at 4x4: ~20 us of a ~40 us call).
[[gnu::always_inline]] inline void lane_sums16(const V16 (&v)[16], float* sums) {
  V16 z[8], w[4], u[2];
  for (int i = 0; i < 8; ++i) {  // z[i]: 8 partial sums of v[2i], then 8 of v[2i + 1]
    z[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 4; ++i) {  // w[i]: 4 partial sums of each of v[4i .. 4i + 3]
    w[i] = __builtin_shufflevector(z[2 * i], z[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(z[2 * i], z[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // u[i]: 2 partial sums of each of v[8i .. 8i + 7]
    u[i] = __builtin_shufflevector(w[2 * i], w[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(w[2 * i], w[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  }
  const V16 all = __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
                  __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  std::memcpy(sums, &all, sizeof(all));
}

// y[a * width + p] = w[a] . rows[p] over `ld` floats (a multiple of kRowAlign), for the kBlockOuts weight
// rows (the first `outs` are stored) and each of the `width` pixel rows, kPixels at a time (tails
// recompute the last row). Inlined into one function per instruction set below.
template <typename V, int64_t kPixels>
[[gnu::always_inline]] inline void dot_rows_body(const float* const* w, int64_t outs, const float* rows, int64_t width,
                                                 int64_t ld, float* y) {
  constexpr int64_t lanes = sizeof(V) / sizeof(float);
  for (int64_t p0 = 0; p0 < width; p0 += kPixels) {
    const float* c[kPixels];
    for (int64_t p = 0; p < kPixels; ++p) c[p] = rows + std::min(p0 + p, width - 1) * ld;
    V acc[kBlockOuts][kPixels] = {};
    for (int64_t k = 0; k < ld; k += lanes) {
      V cv[kPixels];
      for (int64_t p = 0; p < kPixels; ++p) std::memcpy(&cv[p], c[p] + k, sizeof(V));
      // A line of each row kPrefetchAhead on: the hardware prefetchers alone left the multiply-adds waiting
      // on a weight streamed from beyond the L2. ResNet-18@64 at batch 1 on 2 cores, session phases of 3
      // interleaved pairs: plain (its 2x2 512->512 convs) 2.42-2.62 -> 2.24-2.31 ms, pathway 1.65-1.72 ->
      // 1.58-1.64 (faster in each of 9 pairs; 256 and 1024 floats ahead gained less); VGG-11@64 at batch 1,
      // ResNet-18@64 at batch 64 and the embedded model at batch 1: the same within noise. Into the L2
      // (prefetcht1), not the L1: the weight is read once, and a 2x2 map's four pixel rows (73 KB at 512
      // inputs) already overflow the L1. ResNet-18@64 at batch 1, in one process alternating rounds of
      // 8 calls, 10th percentiles of 5 runs: plain 2.87-3.56 -> 2.73-3.26 ms, whole call 5.20-7.10 ->
      // 4.99-6.75, faster in each run (L2 at 1024 floats ahead or prefetcht2 gained the same; the direct
      // conv's prefetches into the L2 as well: its plain pass no faster).
      if (k % kLineFloats == 0) {
        for (int64_t a = 0; a < kBlockOuts; ++a) __builtin_prefetch(w[a] + k + kPrefetchAhead, 0, kIntoL2);
      }
      for (int64_t a = 0; a < kBlockOuts; ++a) {
        V wv;
        std::memcpy(&wv, w[a] + k, sizeof(V));
        for (int64_t p = 0; p < kPixels; ++p) acc[a][p] += wv * cv[p];
      }
    }
    float sums[kBlockOuts * kPixels];  // sums[a * kPixels + p]: acc[a][p]'s lanes summed
    if constexpr (std::is_same_v<V, V16> && kBlockOuts * kPixels == 16) {
      lane_sums16(reinterpret_cast<const V16(&)[16]>(acc), sums);
    } else {
      for (int64_t a = 0; a < kBlockOuts; ++a) {
        for (int64_t p = 0; p < kPixels; ++p) sums[a * kPixels + p] = lane_sum(acc[a][p]);
      }
    }
    for (int64_t p = 0; p < std::min(kPixels, width - p0); ++p) {
      for (int64_t a = 0; a < outs; ++a) y[a * width + p0 + p] = sums[a * kPixels + p];
    }
  }
}

// AVX-512: 16 accumulators of 16 floats, 8 loads per 16 FMAs (twice AVX2's multiply-adds per cycle).
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void dot_rows_avx512(const float* const* w, int64_t outs,
                                                                          const float* rows, int64_t width,
                                                                          int64_t ld, float* y) {
  dot_rows_body<V16, 4>(w, outs, rows, width, ld, y);
}
// AVX2: 12 accumulators of 8 floats, 7 loads per 12 FMAs.
__attribute__((target("avx2,fma"))) void dot_rows_avx2(const float* const* w, int64_t outs, const float* rows,
                                                      int64_t width, int64_t ld, float* y) {
  dot_rows_body<V8, 3>(w, outs, rows, width, ld, y);
}
void dot_rows_baseline(const float* const* w, int64_t outs, const float* rows, int64_t width, int64_t ld, float* y) {
  dot_rows_body<V8, 3>(w, outs, rows, width, ld, y);
}

// y[p * ldy + o] = sum over k < depth of w[offsets[k] + o] * rows[p * ld + k], for the kSlabOuts outputs o
// and each of the `width` pixel rows, kPixels at a time: an input-major weight's rows (one per kept
// input channel and tap) scaled by the pixels' values, vectors over the outputs. Reads only the kept
// inputs' weights, contiguously, for convs whose input is sparse and output dense (each ResNet block's
// first conv), where OIHW rows hold the kept inputs scattered.
template <typename V, int64_t kPixels>
[[gnu::always_inline]] inline void slab_rows_body(const float* w, const int64_t* offsets, int64_t depth,
                                                  const float* rows, int64_t ld, int64_t width, float* y,
                                                  int64_t ldy) {
  constexpr int64_t lanes = sizeof(V) / sizeof(float), vecs = kSlabOuts / lanes;
  for (int64_t p0 = 0; p0 < width; p0 += kPixels) {
    const float* c[kPixels];
    for (int64_t p = 0; p < kPixels; ++p) c[p] = rows + std::min(p0 + p, width - 1) * ld;  // tails recompute
    V acc[vecs][kPixels] = {};
    for (int64_t k = 0; k < depth; ++k) {
      const float* wk = w + offsets[k];
      // Rows lie a row of the weight apart: too far for the prefetchers. Into the L2, as dot_rows_body's:
      // ResNet-18@64's batch-1 pathway pass (its blocks' first convs), alternating in one process, 10th
      // percentiles of 3 runs 2.04-2.48 -> 1.97-2.24 ms, medians 2.75-2.97 -> 2.59-2.65.
      if (k + kSlabPrefetch < depth) prefetch_lines<kIntoL2>(w + offsets[k + kSlabPrefetch], kSlabOuts);
      for (int64_t v = 0; v < vecs; ++v) {
        V wv;
        std::memcpy(&wv, wk + v * lanes, sizeof(V));
        for (int64_t p = 0; p < kPixels; ++p) acc[v][p] += wv * c[p][k];
      }
    }
    for (int64_t p = 0; p < std::min(kPixels, width - p0); ++p) {
      for (int64_t v = 0; v < vecs; ++v) std::memcpy(y + (p0 + p) * ldy + v * lanes, &acc[v][p], sizeof(V));
    }
  }
}

// AVX-512: 4 x 4 accumulators, 4 loads and 4 broadcasts per 16 FMAs; AVX2: 8 x 1.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void slab_rows_avx512(const float* w, const int64_t* offsets,
                                                                           int64_t depth, const float* rows,
                                                                           int64_t ld, int64_t width, float* y,
                                                                           int64_t ldy) {
  slab_rows_body<V16, 4>(w, offsets, depth, rows, ld, width, y, ldy);
}
__attribute__((target("avx2,fma"))) void slab_rows_avx2(const float* w, const int64_t* offsets, int64_t depth,
                                                       const float* rows, int64_t ld, int64_t width, float* y,
                                                       int64_t ldy) {
  slab_rows_body<V8, 1>(w, offsets, depth, rows, ld, width, y, ldy);
}
void slab_rows_baseline(const float* w, const int64_t* offsets, int64_t depth, const float* rows, int64_t ld,
                        int64_t width, float* y, int64_t ldy) {
  slab_rows_body<V8, 1>(w, offsets, depth, rows, ld, width, y, ldy);
}

// Chosen once, when the library loads.
const auto dot_rows = for_this_cpu(dot_rows_avx512, dot_rows_avx2, dot_rows_baseline);

// dst[j * taps + t] = row[in_idx[j] * in_stride + t]: an output's weights for its kept inputs, each
// input's taps contiguous (an OIHW weight's), a float at a time.
void kept_taps_scalar(const float* row, const int64_t* in_idx, int64_t kin, int64_t in_stride, int64_t taps,
                      float* dst) {
  for (int64_t j = 0; j < kin; ++j) std::copy_n(row + in_idx[j] * in_stride, taps, dst + j * taps);
}
// The same with one masked load and store per input (VGG-11@64's batch-1 pathway 512->512 convs at 4x4,
// ~200 x 200 kept, took 150-170 us each, most of it copying ~360k floats one at a time); inputs of more
// than 16 taps as the scalar loop.
__attribute__((target("avx512f"))) void kept_taps_avx512(const float* row, const int64_t* in_idx, int64_t kin,
                                                         int64_t in_stride, int64_t taps, float* dst) {
  if (taps > 16) return kept_taps_scalar(row, in_idx, kin, in_stride, taps, dst);
  const auto lanes = static_cast<__mmask16>((1u << taps) - 1);
  for (int64_t j = 0; j < kin; ++j) {
    _mm512_mask_storeu_ps(dst + j * taps, lanes, _mm512_maskz_loadu_ps(lanes, row + in_idx[j] * in_stride));
  }
}
const auto kept_taps = for_this_cpu(kept_taps_avx512, kept_taps_scalar, kept_taps_scalar);

// The direct runs' epilogue into a channels-last output, a pixel's outputs 16 channels at a time: `kept`
// (mask_bits) the outputs the run computes, `own` (or null) those the sample keeps of them; `packed`: `y`
// holds the kept outputs only, in channel order (a compacted weight's), else all of them. out =
// bias_act(y) where kept and own, 0 elsewhere (epilogue.h's arithmetic), in place of the scalar epilogue's
// ~2 cycles per kept value, its channel looked up, and of zeroing the output first (the embedded model's
// batch-64 pathway pass 2.67-2.69 -> 2.46-2.49 ms on 2 cores).
struct PixelEpilogue {
  const uint64_t* kept;
  const float* bias;  // or null
  int64_t channels;
  bool packed, relu;
};
__attribute__((target("avx512f"))) void pixel_epilogue_avx512(const PixelEpilogue& e, const float* y,
                                                              const float* residual, const uint64_t* own,
                                                              float* out) {
  const __m512 zero = _mm512_setzero_ps();
  const auto word = [](const uint64_t* bits, int64_t c0) {
    return static_cast<__mmask16>(bits[c0 / 64] >> (c0 % 64));
  };
  int64_t at = 0;  // y's next packed value
  for (int64_t c0 = 0; c0 < e.channels; c0 += 16) {
    const auto lanes = static_cast<__mmask16>(e.channels - c0 >= 16 ? 0xFFFF : (1u << (e.channels - c0)) - 1);
    const __mmask16 bits = word(e.kept, c0);
    __m512 v = e.packed ? _mm512_maskz_expandloadu_ps(bits, y + at) : _mm512_maskz_loadu_ps(bits, y + c0);
    at += __builtin_popcount(bits);
    v = _mm512_add_ps(v, e.bias != nullptr ? _mm512_maskz_loadu_ps(lanes, e.bias + c0) : zero);
    v = _mm512_add_ps(v, residual != nullptr ? _mm512_maskz_loadu_ps(lanes, residual + c0) : zero);
    if (e.relu) v = _mm512_maskz_max_ps(0xFFFF, v, zero);  // relu_value's MAXSS: 0 for NaN
    _mm512_mask_storeu_ps(out + c0, lanes, _mm512_maskz_mov_ps(own != nullptr ? bits & word(own, c0) : bits, v));
  }
}

// One sample's stride-1 conv over its kept inputs' zero-padded planes (Shifted's layout), every tap in one
// pass: y[a * ldy + c] = sum over kept inputs j and taps t of w_a[in_at[j] + t] * planes[j * plane + c +
// off[t]], column c = oy * row + ox (the columns past a row's wo computed and dropped), w_a the OIHW row of
// kept output a. The weights are read in place, one float broadcast per (output, input, tap), so no kept
// weight is gathered or compacted; kR outputs x kV vectors of columns per register tile.
struct PlanarConv {
  const float* planes;
  int64_t plane;
  const int64_t* off;  // per tap: dy * row + dx
  int64_t taps;
  const float* weight;  // OIHW, rows `weight_row` floats apart
  int64_t weight_row;
  const int64_t* in_at;  // kept input j's taps at in_at[j] in a row
  int64_t kin;
  const int64_t* out_idx;
  int64_t kout, vectors;  // vectors of 16 columns
  float* y;
  int64_t ldy;
};
template <int kR, int kV>
[[gnu::always_inline]] inline void planar_tile(const PlanarConv& c, int64_t a0, int64_t v0) {
  const float* w[kR];
  for (int r = 0; r < kR; ++r) w[r] = c.weight + c.out_idx[std::min<int64_t>(a0 + r, c.kout - 1)] * c.weight_row;
  V16 acc[kR][kV] = {};
  for (int64_t j = 0; j < c.kin; ++j) {
    const float* p = c.planes + j * c.plane + v0 * 16;
    const int64_t at = c.in_at[j];
    for (int64_t t = 0; t < c.taps; ++t) {
      V16 x[kV];
#pragma GCC unroll 8
      for (int v = 0; v < kV; ++v) std::memcpy(&x[v], p + c.off[t] + v * 16, sizeof(V16));
#pragma GCC unroll 16
      for (int r = 0; r < kR; ++r) {
        const float s = w[r][at + t];
#pragma GCC unroll 8
        for (int v = 0; v < kV; ++v) acc[r][v] += s * x[v];
      }
    }
  }
  for (int r = 0; r < kR && a0 + r < c.kout; ++r) {
    for (int v = 0; v < kV; ++v) std::memcpy(c.y + (a0 + r) * c.ldy + (v0 + v) * 16, &acc[r][v], sizeof(V16));
  }
}
// Tasks [t0, t1) of planar_tasks(c): output blocks outer, column tiles inner; the last tile overlaps the
// one before it when the vectors do not divide (it recomputes the same values).
template <int kR, int kV>
[[gnu::always_inline]] inline void planar_range(const PlanarConv& c, int64_t t0, int64_t t1) {
  const int64_t tiles = (c.vectors + kV - 1) / kV;
  for (int64_t t = t0; t < t1; ++t) {
    planar_tile<kR, kV>(c, t / tiles * kR, std::min((t % tiles) * kV, c.vectors - kV));
  }
}
// kV vectors of columns (at most 6) and kR outputs: 24 accumulators of the 32 registers (12 x 1 at one).
constexpr int planar_vectors(int64_t vectors) { return static_cast<int>(std::min<int64_t>(6, vectors)); }
constexpr int planar_outputs(int vectors) { return vectors <= 2 ? 12 : 24 / vectors; }
int64_t planar_tasks(const PlanarConv& c) {
  const int v = planar_vectors(c.vectors), r = planar_outputs(v);
  return (c.kout + r - 1) / r * ((c.vectors + v - 1) / v);
}
int64_t planar_task_macs(const PlanarConv& c) {
  const int v = planar_vectors(c.vectors);
  return int64_t{16} * v * planar_outputs(v) * c.kin * c.taps;
}
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void planar_avx512(const PlanarConv& c, int64_t t0, int64_t t1) {
  switch (planar_vectors(c.vectors)) {
    case 1: return planar_range<12, 1>(c, t0, t1);
    case 2: return planar_range<12, 2>(c, t0, t1);
    case 3: return planar_range<8, 3>(c, t0, t1);
    case 4: return planar_range<6, 4>(c, t0, t1);
    case 5: return planar_range<4, 5>(c, t0, t1);
    default: return planar_range<4, 6>(c, t0, t1);
  }
}
using PlanarFn = void (*)(const PlanarConv&, int64_t, int64_t);
const auto planar_conv = for_this_cpu<PlanarFn>(planar_avx512, nullptr, nullptr);
using PixelEpilogueFn = void (*)(const PixelEpilogue&, const float*, const float*, const uint64_t*, float*);
const auto pixel_epilogue = for_this_cpu<PixelEpilogueFn>(pixel_epilogue_avx512, nullptr, nullptr);

// The channels that `kept`'s bits mark of `pixels` channels-last pixels (`stride` floats apart, `channels`
// each), packed pixel by pixel into dst (popcount(kept) floats each): one AVX-512 compress per 16 channels
// instead of a load per kept channel. The embedded model's batch-1 pathway conv 32 -> 64 at 16x16 (24 of
// 32 inputs kept), whose zero-padded input took 7.2 us of 42: 41.6-42.1 -> 39.0-40.5 us (3 interleaved pairs).
__attribute__((target("avx512f"))) void kept_pixels_avx512(const float* src, int64_t pixels, int64_t stride,
                                                           const uint64_t* kept, int64_t channels, float* dst) {
  for (int64_t p = 0; p < pixels; ++p) {
    const float* pixel = src + p * stride;
    for (int64_t c0 = 0; c0 < channels; c0 += 16) {
      const auto bits = static_cast<__mmask16>(kept[c0 / 64] >> (c0 % 64));  // none past `channels`
      const int count = __builtin_popcount(bits);
      _mm512_mask_storeu_ps(dst, static_cast<__mmask16>((1u << count) - 1),
                            _mm512_maskz_compress_ps(bits, _mm512_maskz_loadu_ps(bits, pixel + c0)));
      dst += count;
    }
  }
}
using KeptPixelsFn = void (*)(const float*, int64_t, int64_t, const uint64_t*, int64_t, float*);
const auto kept_pixels = for_this_cpu<KeptPixelsFn>(kept_pixels_avx512, nullptr, nullptr);

// v[i] <- column i of the 16 x 16 floats whose rows were v[0, 16): interleaves within 128-bit lanes, then
// of whole lanes (what unpack / shuffle_ps / shuffle_f32x4 do, as the vector extension's shuffles).
[[gnu::always_inline]] inline void transpose16(V16 (&v)[16]) {
  V16 t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of floats
    t[i] = __builtin_shufflevector(v[i], v[i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[i + 1] = __builtin_shufflevector(v[i], v[i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks
    for (int k = 0; k < 2; ++k) {
      v[i + 2 * k] = __builtin_shufflevector(t[i + k], t[i + k + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13,
                                             28, 29);
      v[i + 2 * k + 1] = __builtin_shufflevector(t[i + k], t[i + k + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27,
                                                 14, 15, 30, 31);
    }
  }
  for (int i = 0; i < 16; i += 8) {  // 8 x 8 blocks
    for (int k = 0; k < 4; ++k) {
      t[i + k] = __builtin_shufflevector(v[i + k], v[i + k + 4], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
      t[i + k + 4] =
          __builtin_shufflevector(v[i + k], v[i + k + 4], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    }
  }
  for (int k = 0; k < 8; ++k) {
    v[k] = __builtin_shufflevector(t[k], t[k + 8], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    v[k + 8] = __builtin_shufflevector(t[k], t[k + 8], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
}

// A conv whose input and output maps fit a vector each (kLanes pixels), one sample: each kept input's map
// in a vector, which one masked permute per tap turns into the inputs that tap reads under each output
// pixel (0 in the padding and past the outputs). Output pixel p of tap t reads input pixel from[t * kLanes
// + p] where bit p of inside[t] is set.
constexpr int64_t kLanes = 16;
struct LaneTaps {
  std::vector<int32_t> from;
  std::vector<uint16_t> inside;
  explicit LaneTaps(const ConvGeometry& g)
      : from(static_cast<size_t>(g.kh * g.kw * kLanes), 0), inside(static_cast<size_t>(g.kh * g.kw), 0) {
    for (int64_t t = 0; t < g.kh * g.kw; ++t) {
      for (int64_t p = 0; p < g.ho * g.wo; ++p) {
        const int64_t iy = conv_input_coord(p / g.wo, t / g.kw, g.sh, g.ph, g.h);
        const int64_t ix = conv_input_coord(p % g.wo, t % g.kw, g.sw, g.pw, g.w);
        if (iy < 0 || ix < 0) continue;
        from[t * kLanes + p] = static_cast<int32_t>(iy * g.w + ix);
        inside[t] = static_cast<uint16_t>(inside[t] | 1u << p);
      }
    }
  }
};

// maps[j * kLanes + q] = kept channel in_idx[j] of a channels-last sample's pixel q (pixels `pixel` floats
// apart, rows `row` apart; 0 past the map's g.h * g.w <= kLanes): a 16 x 16 transpose per 16 channels.
__attribute__((target("avx512f"))) void lane_maps_avx512(const float* x, int64_t row, int64_t pixel,
                                                        const int64_t* in_idx, int64_t kin, const ConvGeometry& g,
                                                        float* maps) {
  const int64_t inputs = g.h * g.w;
  V16 block[kLanes];
  int64_t j = 0;
  for (int64_t c0 = 0; j < kin; c0 += kLanes) {
    if (in_idx[j] >= c0 + kLanes) continue;  // no kept channel among these 16
    const auto lanes = static_cast<__mmask16>(g.c_in - c0 >= kLanes ? 0xFFFF : (1u << (g.c_in - c0)) - 1);
    for (int64_t q = 0; q < kLanes; ++q) {
      block[q] = q < inputs ? V16(_mm512_maskz_loadu_ps(lanes, x + q / g.w * row + q % g.w * pixel + c0)) : V16{};
    }
    transpose16(block);  // block[c]: channel c0 + c's pixels
    for (; j < kin && in_idx[j] < c0 + kLanes; ++j) std::memcpy(maps + j * kLanes, &block[in_idx[j] - c0], sizeof(V16));
  }
}

// y[a * kLanes + p] = sum over kept inputs j and taps t of w_a[in_at[j] + t] * (tap t's permute of map j)[p],
// w_a the OIHW row of kept output a, read in place: PlanarConv's arithmetic over one vector of output
// pixels, kLaneOuts outputs a tile, the taps' inputs made in registers from the maps (the 9 vectors per
// input of a materialized im2col, 147 KB for 256 inputs, took 12 us to write inside a session call).
struct LaneConv {
  const float* maps;
  const LaneTaps& taps;
  const float* weight;  // OIHW, rows `weight_row` floats apart
  int64_t weight_row;
  const int64_t* in_at;  // kept input j's taps at in_at[j] in a row
  int64_t kin;
  const int64_t* out_idx;
  int64_t kout;
  float* y;
};
// accumulators: the FMAs' 4 cycles of latency on 2 ports; 12, with their 12 row pointers, took longer
constexpr int64_t kLaneOuts = 8;
int64_t lane_tasks(const LaneConv& c) { return (c.kout + kLaneOuts - 1) / kLaneOuts; }
// kTaps: the taps when 9 (3x3, unrolled), else 0 (c.taps' count at run time)
template <int64_t kTaps>
__attribute__((target("avx512f"), always_inline)) inline void lane_tiles(const LaneConv& c, int64_t t0, int64_t t1) {
  const int64_t taps = kTaps > 0 ? kTaps : static_cast<int64_t>(c.taps.inside.size());
  const int32_t* from = c.taps.from.data();
  const uint16_t* inside = c.taps.inside.data();
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t a0 = task * kLaneOuts;
    const float* w[kLaneOuts];
    for (int64_t r = 0; r < kLaneOuts; ++r) {  // a short tile repeats its last row
      w[r] = c.weight + c.out_idx[std::min(a0 + r, c.kout - 1)] * c.weight_row;
    }
    __m512 acc[kLaneOuts];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int64_t j = 0; j < c.kin; ++j) {
      const __m512 map = _mm512_loadu_ps(c.maps + j * kLanes);
      const int64_t at = c.in_at[j];
#pragma GCC unroll 9
      for (int64_t t = 0; t < taps; ++t) {
        const __m512 v = _mm512_maskz_permutexvar_ps(inside[t], _mm512_loadu_si512(from + t * kLanes), map);
#pragma GCC unroll 8
        for (int64_t r = 0; r < kLaneOuts; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(w[r][at + t]), v, acc[r]);
      }
    }
    for (int64_t r = 0; r < kLaneOuts && a0 + r < c.kout; ++r) _mm512_storeu_ps(c.y + (a0 + r) * kLanes, acc[r]);
  }
}
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void lane_conv_avx512(const LaneConv& c, int64_t t0, int64_t t1) {
  return c.taps.inside.size() == 9 ? lane_tiles<9>(c, t0, t1) : lane_tiles<0>(c, t0, t1);
}
using LaneConvFn = void (*)(const LaneConv&, int64_t, int64_t);
const auto lane_conv = for_this_cpu<LaneConvFn>(lane_conv_avx512, nullptr, nullptr);
using LaneMapsFn = void (*)(const float*, int64_t, int64_t, const int64_t*, int64_t, const ConvGeometry&, float*);
const auto lane_maps = for_this_cpu<LaneMapsFn>(lane_maps_avx512, nullptr, nullptr);
const auto slab_rows = for_this_cpu(slab_rows_avx512, slab_rows_avx2, slab_rows_baseline);

}  // namespace

void few_rows_linear_cpu(const float* x, int64_t rows, const float* w, int64_t out, int64_t in, const float* bias,
                         bool relu, float* y) {
  static_assert(kFewRowsAlign % kRowAlign == 0, "x's and the weight's rows are dot_rows' pixel and weight rows");
  TORCH_CHECK(rows <= kDotMaxPixels && in % kFewRowsAlign == 0, "few_rows_linear_cpu: ", rows, " rows of ", in,
              " values: at most ", kDotMaxPixels, " rows, a multiple of ", kFewRowsAlign, " values");
  const int64_t blocks = (out + kBlockOuts - 1) / kBlockOuts;
  const int64_t grain = dot_grain(kBlockOuts * in * rows);
  pathrt::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    float sums[kBlockOuts * kDotMaxPixels];  // sums[a * rows + r]: output a0 + a of row r
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t a0 = b * kBlockOuts, outs = std::min(kBlockOuts, out - a0);
      const float* wb[kBlockOuts];
      for (int64_t a = 0; a < kBlockOuts; ++a) wb[a] = w + (a0 + std::min(a, outs - 1)) * in;  // a short block repeats its last row
      dot_rows(wb, outs, x, rows, in, sums);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t a = 0; a < outs; ++a) {
          y[r * out + a0 + a] = bias_act(sums[a * rows + r], bias ? bias[a0 + a] : 0.0f, 0.0f, relu);
        }
      }
    }
  });
}

// Samples computed together over the union of their kept channels (`in`, `out`: bit c of word c / 64 per
// kept channel). A merged run's members have different masks: each member's own masks then zero the
// inputs it drops, as they are gathered, and the outputs it drops, in the epilogue.
struct MaskRun {
  std::vector<int64_t> members;
  std::vector<uint64_t> in, out;
  bool merged = false;
};

// Two groups of samples are merged when computing them over the union of their masks costs fewer extra
// multiply-adds than this, about a run's own cost (gathering its kept weights, a kernel call of a few
// samples: ~25 us of the ~50 a direct run of 1-3 samples took in the embedded model's batch-64 pathway
// pass, on 2 cores). Trained generators' masks differ in a few channels between samples of a class: there
// the batch's 34-40 distinct (in, out) pairs per conv merge into 10-16 runs for 3-8% more multiply-adds.
// Merged runs take the direct conv while it fits kDirectMaxMacs, whatever their samples: the same pass
// 6.9-7.4 -> 6.1-6.7 ms (interleaved, 7 of 7), where through the GEMMs from 4 samples on it was slower
// (8.5-8.7 against 8.1-8.2) and merging only up to 3 samples gained less (6.8-7.5).
constexpr int64_t kRunOverheadMacs = int64_t{1} << 19;

// A float of a blocked weight compacted to its kept outputs (pathway_conv2d's direct runs) costs about as
// much as this many multiply-adds of the direct kernel: the compaction reads the weight's every line from
// beyond the L2 at ~18 GB/s on 2 cores, the kernel runs ~180 G multiply-adds/s. ResNet-18@64 at batch 1:
// its out-masked 128->128 convs at 8x8 (34-46% kept) took 30-32 us to compact and 32 us in the kernel, 53 us
// in place over every output (the pathway phase 1.09-1.11 -> 1.05-1.07 ms); its 64->64 conv at 16x16 (39%
// kept) 78 us compacted, 90 in place. The embedded model's batch-1 pathway phase 0.197-0.202 -> 0.172-0.174 ms.
constexpr int64_t kCompactFloatMacs = 40;

namespace {

// A mask row (null: every channel kept) as bits.
std::vector<uint64_t> mask_bits(const bool* row, int64_t channels) {
  std::vector<uint64_t> bits(static_cast<size_t>((channels + 63) / 64), 0);
  for (int64_t c = 0; c < channels; c += 8) {  // a byte of bits at a time
    const int64_t count = std::min<int64_t>(8, channels - c);
    const uint64_t byte =
        row == nullptr ? (uint64_t{1} << count) - 1 : pack_byte(reinterpret_cast<const uint8_t*>(row + c), count);
    bits[c / 64] |= byte << (c % 64);
  }
  return bits;
}

// Kept channels of `a` or `b` (b = a: of a alone).
int64_t kept_bits(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  int64_t count = 0;
  for (size_t i = 0; i < a.size(); ++i) count += __builtin_popcountll(a[i] | b[i]);
  return count;
}

// A thread's buffers for pathway_conv2d's runs and dot products, kept across calls instead of allocated
// and zeroed in each: ResNet-18@64 at batch 1 did that for ~0.3 MB in layer2.1.conv2's compacted weight
// alone (perf over the whole call: memset 1.66 -> 1.12%; under torch.profiler, whose own allocations
// move glibc's heap, that conv's step took 255 -> 115 us, 54 us of it the conv). A buffer that grew past
// kKeptBytes is freed after the call.
struct RunBuffers {
  static constexpr size_t kKeptBytes = size_t{4} << 20;
  std::vector<int64_t> in_idx, out_idx, offsets;
  std::vector<float> cols, wbuf, ybuf, planes, rows, maps;
  std::vector<uint32_t> keep;  // an output mask's words for the direct kernel's epilogue

  void trim() {
    for (auto* v : {&cols, &wbuf, &ybuf, &planes, &rows, &maps}) {
      if (v->capacity() * sizeof(float) > kKeptBytes) std::vector<float>().swap(*v);
    }
  }
};
RunBuffers& run_buffers() {
  thread_local RunBuffers buffers;
  return buffers;
}

}  // namespace

// The kept channels of a run's bits, in order.
static void kept_channels(const std::vector<uint64_t>& bits, int64_t c, std::vector<int64_t>& idx) {
  idx.clear();
  for (int64_t word = 0; word * 64 < c; ++word) {
    for (uint64_t w = bits[word]; w != 0; w &= w - 1) idx.push_back(word * 64 + __builtin_ctzll(w));
  }
}

// The batch's samples grouped by equal (in, out) mask rows (groups numbered in order of first appearance),
// groups merged cheapest first while a merge saves a run (kRunOverheadMacs), each group cut into runs whose
// gathered columns fit in about 8 MB; the runs costliest first. Trained generators repeat masks heavily
// (13-89 distinct per layer over 359 test digits), so one GEMM serves many samples.
PATHRT_CLONES static std::vector<MaskRun> mask_groups(const bool* imp, const bool* omp, const ConvGeometry& g) {
  if (g.n == 1) {  // one run, no grouping (the map and cost tables took ~1.5 us of a batch-1 conv)
    std::vector<MaskRun> one(1);
    one[0] = {{0}, mask_bits(mask_row(imp, 0, g.c_in), g.c_in), mask_bits(mask_row(omp, 0, g.c_out), g.c_out)};
    return one;
  }
  std::map<std::pair<std::vector<uint64_t>, std::vector<uint64_t>>, size_t> index;  // (in, out) bits -> group
  std::vector<MaskRun> groups;
  for (int64_t s = 0; s < g.n; ++s) {
    auto bits = std::pair{mask_bits(mask_row(imp, s, g.c_in), g.c_in), mask_bits(mask_row(omp, s, g.c_out), g.c_out)};
    const auto [it, fresh] = index.emplace(bits, groups.size());
    if (fresh) groups.push_back({{}, std::move(bits.first), std::move(bits.second)});
    groups[it->second].members.push_back(s);
  }
  // Merging, cheapest pair first: cost[a][b] (a < b), the extra multiply-adds of a and b as one run.
  const int64_t per_pair = g.kh * g.kw * g.ho * g.wo;  // multiply-adds per (input, output) pair per sample
  const size_t count = groups.size();
  // multiply-adds of run x, or of x and y as one run
  // macs and price inlined: into the x86-64-v3/v4 clones with the POPCNT instruction (the portable build
  // calls libgcc's __popcountdi2: with it, grouping took 76 of the embedded model's batch-64 pathway convs'
  // ~500 us each, serial on the calling thread; 53 us inlined)
  const auto macs = [&](const MaskRun& x, const MaskRun& y) __attribute__((always_inline)) {
    const auto samples = static_cast<int64_t>(x.members.size() + (&x == &y ? 0 : y.members.size()));
    return samples * kept_bits(x.in, y.in) * kept_bits(x.out, y.out) * per_pair;
  };
  std::vector<int64_t> own(count);
  for (size_t a = 0; a < count; ++a) own[a] = macs(groups[a], groups[a]);
  const auto price = [&](size_t a, size_t b) __attribute__((always_inline)) {
    return macs(groups[a], groups[b]) - own[a] - own[b];
  };
  std::vector<std::vector<int64_t>> cost(count, std::vector<int64_t>(count));
  for (size_t a = 0; a < count; ++a) {
    for (size_t b = a + 1; b < count; ++b) cost[a][b] = price(a, b);
  }
  std::vector<bool> alive(count, true);
  // partner[a]: the first live b > a of least cost[a][b] (count: none), so that finding the cheapest pair
  // scans the groups, not every pair (at batch 64, 30-60 groups: the pair scans took 75-240 us a conv).
  std::vector<size_t> partner(count, count);
  const auto cheaper = [&](size_t a, size_t b, size_t than) {  // cost[a][b] before cost[a][than]
    return than == count || cost[a][b] < cost[a][than] || (cost[a][b] == cost[a][than] && b < than);
  };
  const auto find_partner = [&](size_t a) {
    partner[a] = count;
    for (size_t b = a + 1; b < count; ++b) {
      if (alive[b] && cheaper(a, b, partner[a])) partner[a] = b;
    }
  };
  for (size_t a = 0; a < count; ++a) find_partner(a);
  for (;;) {
    size_t best_a = count;
    for (size_t a = 0; a < count; ++a) {  // the first a of least cost: the pair scan's order
      if (alive[a] && partner[a] < count &&
          (best_a == count || cost[a][partner[a]] < cost[best_a][partner[best_a]])) {
        best_a = a;
      }
    }
    if (best_a == count || cost[best_a][partner[best_a]] >= kRunOverheadMacs) break;
    const size_t best_b = partner[best_a];
    auto& into = groups[best_a];
    const auto& from = groups[best_b];
    into.members.insert(into.members.end(), from.members.begin(), from.members.end());
    for (size_t i = 0; i < into.in.size(); ++i) into.in[i] |= from.in[i];
    for (size_t i = 0; i < into.out.size(); ++i) into.out[i] |= from.out[i];
    into.merged = true;
    own[best_a] = macs(into, into);
    alive[best_b] = false;
    for (size_t c = 0; c < count; ++c) {
      const size_t a = std::min(c, best_a), b = std::max(c, best_a);
      if (alive[c] && c != best_a) cost[a][b] = price(a, b);
    }
    // Rows whose least pair changed: best_a's own, those that paired with best_a or best_b, and those
    // before best_a that its new costs now beat.
    for (size_t c = 0; c < count; ++c) {
      if (!alive[c]) continue;
      if (c == best_a || partner[c] == best_a || partner[c] == best_b) {
        find_partner(c);
      } else if (c < best_a && cheaper(c, best_a, partner[c])) {
        partner[c] = best_a;
      }
    }
  }
  constexpr int64_t kMaxColumnFloats = int64_t{2} << 20;
  std::vector<MaskRun> runs;
  for (size_t a = 0; a < count; ++a) {
    if (!alive[a]) continue;
    const auto& group = groups[a];
    const int64_t per_sample = std::max<int64_t>(1, kept_bits(group.in, group.in) * per_pair);
    const size_t run = static_cast<size_t>(std::max<int64_t>(1, kMaxColumnFloats / per_sample));
    for (size_t i = 0; i < group.members.size(); i += run) {
      runs.push_back({std::vector<int64_t>(group.members.begin() + i,
                                           group.members.begin() + std::min(group.members.size(), i + run)),
                      group.in, group.out, group.merged});
    }
  }
  // costliest first, for the threads that claim them in turn (pathway_conv2d_cpu)
  std::stable_sort(runs.begin(), runs.end(),
                   [&](const MaskRun& a, const MaskRun& b) { return macs(a, a) > macs(b, b); });
  return runs;
}

at::Tensor pathway_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_mask,
                              const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, bool relu) {
  return pathway_conv2d_cpu(x, weight, bias, residual, in_mask, out_mask, stride, padding, relu, at::Tensor());
}

at::Tensor pathway_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_mask,
                              const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, bool relu, const at::Tensor& blocked) {
  const ConvGeometry g = check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding);
  TORCH_CHECK(!blocked.defined() ||
                  (blocked.dim() == 5 && blocked.is_contiguous() && blocked.scalar_type() == at::kFloat &&
                   blocked.size(0) * blocked.size(4) == g.c_out && blocked.size(1) == g.kh && blocked.size(2) == g.kw &&
                   blocked.size(3) == g.c_in),
              "pathway_conv2d: the blocked weight must be the weight as direct_conv_weight blocks it");
  const auto format = dense_format(x);  // the output keeps x's layout (NCHW or channels-last)
  const auto xc = x.contiguous(format);
  const auto bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto rc = residual.has_value() ? residual->contiguous(format) : at::Tensor();
  const auto im = in_mask.has_value() ? in_mask->contiguous() : at::Tensor();
  const auto om = out_mask.has_value() ? out_mask->contiguous() : at::Tensor();
  auto out = cpu_empty({g.n, g.c_out, g.ho, g.wo}, at::kFloat, format);  // zeroed a sample at a time below
  const auto xs = xc.strides(), os = out.strides();
  const auto rs = rc.defined() ? rc.strides() : os;
  const int64_t taps = g.kh * g.kw, cols_per_row = g.ho * g.wo;
  // member t's output pixel (oy, ox) among a run's columns
  const auto pixel = [&](int64_t t, int64_t oy, int64_t ox) { return t * cols_per_row + oy * g.wo + ox; };
  const float* xp = xc.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  const float* rp = rc.defined() ? rc.data_ptr<float>() : nullptr;
  const bool* imp = im.defined() ? im.data_ptr<bool>() : nullptr;
  const bool* omp = om.defined() ? om.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  const auto runs = mask_groups(imp, omp, g);
  // Shifted planes for output rows of kMinPlanarRow or more, as the planar im2col: narrower rows would
  // compute many dropped padding columns (a quarter more at 8x8).
  const bool shifted = sgemm_ != nullptr && g.sh == 1 && g.sw == 1 && g.wo >= kMinPlanarRow;
  // The weight is read in its layout: OIHW, channels-last or input-major ((C_in, kH, kW, C_out) in memory,
  // read by the input-major kernel) when every run takes the dot products; otherwise OIHW (a copy of
  // any other layout).
  const bool dots_only = !shifted && std::all_of(runs.begin(), runs.end(), [&](const MaskRun& run) {
    return static_cast<int64_t>(run.members.size()) * g.ho * g.wo <= kDotMaxPixels;
  });
  const bool input_major = dots_only && g.c_out % kSlabOuts == 0 && is_input_major(weight);
  const bool as_is = input_major || weight.is_contiguous() ||
                     (dots_only && weight.is_contiguous(at::MemoryFormat::ChannelsLast));
  const auto wc = as_is ? weight : weight.contiguous();
  const float* wp = wc.data_ptr<float>();
  // weight (o, i, tap) lies at wp + o * ws[0] + i * ws[1] + tap_at[tap]
  const auto ws = wc.strides();
  std::vector<int64_t> tap_at(static_cast<size_t>(taps));
  for (int64_t tap = 0; tap < taps; ++tap) tap_at[tap] = tap / g.kw * ws[2] + tap % g.kw * ws[3];

  // The kept weights of output channel o, (j, tap) order, to dst.
  const bool taps_contiguous = ws[3] == 1 && ws[2] == g.kw;
  const auto gather_weights = [&](int64_t o, const std::vector<int64_t>& in_idx, float* dst) {
    const int64_t kin = static_cast<int64_t>(in_idx.size());
    if (taps_contiguous) return kept_taps(wp + o * ws[0], in_idx.data(), kin, ws[1], taps, dst);
    for (int64_t j = 0; j < kin; ++j) {
      const float* src = wp + o * ws[0] + in_idx[j] * ws[1];
      for (int64_t tap = 0; tap < taps; ++tap) dst[j * taps + tap] = src[tap_at[tap]];
    }
  };
  // ybuf = the kept weights . the members' pixel rows (kept inputs, zero-padded): (width, C_out) by the
  // input-major kernel, else (kout, width) by dot products. In place, when at least half the inputs are
  // kept, the kept outputs' rows of an OIHW or channels-last weight are read as they are, over every
  // input channel, the pixel rows in the same (channel, tap) or (tap, channel) order with the removed
  // channels' columns zero: a few pixels do too little arithmetic per weight to repay copying the kept
  // weights out. Blocks of outputs split over threads when the run has enough work.
  const auto dot_products = [&](const std::vector<int64_t>& members, const bool* own_in,
                                const std::vector<int64_t>& in_idx, const std::vector<int64_t>& out_idx, int64_t width,
                                std::vector<float>& rows, std::vector<float>& ybuf) {
    const int64_t kin = static_cast<int64_t>(in_idx.size()), kout = static_cast<int64_t>(out_idx.size());
    const bool in_place =
        !input_major && ws[0] == g.c_in * taps && 2 * kin >= g.c_in && g.c_in * taps % kRowAlign == 0;
    const int64_t column_step = in_place ? ws[1] : taps;  // between kept channels in a pixel row
    const int64_t depth = (in_place ? g.c_in : kin) * taps, ld = (depth + kRowAlign - 1) / kRowAlign * kRowAlign;
    rows.assign(static_cast<size_t>(width * ld), 0.0f);
    for (size_t t = 0; t < members.size(); ++t) {
      const float* sample = xp + members[t] * xs[0];
      const bool* own = mask_row(own_in, members[t], g.c_in);
      for (int64_t oy = 0; oy < g.ho; ++oy) {
        for (int64_t ox = 0; ox < g.wo; ++ox) {
          float* row = rows.data() + pixel(static_cast<int64_t>(t), oy, ox) * ld;
          for (int64_t dy = 0; dy < g.kh; ++dy) {
            const int64_t iy = conv_input_coord(oy, dy, g.sh, g.ph, g.h);
            for (int64_t dx = 0; dx < g.kw && iy >= 0; ++dx) {
              const int64_t ix = conv_input_coord(ox, dx, g.sw, g.pw, g.w);
              if (ix < 0) continue;
              const float* pixel = sample + iy * xs[2] + ix * xs[3];
              const int64_t tap = dy * g.kw + dx;
              float* col = row + (in_place ? tap_at[tap] : tap);
              for (int64_t j = 0; j < kin; ++j) {
                col[(in_place ? in_idx[j] : j) * column_step] = own_value(pixel, xs[1], in_idx[j], own);
              }
            }
          }
        }
      }
    }
    if (input_major) {
      ybuf.resize(static_cast<size_t>(width * g.c_out));
      std::vector<int64_t> offsets(static_cast<size_t>(depth));  // of the kept inputs' weight rows
      for (int64_t k = 0; k < depth; ++k) offsets[k] = in_idx[k / taps] * ws[1] + tap_at[k % taps];
      std::vector<int64_t> slabs;  // the blocks of kSlabOuts outputs that hold a kept one
      for (const int64_t o : out_idx) {
        if (slabs.empty() || slabs.back() != o / kSlabOuts) slabs.push_back(o / kSlabOuts);
      }
      const int64_t grain = dot_grain(kSlabOuts * depth * width);
      pathrt::parallel_for(0, static_cast<int64_t>(slabs.size()), grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t o0 = slabs[b] * kSlabOuts;
          slab_rows(wp + o0, offsets.data(), depth, rows.data(), ld, width, ybuf.data() + o0, g.c_out);
        }
      });
      return;
    }
    ybuf.resize(static_cast<size_t>(kout * width));
    const int64_t blocks = (kout + kBlockOuts - 1) / kBlockOuts;
    const int64_t grain = dot_grain(kBlockOuts * ld * width);
    pathrt::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      std::vector<float> gathered(static_cast<size_t>(in_place ? 0 : kBlockOuts * ld), 0.0f);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t a0 = b * kBlockOuts, outs = std::min(kBlockOuts, kout - a0);
        const float* w[kBlockOuts];
        for (int64_t a = 0; a < kBlockOuts; ++a) {
          const int64_t o = out_idx[a0 + std::min(a, outs - 1)];  // a short block repeats its last row
          if (in_place) {
            w[a] = wp + o * ws[0];
          } else {
            gather_weights(o, in_idx, gathered.data() + a * ld);  // the padding stays zero
            w[a] = gathered.data() + a * ld;
          }
        }
        dot_rows(w, outs, rows.data(), width, ld, ybuf.data() + a0 * width);
      }
    });
  };

  // LaneConv's taps, once per call, where the geometry lets a one-sample run take it: a channels-last input
  // (channels adjacent), the input and output maps within a vector each, an OIHW weight read in place.
  const auto lane_taps = lane_conv != nullptr && xs[1] == 1 && g.h * g.w <= kLanes && g.ho * g.wo <= kLanes &&
                                 wc.is_contiguous()
                             ? std::make_optional<LaneTaps>(g)
                             : std::nullopt;

  // The kept inputs with a nonzero value at some pixel of the members: an input that is zero all over them
  // (after a ReLU, ~11% of ResNet-18@64's kept layer-4 block inputs at batch 1) adds only zeros, and its
  // input-major weight rows need not be read. A NaN is nonzero, so it still reaches the sums.
  const auto live_inputs = [&](const std::vector<int64_t>& members, const bool* own_in,
                               const std::vector<int64_t>& in_idx) {
    std::vector<int64_t> live;
    for (const int64_t c : in_idx) {
      bool zero = true;
      for (size_t t = 0; t < members.size() && zero; ++t) {
        const float* sample = xp + members[t] * xs[0];
        const bool* own = mask_row(own_in, members[t], g.c_in);
        for (int64_t iy = 0; iy < g.h && zero; ++iy) {
          for (int64_t ix = 0; ix < g.w && zero; ++ix) {
            zero = own_value(sample + iy * xs[2] + ix * xs[3], xs[1], c, own) == 0.0f;
          }
        }
      }
      if (!zero) live.push_back(c);
    }
    return live;
  };

  // A thread computes whole runs (claimed in turn, below); with fewer runs than threads, the runs go one
  // after another on the calling thread, the GEMM threads and so do a run's loops over its members (zero
  // fill, im2col, epilogue: ResNet-18@64's downsample convs at batch 64, one run of 64 samples each,
  // spent ~0.8 of their ~1 ms in them on one thread).
  const int64_t tasks = static_cast<int64_t>(runs.size());
  const bool member_loops = tasks < parallel_width();
  // body(t0, t1) over members [0, count), on the call's threads when runs go in turn
  const auto each_member = [&](int64_t count, const auto& body) {
    if (member_loops) {
      pathrt::parallel_for(0, count, 1, body);
    } else {
      body(0, count);
    }
  };
  // out = bias_act(value(a, o, t, oy, ox)): the accumulator of kept output a (channel o) at pixel
  // (oy, ox) of member t. The loops follow the output's layout so that writes go along its rows:
  // channels-last walks pixels outer and kept outputs inner, NCHW the other way round.
  // own_out: the batch's output mask when the run is merged, whose members then zero the union's outputs
  // they drop in a pass after the writes (a test inside the writes cost the embedded batch-64 pathway 17-22%).
  const auto epilogue = [&](const std::vector<int64_t>& members, const bool* own_out,
                            const std::vector<int64_t>& out_idx, const auto& value) {
    const int64_t count = static_cast<int64_t>(members.size()), kout = static_cast<int64_t>(out_idx.size());
    each_member(count, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t s = members[t];
        // channel_stride: os[1], a compile-time 1 on the channels-last loops (the compiler then keeps
        // their writes contiguous; a run-time stride there cost the embedded batch-64 session ~5%)
        const auto emit = [&](int64_t a, int64_t oy, int64_t ox, auto channel_stride) {
          const int64_t o = out_idx[a];
          const float residual = rp ? rp[s * rs[0] + o * rs[1] + oy * rs[2] + ox * rs[3]] : 0.0f;
          op[s * os[0] + o * channel_stride + oy * os[2] + ox * os[3]] =
              bias_act(value(a, o, t, oy, ox), bp ? bp[o] : 0.0f, residual, relu);
        };
        if (os[1] == 1) {
          for (int64_t oy = 0; oy < g.ho; ++oy) {
            for (int64_t ox = 0; ox < g.wo; ++ox) {
              for (int64_t a = 0; a < kout; ++a) emit(a, oy, ox, std::integral_constant<int64_t, 1>{});
            }
          }
        } else {
          for (int64_t a = 0; a < kout; ++a) {
            for (int64_t oy = 0; oy < g.ho; ++oy) {
              for (int64_t ox = 0; ox < g.wo; ++ox) emit(a, oy, ox, os[1]);
            }
          }
        }
        // a merged run's member: zero the outputs of the run's union that the member drops
        for (int64_t a = 0; own_out != nullptr && a < kout; ++a) {
          const int64_t o = out_idx[a];
          if (own_out[s * g.c_out + o]) continue;
          for (int64_t oy = 0; oy < g.ho; ++oy) {
            for (int64_t ox = 0; ox < g.wo; ++ox) op[s * os[0] + o * os[1] + oy * os[2] + ox * os[3]] = 0.0f;
          }
        }
      }
    });
  };
  // The members' conv through the direct kernel (pathrt/direct_conv.h) on the kept inputs, zero-padded
  // channels-last, to ybuf (pixel, output); the kept outputs then go through the epilogue above, or, into
  // a channels-last output, every output through pixel_epilogue (pixel_rows: the sample's whole block).
  const bool pixel_rows = pixel_epilogue != nullptr && os[1] == 1 && (rp == nullptr || rs[1] == 1);
  // Whether a run of `kout` kept outputs and `width` pixels reads `blocked` in place (direct, below)
  const auto reads_in_place = [&](int64_t kout, int64_t width) {
    return blocked.defined() &&
           (4 * kout >= 3 * g.c_out ||
            (runs.size() == 1 && (g.c_out - direct_outputs(kout)) * width <= kCompactFloatMacs * g.c_out));
  };
  const auto direct = [&](const std::vector<int64_t>& members, const bool* own_in, const bool* own_out,
                          const std::vector<int64_t>& in_idx, const std::vector<int64_t>& out_idx,
                          const std::vector<uint64_t>& in_bits, const std::vector<uint64_t>& out_bits,
                          std::vector<float>& wbuf,
                          std::vector<float>& planes, std::vector<float>& ybuf) {
    const int64_t count = static_cast<int64_t>(members.size()), kin = static_cast<int64_t>(in_idx.size());
    const int64_t kout = static_cast<int64_t>(out_idx.size()), depth = kin * taps, width = count * cols_per_row;
    // The kernel's weight: `blocked` (the session's dense conv blocked it at load) read in place, the
    // removed inputs' rows skipped and every output computed, when the run keeps most outputs, or when the
    // call is one run and the outputs it drops cost less than compacting (below) would: compacting reads
    // all of `blocked`, ~kCompactFloatMacs multiply-adds' time a float (reads_in_place). Else the kept
    // weights, blocked by outputs and padded to direct_outputs with zero rows: compacted from `blocked`'s
    // whole lines when the call is one run (its threads split the rows; gathering them from
    // scattered lines of the OIHW weight cost more than the outputs it saves: ResNet-18@64's pathway phase
    // 2.0-2.2 -> 1.7-1.8 ms in place; compacted, the embedded model's batch-1 pathway convs 119 -> 106 us,
    // their weights in cache), in blocks that leave a task to each thread; gathered from the OIHW weight
    // otherwise (in cache over a batch's runs; at one sample, a conv the session runs dense through oneDNN,
    // which keeps no blocked copy). Blocks of 16 run the narrowest register tile: a compacted weight is
    // split only to balance the threads' tasks (`split`; split whenever it held at most 64 outputs, the
    // embedded model's batch-1 pathway phase took 0.211 ms, 0.202-0.208 split for one pixel tile only).
    const bool in_place_direct = reads_in_place(kout, width);
    const bool compacted = !in_place_direct && blocked.defined() && runs.size() == 1;
    const int64_t outs = in_place_direct ? g.c_out : direct_outputs(kout);
    // a compacted weight of at most 64 outputs is cut in two blocks when the pixels are at most two tasks'
    // (two tiles, 48 + 16 pixels at 8x8, left one thread three quarters of the work: ResNet-18@64's
    // out-masked 128->128 convs at batch 1, kernel 45 -> 33 us)
    const bool split = compacted && outs <= 64 && width <= 2 * kDirectTilePixels;
    const int64_t block = in_place_direct ? blocked.size(4) : direct_block(split ? outs / 2 : outs);
    const auto column = [&](int64_t a) { return in_place_direct ? out_idx[a] : a; };  // kept output a's in ybuf
    const int64_t hp = g.h + 2 * g.ph, wpad = g.w + 2 * g.pw;
    if (compacted) {
      wbuf.resize(static_cast<size_t>(outs * depth));
      direct_kept_weight(blocked.data_ptr<float>(), blocked.size(4), taps, g.c_in, in_idx, out_idx, block, wbuf.data());
    } else if (!in_place_direct) {
      wbuf.resize(static_cast<size_t>(outs * depth));
      std::vector<int64_t> in_at(static_cast<size_t>(kin));
      for (int64_t j = 0; j < kin; ++j) in_at[j] = in_idx[j] * ws[1];
      const KeptWeights kept{wp, ws[0], in_at.data(), kin, tap_at.data(), taps, block};
      each_member(outs / 16, [&](int64_t q0, int64_t q1) {  // 16 outputs at a time, those past kout zero
        for (int64_t a0 = q0 * 16; a0 < q1 * 16; a0 += 16) {
          direct_gathered_weight(kept, out_idx.data() + std::min(a0, kout), std::clamp<int64_t>(kout - a0, 0, 16),
                                 wbuf.data() + a0 / block * block * depth + a0 % block);
        }
      });
    }
    planes.assign(static_cast<size_t>(count * hp * wpad * kin), 0.0f);
    for (int64_t t = 0; t < count; ++t) {
      const float* sample = xp + members[t] * xs[0];
      const bool* own = mask_row(own_in, members[t], g.c_in);
      // every channel of a channels-last input: its rows as they are (ResNet-18@64's out-masked 64->64 conv
      // at 16x16, batch 1: 8 us a value at a time)
      const bool rows_as_is = own == nullptr && kin == g.c_in && xs[1] == 1 && xs[3] == g.c_in;
      for (int64_t iy = 0; iy < g.h; ++iy) {
        float* dst_row = planes.data() + ((t * hp + iy + g.ph) * wpad + g.pw) * kin;
        if (rows_as_is) {
          std::memcpy(dst_row, sample + iy * xs[2], sizeof(float) * g.w * kin);
          continue;
        }
        if (own == nullptr && xs[1] == 1 && kept_pixels != nullptr) {
          kept_pixels(sample + iy * xs[2], g.w, xs[3], in_bits.data(), g.c_in, dst_row);
          continue;
        }
        for (int64_t ix = 0; ix < g.w; ++ix) {
          const float* src = sample + iy * xs[2] + ix * xs[3];
          float* dst = dst_row + ix * kin;
          for (int64_t j = 0; j < kin; ++j) dst[j] = own_value(src, xs[1], in_idx[j], own);
        }
      }
    }
    const int64_t* kept_rows = in_place_direct && kin < g.c_in ? in_idx.data() : nullptr;
    // One sample whose every output the kernel computes, into a channels-last output (pixel_rows; `out` and
    // the residual are then contiguous (pixels, c_out) per sample, as the kernel's y and residual are):
    // the kernel's epilogue adds the bias and residual, applies the ReLU and zeroes the removed outputs,
    // writing the output in place of a buffer and a pass over it (the embedded model's batch-1 32 -> 64
    // pathway conv at 16x16: 39.3-43.3 -> 31.3-33.4 us, its pathway phase 0.141-0.152 -> 0.133-0.139 ms,
    // interleaved pairs).
    if (in_place_direct && count == 1 && own_out == nullptr && pixel_rows) {
      auto& keep = run_buffers().keep;
      keep.resize(static_cast<size_t>(g.c_out));
      for (int64_t o = 0; o < g.c_out; ++o) keep[o] = out_bits[o / 64] >> (o % 64) & 1 ? ~uint32_t{0} : 0;
      direct_conv_raw(planes.data(), 1, hp, wpad, kin, blocked.data_ptr<float>(), outs, block, g.kh, g.kw, g.ho,
                      g.wo, g.sh, g.sw, bp, rp != nullptr ? rp + members[0] * rs[0] : nullptr, relu,
                      op + members[0] * os[0], kept_rows, g.c_in, keep.data());
      return;
    }
    ybuf.resize(static_cast<size_t>(width * outs));
    direct_conv_raw(planes.data(), count, hp, wpad, kin, in_place_direct ? blocked.data_ptr<float>() : wbuf.data(),
                    outs, block, g.kh, g.kw, g.ho, g.wo, g.sh, g.sw, nullptr, nullptr, false, ybuf.data(), kept_rows,
                    g.c_in);
    if (pixel_rows) {
      const PixelEpilogue e{out_bits.data(), bp, g.c_out, !in_place_direct, relu};
      each_member(count, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t s = members[t];
          const auto own = own_out != nullptr ? mask_bits(own_out + s * g.c_out, g.c_out) : std::vector<uint64_t>();
          for (int64_t oy = 0; oy < g.ho; ++oy) {
            for (int64_t ox = 0; ox < g.wo; ++ox) {
              pixel_epilogue(e, ybuf.data() + pixel(t, oy, ox) * outs,
                             rp != nullptr ? rp + s * rs[0] + oy * rs[2] + ox * rs[3] : nullptr,
                             own_out != nullptr ? own.data() : nullptr, op + s * os[0] + oy * os[2] + ox * os[3]);
            }
          }
        }
      });
      return;
    }
    epilogue(members, own_out, out_idx, [&](int64_t a, int64_t, int64_t t, int64_t oy, int64_t ox) {
      return ybuf[pixel(t, oy, ox) * outs + column(a)];
    });
  };

  // One sample at stride 1 whose rows hold 4 to 8 pixels, its kept outputs' OIHW rows at most
  // kPlanarMaxWeightFloats: every tap in one pass over its kept inputs' planes (PlanarConv), its weights
  // read in place (AVX-512 builds only). At batch 1 the embedded model's pathway convs at 8x8 took 31-34 ->
  // 24-27 us (64 -> 128) and 39-42 -> 32-36 (128 -> 128), at 4x4 34-36 -> 21-23 (128 -> 256), where the
  // direct conv compacted their kept weights or the dot products ran; its pathway phase 0.174-0.189 ->
  // 0.146-0.165 ms, ResNet-18@64's 1.03-1.04 -> 1.01-1.03 (interleaved processes, 2 cores). At 16x16 no
  // faster (the direct kernel's compacted weight pays off over 256 pixels), at 2x2 slower (three quarters
  // of each vector are padding columns: ResNet-18@64's layer4 convs 95 -> 158 us), and as fast at 4x4
  // once the kept rows reach ~1 MB (ResNet-18@64's layer3: the weight streams).
  constexpr int64_t kPlanarMinRow = 4, kPlanarMaxRow = 8, kPlanarMaxWeightFloats = int64_t{1} << 17;
  const bool planar_weight = planar_conv != nullptr && g.sh == 1 && g.sw == 1 && wc.is_contiguous();  // OIHW
  // The runs claim() gives (an index, or -1 when none is left), each on this thread.
  auto run_groups = [&](const auto& claim) {
    RunBuffers& buffers = run_buffers();
    auto &in_idx = buffers.in_idx, &out_idx = buffers.out_idx;
    auto &cols = buffers.cols, &wbuf = buffers.wbuf, &ybuf = buffers.ybuf, &planes = buffers.planes;
    auto& rows = buffers.rows;
    for (int64_t r = claim(); r >= 0; r = claim()) {
      const auto& members = runs[r].members;
      const int64_t count = static_cast<int64_t>(members.size());
      // a merged run's members: their own masks (the batch's rows), else none needed
      const bool* own_in = runs[r].merged ? imp : nullptr;
      const bool* own_out = runs[r].merged ? omp : nullptr;
      kept_channels(runs[r].in, g.c_in, in_idx);
      kept_channels(runs[r].out, g.c_out, out_idx);
      const int64_t kin = static_cast<int64_t>(in_idx.size()), kout = static_cast<int64_t>(out_idx.size());
      const int64_t depth = kin * taps, width = count * cols_per_row;
      // A merged run: the direct conv up to kDirectMaxMacs, whatever its samples (kRunOverheadMacs). At
      // kDotMaxPixels or fewer, the dot products, unless the run reads the blocked weight in place
      // (ResNet-18@64 at batch 1: layer3's in-masked convs at 4x4 44 -> 35 and 60 -> 50 us, layer4's
      // downsample at 2x2 32 -> 18 us; the dot products gathered their weights or read them input-major).
      const bool direct_run =
          kin > 0 && kout > 0 &&
          (width > kDotMaxPixels
               ? (runs[r].merged ? kout * depth * width <= kDirectMaxMacs
                                 : direct_conv_fits(count, kout * depth * width, kSparseDirectMaxMacs))
               : reads_in_place(kout, width) && g.c_out * depth * width <= kSparseDirectMaxMacs);
      // One channels-last sample whose input and output maps fit a vector each (LaneConv), when its kept
      // outputs' vectors hold under 3/4 of the multiply-adds the direct conv spends in place over every
      // output (the direct conv reads the blocked weight in place from a quarter of the outputs dropped).
      // At batch 1 (pathway steps timed inside the session, 2 cores): ResNet-18@64's out-masked 256 -> 256
      // convs at 4x4 (100 and 105 outputs kept) 72-77 -> 38-39 us, where the direct conv computed every
      // output (compacting the kept weights reads all of the blocked weight); the embedded model's 128 ->
      // 256 at 4x4 17-18 -> 12.6-12.7 and VGG-11@64's 512 -> 512 at 4x4 174-195 -> 162-170, where
      // PlanarConv's padded rows of 4 computed two vectors for 16 pixels or the direct conv ran.
      const bool lane_run = lane_taps && count == 1 && kin > 0 && kout > 0 && 4 * kout * kLanes < 3 * g.c_out * width;
      const bool planar_run = !lane_run && planar_weight && count == 1 && kin > 0 && kout > 0 &&
                              g.wo >= kPlanarMinRow && g.wo <= kPlanarMaxRow &&
                              kout * g.c_in * taps <= kPlanarMaxWeightFloats;
      // Each sample's output block is zeroed by the thread that fills it, just before (then in its cache;
      // one zero_ of the whole output first cost the embedded model's batch-64 pathway ~0.2 ms a layer),
      // unless the pixel epilogue writes all of it.
      if (lane_run || planar_run || !(direct_run && pixel_rows)) {
        each_member(count, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) std::fill_n(op + members[t] * os[0], os[0], 0.0f);
        });
      }
      if (kout == 0) continue;
      if (lane_run) {
        auto& maps = buffers.maps;  // its own buffer: at a steady size, no zero fill in a resize
        maps.resize(std::max(maps.size(), static_cast<size_t>(kin * kLanes)));
        lane_maps(xp + members[0] * xs[0], xs[2], xs[3], in_idx.data(), kin, g, maps.data());
        auto& in_at = buffers.offsets;
        in_at.resize(static_cast<size_t>(kin));
        for (int64_t j = 0; j < kin; ++j) in_at[j] = in_idx[j] * ws[1];
        ybuf.resize(static_cast<size_t>(kout * kLanes));
        const LaneConv c{maps.data(), *lane_taps, wp, ws[0], in_at.data(), kin, out_idx.data(), kout, ybuf.data()};
        pathrt::parallel_for(0, lane_tasks(c), dot_grain(kLaneOuts * kLanes * depth),
                             [&](int64_t t0, int64_t t1) { lane_conv(c, t0, t1); });
        epilogue(members, own_out, out_idx, [&](int64_t a, int64_t, int64_t, int64_t oy, int64_t ox) {
          return ybuf[a * kLanes + oy * g.wo + ox];
        });
        continue;
      }
      if (planar_run) {
        const Shifted sh(g, 1);
        padded_planes(xp, own_in, xs, members, in_idx, g, sh, planes);
        planes.resize(planes.size() + 16, 0.0f);  // the last tile reads up to 15 floats past the last plane
        const int64_t vectors = (sh.columns + 15) / 16, ldy = vectors * 16;
        auto& offsets = buffers.offsets;  // the kept inputs' taps in a weight row, then the taps' in a plane
        offsets.resize(static_cast<size_t>(kin + taps));
        for (int64_t j = 0; j < kin; ++j) offsets[j] = in_idx[j] * ws[1];
        for (int64_t tap = 0; tap < taps; ++tap) offsets[kin + tap] = tap / g.kw * sh.row + tap % g.kw;
        ybuf.resize(static_cast<size_t>(kout * ldy));
        const PlanarConv c{planes.data(), sh.plane, offsets.data() + kin, taps, wp, ws[0], offsets.data(), kin,
                           out_idx.data(), kout, vectors, ybuf.data(), ldy};
        pathrt::parallel_for(0, planar_tasks(c), dot_grain(planar_task_macs(c)),
                             [&](int64_t t0, int64_t t1) { planar_conv(c, t0, t1); });
        epilogue(members, own_out, out_idx, [&](int64_t a, int64_t, int64_t, int64_t oy, int64_t ox) {
          return ybuf[a * ldy + oy * sh.row + ox];
        });
        continue;
      }
      if (direct_run) {
        direct(members, own_in, own_out, in_idx, out_idx, runs[r].in, runs[r].out, wbuf, planes, ybuf);
        continue;
      }
      if (shifted && kin > 0) {
        const Shifted sh(g, count);
        padded_planes(xp, own_in, xs, members, in_idx, g, sh, planes);
        wbuf.resize(static_cast<size_t>(taps * kout * kin));
        for (int64_t a = 0; a < kout; ++a) {  // per tap, (kout, kin) row-major
          for (int64_t j = 0; j < kin; ++j) {
            const float* src = wp + out_idx[a] * ws[0] + in_idx[j] * ws[1];
            for (int64_t tap = 0; tap < taps; ++tap) wbuf[(tap * kout + a) * kin + j] = src[tap_at[tap]];
          }
        }
        ybuf.resize(static_cast<size_t>(kout * sh.columns));
        // ybuf (kout, columns) += tap's weights (kout, kin) . the planes shifted by the tap (kin, columns),
        // in BLAS's column-major terms: ybuf^T (columns, kout) = planes^T (columns, kin) . weights^T.
        const int m = static_cast<int>(sh.columns), n = static_cast<int>(kout), k = static_cast<int>(kin);
        const int lda = static_cast<int>(sh.plane);
        const char no = 'N';
        const float one = 1.0f;
        for (int64_t dy = 0; dy < g.kh; ++dy) {
          for (int64_t dx = 0; dx < g.kw; ++dx) {
            const int64_t tap = dy * g.kw + dx;
            const float beta = tap == 0 ? 0.0f : 1.0f;
            sgemm_(&no, &no, &m, &n, &k, &one, planes.data() + dy * sh.row + dx, &lda, wbuf.data() + tap * kout * kin,
                   &k, &beta, ybuf.data(), &m);
          }
        }
        epilogue(members, own_out, out_idx, [&](int64_t a, int64_t, int64_t t, int64_t oy, int64_t ox) {
          return ybuf[a * sh.columns + t * sh.sample + oy * sh.row + ox];
        });
        continue;
      }
      if (width <= kDotMaxPixels) {
        dot_products(members, own_in, input_major ? live_inputs(members, own_in, in_idx) : in_idx, out_idx, width,
                     rows, ybuf);
        if (input_major) {
          epilogue(members, own_out, out_idx, [&](int64_t, int64_t o, int64_t t, int64_t oy, int64_t ox) {
            return ybuf[pixel(t, oy, ox) * g.c_out + o];
          });
          continue;
        }
      } else {
        ybuf.resize(static_cast<size_t>(kout * width));
        cols.resize(std::max<int64_t>(1, depth * width));
        each_member(count, [&](int64_t t0, int64_t t1) {
          std::vector<float> scratch;  // gather_columns' planes, one per chunk
          for (int64_t t = t0; t < t1; ++t) {
            gather_columns(xp + members[t] * xs[0], mask_row(own_in, members[t], g.c_in), xs, in_idx, g,
                           width, cols.data() + t * cols_per_row, scratch);
          }
        });
        wbuf.resize(std::max<int64_t>(1, kout * depth));
        for (int64_t a = 0; a < kout; ++a) gather_weights(out_idx[a], in_idx, wbuf.data() + a * depth);
        auto y = at::from_blob(ybuf.data(), {kout, width}, xc.options());
        if (depth == 0) {
          y.zero_();
        } else {
          at::mm_out(y, at::from_blob(wbuf.data(), {kout, depth}, xc.options()),
                     at::from_blob(cols.data(), {depth, width}, xc.options()));
        }
      }
      epilogue(members, own_out, out_idx, [&](int64_t a, int64_t, int64_t t, int64_t oy, int64_t ox) {
        return ybuf[a * width + pixel(t, oy, ox)];
      });
    }
    buffers.trim();
  };
  // Runs differ in cost up to ~10x (merged ones): each thread claims the next, costliest first, when it
  // is free. parallel_for's even split of the run list left one thread twice the other's work (the
  // embedded model's batch-64 pathway pass: 1.64 against 0.97 ms on its 128->128 conv).
  std::atomic<int64_t> next{0};
  const auto claim = [&] {
    const int64_t r = next.fetch_add(1, std::memory_order_relaxed);
    return r < tasks ? r : int64_t{-1};
  };
  if (!member_loops) {
    pathrt::parallel_for(0, std::min<int64_t>(tasks, parallel_width()), 1,
                         [&](int64_t, int64_t) { run_groups(claim); });
  } else {
    run_groups(claim);
  }
  return out;
}

TORCH_LIBRARY_IMPL(pathrt, CPU, m) {
  m.impl("daq_threshold_pack", &daq_threshold_pack_cpu);
  m.impl("masked_bias_relu", &masked_bias_relu_cpu);
  m.impl("masked_bias_relu_", &masked_bias_relu_inplace_cpu);
  m.impl("pathway_conv2d",
         static_cast<at::Tensor (*)(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                    const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                    const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, bool)>(
             &pathway_conv2d_cpu));
}

}  // namespace pathrt
