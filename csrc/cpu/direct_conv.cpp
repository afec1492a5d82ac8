// The direct conv (pathrt/direct_conv.h): register tiles over a zero-padded channels-last input and a
// weight blocked by outputs, built for AVX-512, AVX2 and the baseline (pathrt/cpu_dispatch.h).
#include "pathrt/direct_conv.h"

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/cpu_empty.h"
#include "pathrt/epilogue.h"
#include "pathrt/huge_pages.h"
#include "pathrt/packed_conv.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace pathrt {

namespace {

using V8 = float __attribute__((vector_size(32)));
using V16 = float __attribute__((vector_size(64)));
// Bits<V>: V's lanes as 32-bit words
template <typename V>
using Bits = std::conditional_t<sizeof(V) == 64, uint32_t __attribute__((vector_size(64))),
                                uint32_t __attribute__((vector_size(32)))>;

// One conv's geometry and pointers, shared by the tasks.
struct Direct {
  const float* x;      // padded input, (n, hp, wp, c) contiguous
  const float* w;      // blocked weight, (o / block, taps, wc, block)
  const int64_t* kept;  // the weight channel of each input channel (c of them), or null: the same (wc == c)
  const float* bias;   // (o,) or null
  const float* residual;  // (pixels, o) or null
  const uint32_t* keep;   // (o,) words: all ones for an output kept, 0 for one written as 0; or null
  float* y;            // (pixels, o)
  int64_t c, wc, o, block, taps, hp, wp, ho, wo, sh, sw;
  std::vector<int64_t> tap_offsets;  // floats from a window's first input pixel to each tap's
  bool relu;

