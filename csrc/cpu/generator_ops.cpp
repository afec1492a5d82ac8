// CPU kernels of the fused generator ops (schemas and references: pathrt/runtime/generator_ops.py):
//   rfe_tail           global pool of every layer's map, one GEMM for all layers, LayerNorm + position;
//   pdn_encoder_layer  LN1, QKV GEMM, short-sequence attention, out-proj GEMM + residual, LN2,
//                      MLP GEMM + GELU, GEMM + residual;
//   rpd_decode         final LN, the GRU recursion (input gates of all layers in one GEMM), heads,
//                      sigmoid, threshold, packing and counts.
// GEMMs go to ATen (MKL); everything between them is one fused loop per step, with the element
// math of pathrt/generator_math.h (shared with the CUDA kernels).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/generator_checks.h"
#include "pathrt/generator_math.h"
#include "pathrt/generator_rows.h"
#include "pathrt/kernels.h"

namespace pathrt {

// The transcendental-heavy loops are PATHRT_CLONES (pathrt/cpu_dispatch.h): portable build, no -march.
PATHRT_CLONES void bias_act_row(float* x, const float* bias, int64_t d, bool apply_gelu) {
  if (apply_gelu) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) x[i] = gelu(x[i] + bias[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) x[i] += bias[i];
  }
}

PATHRT_CLONES void gru_row(const float* gi, const float* gh, const float* h, int64_t d, float* out) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) out[j] = gru_value(gi, gh, h[j], j, d);
}

PATHRT_CLONES void attention_rows(const float* base, int64_t t, int64_t d, int64_t dh, float scale, float* scores,
                                  float* out) {
  for (int64_t i = 0; i < t; ++i) {
    attention_row(base + i * 3 * d, base + d, base + 2 * d, 3 * d, t, dh, scale, scores, out + i * d);
  }
}

// Rows per parallel task for row-wise loops over d values.
static int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, d)); }

// y[r] = LayerNorm(x[r]) (+ add_bias before normalizing, in place on x) for `rows` rows of d values.
void layer_norm_rows(float* x, const float* add_bias, const float* w, const float* b, float eps, int64_t rows,
                     int64_t d, float* y) {
  pathrt::parallel_for(0, rows, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* xr = x + r * d;
      if (add_bias) {
        for (int64_t i = 0; i < d; ++i) xr[i] += add_bias[i];
      }
      layer_norm_row(xr, w, b, nullptr, eps, d, y + r * d);
    }
  });
}

namespace {

void add_bias_rows(float* x, const float* bias, int64_t rows, int64_t d, bool apply_gelu) {
  pathrt::parallel_for(0, rows, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) bias_act_row(x + r * d, bias, d, apply_gelu);
  });
}

}  // namespace

at::Tensor rfe_tail_cpu(at::TensorList maps, const at::Tensor& cls, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& norm_weight, const at::Tensor& norm_bias, const at::Tensor& position,
                        double eps) {
  check_rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position);
  const int64_t layers = static_cast<int64_t>(maps.size()), n = maps[0].size(0), d = weight.size(0),
                d_r = weight.size(1);
  auto pooled = at::empty({n, layers, d_r}, weight.options());
  float* pp = pooled.data_ptr<float>();
  for (int64_t l = 0; l < layers; ++l) {
    const auto m = maps[l].contiguous(at::MemoryFormat::ChannelsLast);  // one pixel's channels together
    const int64_t plane = m.size(2) * m.size(3);
    const float* mp = m.data_ptr<float>();
    const float inv = 1.0f / static_cast<float>(plane);
    pathrt::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        float* out = pp + (s * layers + l) * d_r;
        std::fill(out, out + d_r, 0.0f);
        const float* src = mp + s * plane * d_r;
        for (int64_t px = 0; px < plane; ++px) {
          for (int64_t c = 0; c < d_r; ++c) out[c] += src[px * d_r + c];
        }
        for (int64_t c = 0; c < d_r; ++c) out[c] *= inv;
      }
    });
  }
  const auto tokens = at::addmm(bias, pooled.view({n * layers, d_r}), weight.t());  // (N*L, d)
  auto out = at::empty({n, layers + 1, d}, weight.options());
  const auto cc = cls.contiguous(), nw = norm_weight.contiguous(), nb = norm_bias.contiguous(),
             pc = position.contiguous();
  const float* tp = tokens.data_ptr<float>();
  const float *cp = cc.data_ptr<float>(), *wp = nw.data_ptr<float>(), *bp = nb.data_ptr<float>(),
              *posp = pc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  pathrt::parallel_for(0, n * (layers + 1), row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = r / (layers + 1), t = r % (layers + 1);
      if (t == 0) {
        std::copy(cp, cp + d, op + r * d);
      } else {
        layer_norm_row(tp + (s * layers + t - 1) * d, wp, bp, posp + (t - 1) * d, static_cast<float>(eps), d,
                       op + r * d);
      }
    }
  });
  return out;
}