  // The windows of output pixels [first, first + kCount), those past `last` taking last's: the first one's
  // coordinates divided out, the others stepped to. Three divisions per pixel weighed on convs of few input
  // channels, whose register tile does ~12 cycles of multiply-adds per channel and tap: the embedded model's
  // 3->32 conv at 32x32 on one thread 27.4-28.2 -> 22.9-23.5 us (best rounds of alternating processes), its
  // batch-1 plain phase 0.195-0.204 -> 0.194-0.199 ms and pathway phase ~0.125 -> ~0.122 (2 cores).
  template <int64_t kCount>
  void windows(int64_t first, int64_t last, const float* (&px)[kCount]) const {
    int64_t image = first / (ho * wo), oy = first / wo % ho, ox = first % wo;
    for (int64_t p = 0; p < kCount; ++p) {
      px[p] = first + p <= last ? x + ((image * hp + oy * sh) * wp + ox * sw) * c : px[p - 1];
      if (++ox == wo) {
        ox = 0;
        if (++oy == ho) {
          oy = 0;
          ++image;
        }
      }
    }
  }
};

// Output pixels [p0, p1) of output block `b`, kVecs vectors of outputs x kPixels pixels at a time
// (tails recompute the last pixel): per input value, kVecs weight loads and kPixels broadcasts feed
// kVecs * kPixels multiply-adds. kKept: input channel ci reads the weight's channel d.kept[ci].
template <typename V, int64_t kVecs, int64_t kPixels, bool kKept>
[[gnu::always_inline]] inline void direct_body(const Direct& d, int64_t b, int64_t p0, int64_t p1) {
  constexpr int64_t lanes = sizeof(V) / sizeof(float), width = kVecs * lanes;
  const float* wb = d.w + b * d.taps * d.wc * d.block;
  const V zero = {};
  for (int64_t sub = 0; sub < d.block; sub += width) {
    for (int64_t q0 = p0; q0 < p1; q0 += kPixels) {
      const float* px[kPixels];
      d.windows(q0, p1 - 1, px);
      V acc[kVecs][kPixels] = {};
      // A task's first pixels prefetch the weight (kPrefetchAhead), which streams from beyond the L2 there;
      // its later pixels find it in the L2, and kept rows lie scattered. ResNet-18@64 at batch 1 on 2 cores,
      // plain phase (its 4x4 and 8x8 convs), 11 interleaved pairs: median 2.38 -> 2.26 ms, faster in 9;
      // the embedded model and VGG-11@64 at batch 1: the same within noise.
      const bool fetch = !kKept && q0 == p0;
      for (int64_t t = 0; t < d.taps; ++t) {
        const float* wt = wb + t * d.wc * d.block + sub;
        const int64_t offset = d.tap_offsets[t];
        for (int64_t ci = 0; ci < d.c; ++ci) {
          const float* row = wt + (kKept ? d.kept[ci] : ci) * d.block;
          if (fetch) prefetch_lines(row + kPrefetchAhead, width);
          V wv[kVecs];
          for (int64_t v = 0; v < kVecs; ++v) std::memcpy(&wv[v], row + v * lanes, sizeof(V));
          for (int64_t p = 0; p < kPixels; ++p) {
            const float xv = px[p][offset + ci];
            for (int64_t v = 0; v < kVecs; ++v) acc[v][p] += wv[v] * xv;
          }
        }
      }
      for (int64_t p = 0; p < std::min(kPixels, p1 - q0); ++p) {
        for (int64_t v = 0; v < kVecs; ++v) {
          const int64_t oc = b * d.block + sub + v * lanes, at = (q0 + p) * d.o + oc;
          V r = acc[v][p], add;
          if (d.bias != nullptr) {
            std::memcpy(&add, d.bias + oc, sizeof(V));
            r += add;
          }
          if (d.residual != nullptr) {
            std::memcpy(&add, d.residual + at, sizeof(V));
            r += add;
          }
          if (d.relu) r = r > zero ? r : zero;  // epilogue.h's bias_act: 0 for NaN too
          if (d.keep != nullptr) {
            Bits<V> keep;
            std::memcpy(&keep, d.keep + oc, sizeof(V));
            r = (V)((Bits<V>)r & keep);
          }
          std::memcpy(d.y + at, &r, sizeof(V));
        }
      }
    }
  }
}

// AVX-512: 4 x 6 accumulators for 64-output blocks, 2 x 12 for 32, 1 x 12 for 16.
template <bool kKept>
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void direct_avx512(const Direct& d, int64_t b, int64_t p0,
                                                                        int64_t p1) {
  if (d.block == 64) {
    direct_body<V16, 4, 6, kKept>(d, b, p0, p1);
  } else if (d.block == 32) {
    direct_body<V16, 2, 12, kKept>(d, b, p0, p1);
  } else {
    direct_body<V16, 1, 12, kKept>(d, b, p0, p1);
  }
}
// AVX2: 2 x 6 accumulators over 16 outputs at a time.
template <bool kKept>
__attribute__((target("avx2,fma"))) void direct_avx2(const Direct& d, int64_t b, int64_t p0, int64_t p1) {
  direct_body<V8, 2, 6, kKept>(d, b, p0, p1);
}
template <bool kKept>
void direct_baseline(const Direct& d, int64_t b, int64_t p0, int64_t p1) {
  direct_body<V8, 2, 6, kKept>(d, b, p0, p1);
}

const auto direct_tile = for_this_cpu(direct_avx512<false>, direct_avx2<false>, direct_baseline<false>);
const auto direct_kept_tile = for_this_cpu(direct_avx512<true>, direct_avx2<true>, direct_baseline<true>);

// Where the kept outputs lie in a blocked weight's (tap, input) row set: per 16 outputs (a piece, within
// one block) the kept ones' bits.
struct KeptOutputs {
  int64_t block, block_step;     // outputs per block; floats between two blocks' rows
  std::vector<__mmask16> lanes;  // outputs [16 p, 16 p + 16): bit i for output 16 p + i kept

  // floats from the row set's start to piece p
  int64_t piece(size_t p) const {
    const int64_t pieces = block / 16;
    return static_cast<int64_t>(p) / pieces * block_step + static_cast<int64_t>(p) % pieces * 16;
  }
};

// row[0, kout) = the kept outputs of the (tap, input) row set at src, then 16 zeros; the row set at
// `next` is prefetched (the rows of kept inputs lie scattered beyond the L2).
__attribute__((target("avx512f"))) void kept_row_avx512(const KeptOutputs& k, const float* src, const float* next,
                                                        float* row) {
  int64_t at = 0;
  for (size_t p = 0; p < k.lanes.size(); ++p) {
    const __mmask16 bits = k.lanes[p];
    if (bits == 0) continue;
    const int64_t offset = k.piece(p);
    __builtin_prefetch(next + offset);
    _mm512_storeu_ps(row + at, _mm512_maskz_compress_ps(bits, _mm512_loadu_ps(src + offset)));
    at += __builtin_popcount(bits);
  }
  _mm512_storeu_ps(row + at, _mm512_setzero_ps());
}
void kept_row_scalar(const KeptOutputs& k, const float* src, const float*, float* row) {
  int64_t at = 0;
  for (size_t p = 0; p < k.lanes.size(); ++p) {
    const float* piece = src + k.piece(p);
    for (int i = 0; i < 16; ++i) {
      if (k.lanes[p] >> i & 1) row[at++] = piece[i];
    }
  }
  std::fill(row + at, row + at + 16, 0.0f);
}
const auto kept_row = for_this_cpu(kept_row_avx512, kept_row_scalar, kept_row_scalar);

// Up to 16 outputs' kept weights (lane l: output out[l]) to dst's (tap, j) rows, one AVX-512 gather per
// row, the lanes from `lanes` on zero.
__attribute__((target("avx512f"))) void gathered_lanes_avx512(const KeptWeights& g, const int64_t* out, int64_t lanes,
                                                              float* dst) {
  alignas(64) int32_t rows[16] = {};
  for (int64_t l = 0; l < lanes; ++l) rows[l] = static_cast<int32_t>(out[l] * g.out_stride);
  const __m512i index = _mm512_load_si512(rows);
  const auto live = static_cast<__mmask16>((1u << lanes) - 1);
  for (int64_t j = 0; j < g.kin; ++j) {
    const float* chunk = g.weight + g.in_at[j];
    for (int64_t tap = 0; tap < g.taps; ++tap) {
      _mm512_storeu_ps(dst + (tap * g.kin + j) * g.block,
                       _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, index, chunk + g.tap_at[tap], 4));
    }
  }
}
void gathered_lanes_scalar(const KeptWeights& g, const int64_t* out, int64_t lanes, float* dst) {
  for (int64_t j = 0; j < g.kin; ++j) {
    for (int64_t tap = 0; tap < g.taps; ++tap) {
      float* row = dst + (tap * g.kin + j) * g.block;
      for (int64_t l = 0; l < 16; ++l) {
        row[l] = l < lanes ? g.weight[out[l] * g.out_stride + g.in_at[j] + g.tap_at[tap]] : 0.0f;
      }
    }
  }
}
const auto gathered_lanes = for_this_cpu(gathered_lanes_avx512, gathered_lanes_scalar, gathered_lanes_scalar);

}  // namespace

int64_t direct_outputs(int64_t kept) { return kept <= 16 ? 16 : (kept + 31) / 32 * 32; }

int64_t direct_block(int64_t outputs) {
  for (const int64_t block : {64, 32}) {
    if (outputs % block == 0) return block;
  }
  return 16;
}

bool direct_conv_fits(int64_t images, int64_t macs, int64_t max_macs) {
  return images < kMinGemmImages && macs <= max_macs;
}

void direct_conv_raw(const float* padded, int64_t n, int64_t hp, int64_t wp, int64_t c, const float* blocked,
                     int64_t o, int64_t block, int64_t kh, int64_t kw, int64_t ho, int64_t wo, int64_t sh, int64_t sw,
                     const float* bias, const float* residual, bool relu, float* y, const int64_t* kept,
                     int64_t weight_channels, const uint32_t* keep) {
  Direct d{padded, blocked, kept, bias, residual, keep, y, c, kept != nullptr ? weight_channels : c, o, block, kh * kw,
           hp, wp, ho, wo, sh, sw, {}, relu};
  for (int64_t dy = 0; dy < kh; ++dy) {
    for (int64_t dx = 0; dx < kw; ++dx) d.tap_offsets.push_back((dy * wp + dx) * c);
  }
  const int64_t pixels = n * ho * wo, blocks = o / block;
  const int64_t tiles = (pixels + kDirectTilePixels - 1) / kDirectTilePixels;
  const auto& tile = kept != nullptr ? direct_kept_tile : direct_tile;
  // Tasks by output block first: a thread's share of the tasks reads its own blocks of the weight.
  pathrt::parallel_for(0, blocks * tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t % tiles * kDirectTilePixels;
      tile(d, t / tiles, p0, std::min(p0 + kDirectTilePixels, pixels));
    }
  });
}

void direct_kept_weight(const float* blocked, int64_t block, int64_t taps, int64_t c,
                        const std::vector<int64_t>& in_idx, const std::vector<int64_t>& out_idx, int64_t out_block,
                        float* dst) {
  const int64_t kin = static_cast<int64_t>(in_idx.size()), kout = static_cast<int64_t>(out_idx.size());
  const int64_t outs = direct_outputs(kout);
  if (kout == 0) return;
  KeptOutputs k{block, taps * c * block, std::vector<__mmask16>(static_cast<size_t>(out_idx.back() / 16 + 1))};
  for (const int64_t o : out_idx) k.lanes[o / 16] |= static_cast<__mmask16>(1u << (o % 16));
  // (tap, input) rows split over the threads: the weight's lines come from beyond the L2
  pathrt::parallel_for(0, taps * kin, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(outs + 16));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t tap = r / kin, j = r % kin;
      const int64_t ahead = std::min(r + 2, r1 - 1);
      kept_row(k, blocked + (tap * c + in_idx[j]) * block, blocked + (ahead / kin * c + in_idx[ahead % kin]) * block,
               row.data());
      for (int64_t a0 = 0; a0 < outs; a0 += out_block) {
        std::memcpy(dst + ((a0 / out_block * taps + tap) * kin + j) * out_block, row.data() + a0,
                    sizeof(float) * out_block);
      }
    }
  });
}