at::Tensor pdn_encoder_layer_cpu(const at::Tensor& x, at::TensorList params, int64_t heads, double eps) {
  check_pdn_encoder_layer(x, params, heads);
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), rows = n * t, dh = d / heads;
  const float e = static_cast<float>(eps);
  std::vector<at::Tensor> p;
  for (const auto& q : params) p.push_back(q.contiguous());
  auto residual = x.contiguous().view({rows, d});
  auto h = at::empty({rows, d}, x.options());
  layer_norm_rows(const_cast<float*>(residual.data_ptr<float>()), nullptr, p[0].data_ptr<float>(),
                  p[1].data_ptr<float>(), e, rows, d, h.data_ptr<float>());
  const auto qkv = at::addmm(p[3], h, p[2].t());  // (rows, 3d): q | k | v, heads within each
  auto attn = at::empty({rows, d}, x.options());
  const float* qp = qkv.data_ptr<float>();
  float* ap = attn.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  pathrt::parallel_for(0, n * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(t);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / heads, head = task % heads;
      attention_rows(qp + s * t * 3 * d + head * dh, t, d, dh, scale, scores.data(), ap + s * t * d + head * dh);
    }
  });
  auto x1 = at::addmm(residual, attn, p[4].t());  // x + attn W_o^T; + b_o below, fused with LN2
  layer_norm_rows(x1.data_ptr<float>(), p[5].data_ptr<float>(), p[6].data_ptr<float>(), p[7].data_ptr<float>(), e,
                  rows, d, h.data_ptr<float>());
  auto hidden = at::mm(h, p[8].t());
  add_bias_rows(hidden.data_ptr<float>(), p[9].data_ptr<float>(), rows, hidden.size(1), /*apply_gelu=*/true);
  auto y = at::addmm(x1, hidden, p[10].t());
  add_bias_rows(y.data_ptr<float>(), p[11].data_ptr<float>(), rows, d, /*apply_gelu=*/false);
  return y.view({n, t, d});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rpd_decode_cpu(const at::Tensor& z,
                                                                                      at::TensorList params,
                                                                                      at::TensorList heads,
                                                                                      double eps) {
  check_rpd_decode(z, params, heads);
  const int64_t n = z.size(0), layers = z.size(1) - 1, d = z.size(2);
  std::vector<at::Tensor> p;
  for (const auto& q : params) p.push_back(q.contiguous());
  auto zc = z.contiguous();
  auto zn = at::empty({n, layers + 1, d}, z.options());
  layer_norm_rows(const_cast<float*>(zc.data_ptr<float>()), nullptr, p[0].data_ptr<float>(), p[1].data_ptr<float>(),
                  static_cast<float>(eps), n * (layers + 1), d, zn.data_ptr<float>());
  // Input gates of every layer in one GEMM: (N*L, d) x (d, 3d).
  const auto gi = at::addmm(p[4], zn.narrow(1, 1, layers).reshape({n * layers, d}), p[2].t()).view({n, layers, 3 * d});
  auto state = zn.select(1, 0).contiguous();
  std::vector<at::Tensor> logits(layers);
  const float* gip = gi.data_ptr<float>();
  for (int64_t l = layers - 1; l >= 0; --l) {
    const auto gh = at::addmm(p[5], state, p[3].t());  // (N, 3d)
    auto next = at::empty({n, d}, z.options());
    const float *ghp = gh.data_ptr<float>(), *hp = state.data_ptr<float>();
    float* np = next.data_ptr<float>();
    pathrt::parallel_for(0, n, row_grain(d), [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) gru_row(gip + (s * layers + l) * 3 * d, ghp + s * 3 * d, hp + s * d, d, np + s * d);
    });
    state = next;
    auto hidden = at::mm(state, heads[4 * l].contiguous().t());
    add_bias_rows(hidden.data_ptr<float>(), heads[4 * l + 1].contiguous().data_ptr<float>(), n, d, true);
    logits[l] = at::addmm(heads[4 * l + 3], hidden, heads[4 * l + 2].t());
  }
  auto head = at::cat(logits, 1);
  auto [scores, masks, packed, counts] = daq_threshold_pack_cpu(head);
  return {head, scores, masks, packed, counts};
}

TORCH_LIBRARY_IMPL(pathrt, CPU, m) {
  m.impl("rfe_tail", &rfe_tail_cpu);
  m.impl("pdn_encoder_layer", &pdn_encoder_layer_cpu);
  m.impl("rpd_decode", &rpd_decode_cpu);
}

}  // namespace pathrt