void direct_gathered_weight(const KeptWeights& g, const int64_t* out, int64_t lanes, float* dst) {
  // the AVX-512 gather's offsets are 32-bit
  const bool fits = lanes == 0 || out[lanes - 1] * g.out_stride <= std::numeric_limits<int32_t>::max();
  (fits ? gathered_lanes : gathered_lanes_scalar)(g, out, lanes, dst);
}

at::Tensor direct_conv_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kFloat && weight.size(0) % 16 == 0,
              "direct_conv_weight: a float (O, C, kh, kw) weight with O a multiple of 16, got ", weight.sizes());
  const int64_t o = weight.size(0), block = direct_block(o);
  // one copy from a view, whatever the weight's memory format: no temporary copy of a weight of megabytes
  const auto view = weight.unflatten(0, {o / block, block}).permute({0, 3, 4, 2, 1});
  return huge_page_empty(view.sizes()).copy_(view);
}

namespace {

// x's pixels as (n, h + 2 * ph, w + 2 * pw, c) floats, channels-last with its padding zero, so windows need no
// bounds checks: only the border is written with zeros and the pixels are copied a row at a time. In place of
// at::zeros and a copy_ into a narrowed view: the embedded model's batch-1 plain pass (five such convs)
// 0.298-0.301 -> 0.280-0.293 ms, 10th percentiles of 3 interleaved pairs. Without padding, x itself when it
// is channels-last. The tensor holds the memory; its shape is x's.
at::Tensor padded_pixels(const at::Tensor& x, int64_t ph, int64_t pw) {
  const auto pixels = x.contiguous(at::MemoryFormat::ChannelsLast);  // its memory is (n, h, w, c)
  if (ph == 0 && pw == 0) return pixels;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), hp = h + 2 * ph, row = (w + 2 * pw) * c;
  auto padded = cpu_empty({n * hp * row});
  const float* src = pixels.data_ptr<float>();
  float* dst = padded.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    float* image = dst + i * hp * row;
    std::fill(image, image + ph * row, 0.0f);
    for (int64_t y = 0; y < h; ++y) {
      float* line = image + (ph + y) * row;
      std::fill(line, line + pw * c, 0.0f);
      std::memcpy(line + pw * c, src + (i * h + y) * w * c, sizeof(float) * w * c);
      std::fill(line + (pw + w) * c, line + row, 0.0f);
    }
    std::fill(image + (ph + h) * row, image + hp * row, 0.0f);
  }
  return padded;
}

}  // namespace

// Channels-last tensors throughout, their memory read and written as (n, h, w, c) through data pointers: no
// permuted views (three a conv, each an ATen call; 48 permutes and their as_strided calls in a ResNet-18@64
// explanation at batch 1, ~1 us each inside a session call).
at::Tensor direct_conv2d(const at::Tensor& x, const at::Tensor& blocked, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && blocked.dim() == 5 && blocked.size(3) == x.size(1),
              "direct_conv2d: a float NCHW input whose channels match the blocked weight's, got ", x.sizes(), " and ",
              blocked.sizes());
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kh = blocked.size(1), kw = blocked.size(2), block = blocked.size(4), o = blocked.size(0) * block;
  const int64_t ho = conv_output_size(h, kh, stride[0], padding[0]), wo = conv_output_size(w, kw, stride[1], padding[1]);
  const at::Tensor input = padded_pixels(x, padding[0], padding[1]);
  auto out = cpu_empty({n, o, ho, wo}, at::kFloat, at::MemoryFormat::ChannelsLast);
  const at::Tensor res = residual.defined() ? residual.contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  direct_conv_raw(input.data_ptr<float>(), n, h + 2 * padding[0], w + 2 * padding[1], c, blocked.data_ptr<float>(), o,
                  block, kh, kw, ho, wo, stride[0], stride[1], b.defined() ? b.data_ptr<float>() : nullptr,
                  res.defined() ? res.data_ptr<float>() : nullptr, relu, out.data_ptr<float>());
  return out;
}

}  // namespace pathrt
