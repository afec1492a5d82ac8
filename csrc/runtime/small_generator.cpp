// SmallGenerator (pathrt/small_generator.h): the generator of a few images in loops over packed weights.
#include "pathrt/small_generator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <string>

#include "pathrt/cpu_empty.h"
#include "pathrt/digest.h"
#include "pathrt/errors.h"
#include "pathrt/generator_math.h"
#include "pathrt/generator_rows.h"
#include "pathrt/call_pool.h"
#include "pathrt/kernels.h"

namespace pathrt {

namespace {

using Clock = std::chrono::steady_clock;
double elapsed_us(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::micro>(to - from).count();
}

void expect_shape(const at::Tensor& t, std::vector<int64_t> shape, const std::string& name) {
  if (!t.defined() || t.sizes() != at::IntArrayRef(shape) || t.scalar_type() != at::kFloat) {
    throw BundleError("bundle generator: " + name + " must be float32 of shape " + shape_repr(shape) + ", got " +
                      (t.defined() ? shape_repr(t.sizes()) : std::string("none")));
  }
}

const float* floats(const at::Tensor& t) { return t.data_ptr<float>(); }

// Per-thread buffers, grown on first use and kept: a call allocates only its result tensors.
struct Scratch {
  std::vector<float> map, next, cols, pooled, projected, z, h, qkv, attn, x1, hidden, gates, state, scores;
  static float* take(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

void relu(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

// Channels-last im2col of a 3x3, stride 2, padding 1 conv: cols (N x oh x ow, 9 x c), taps outer.
void im2col_3x3s2(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow, float* cols) {
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t oy = 0; oy < oh; ++oy) {
      for (int64_t ox = 0; ox < ow; ++ox) {
        float* row = cols + ((s * oh + oy) * ow + ox) * 9 * c;
        for (int64_t ky = 0; ky < 3; ++ky) {
          for (int64_t kx = 0; kx < 3; ++kx) {
            const int64_t iy = 2 * oy - 1 + ky, ix = 2 * ox - 1 + kx;
            float* dst = row + (ky * 3 + kx) * c;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
              std::fill(dst, dst + c, 0.0f);
            } else {
              std::copy_n(x + ((s * h + iy) * w + ix) * c, c, dst);
            }
          }
        }
      }
    }
  }
}

void layer_norm(float* x, const at::Tensor& weight, const at::Tensor& bias, float eps, int64_t rows, int64_t d,
                float* y) {
  layer_norm_rows(x, nullptr, floats(weight), floats(bias), eps, rows, d, y);
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace

SmallGenerator::SmallGenerator(const GeneratorWeights& w) : repeats_(w.repeats), pool_sizes_(w.pool_sizes) {
  const size_t layers = w.stem_weights.size();
  if (layers == 0 || w.stem_biases.size() != layers || w.heads.size() != 4 * layers || w.repeats.size() != layers ||
      w.pool_sizes.size() != layers || w.tail.size() != 5 || w.rpd.size() != 6) {
    throw BundleError("bundle generator: tensors for every layer");
  }
  d_r_ = w.stem_weights[0].size(0);
  d_ = w.tail[0].size(0);
  const int64_t d = d_, d_r = d_r_, l = static_cast<int64_t>(layers);
  for (size_t i = 0; i < layers; ++i) {
    const auto& weight = w.stem_weights[i];
    const std::string name = "stem " + std::to_string(i);
    expect_shape(weight, {d_r, weight.size(1), 1, 1}, name + " weight");
    expect_shape(w.stem_biases[i], {d_r}, name + " bias");
    stems_.emplace_back(weight.flatten(1), w.stem_biases[i]);
  }
  expect_shape(w.shared_weight, {d_r, d_r, 3, 3}, "shared weight");
  expect_shape(w.shared_bias, {d_r}, "shared bias");
  shared_ = SmallLinear(w.shared_weight.permute({0, 2, 3, 1}).reshape({d_r, 9 * d_r}), w.shared_bias);
  expect_shape(w.cls.reshape({-1}), {d}, "cls");
  expect_shape(w.tail[0], {d, d_r}, "tail project weight");
  for (int i = 1; i < 4; ++i) expect_shape(w.tail[i], {d}, "tail vector");
  expect_shape(w.tail[4], {l, d}, "position");
  cls_ = w.cls.reshape({-1}).contiguous();
  project_ = SmallLinear(w.tail[0], w.tail[1]);
  tail_norm_weight_ = w.tail[2].contiguous();
  tail_norm_bias_ = w.tail[3].contiguous();
  position_ = w.tail[4].contiguous();
  attention_heads_ = w.attention_heads;
  if (attention_heads_ < 1 || d % attention_heads_ != 0) throw BundleError("bundle generator: heads must divide d");
  for (const auto& p : w.encoder) {
    if (p.size() != 12) throw BundleError("bundle generator: 12 tensors per encoder layer");
    const int64_t mlp = p[8].size(0);
    for (const int i : {0, 1, 5, 6, 7, 11}) expect_shape(p[i], {d}, "encoder vector");
    expect_shape(p[2], {3 * d, d}, "encoder in_proj weight");
    expect_shape(p[3], {3 * d}, "encoder in_proj bias");
    expect_shape(p[4], {d, d}, "encoder out_proj weight");
    expect_shape(p[8], {mlp, d}, "encoder linear1 weight");
    expect_shape(p[9], {mlp}, "encoder linear1 bias");
    expect_shape(p[10], {d, mlp}, "encoder linear2 weight");
    encoder_.push_back({p[0].contiguous(), p[1].contiguous(), p[6].contiguous(), p[7].contiguous(), p[9].contiguous(),
                        SmallLinear(p[2], p[3]), SmallLinear(p[4], p[5]), SmallLinear(p[8], {}),
                        SmallLinear(p[10], p[11])});
  }
  tail_eps_ = static_cast<float>(w.tail_eps);
  encoder_eps_ = static_cast<float>(w.encoder_eps);
  rpd_eps_ = static_cast<float>(w.rpd_eps);
  for (const int i : {0, 1}) expect_shape(w.rpd[i], {d}, "rpd norm");
  for (const int i : {2, 3}) expect_shape(w.rpd[i], {3 * d, d}, "rpd GRU weight");
  for (const int i : {4, 5}) expect_shape(w.rpd[i], {3 * d}, "rpd GRU bias");
  rpd_norm_weight_ = w.rpd[0].contiguous();
  rpd_norm_bias_ = w.rpd[1].contiguous();
  input_gates_ = SmallLinear(w.rpd[2], w.rpd[4]);
  hidden_gates_ = SmallLinear(w.rpd[3], w.rpd[5]);
  for (size_t i = 0; i < layers; ++i) {
    const at::Tensor* h = &w.heads[4 * i];
    const int64_t c = h[2].size(0);
    expect_shape(h[0], {d, d}, "head hidden weight");
    expect_shape(h[1], {d}, "head hidden bias");
    expect_shape(h[2], {c, d}, "head weight");
    expect_shape(h[3], {c}, "head bias");
    heads_.push_back({SmallLinear(h[0], {}), SmallLinear(h[2], h[3]), h[1].contiguous()});
    channels_.push_back(c);
    offsets_.push_back(total_channels_);
    total_channels_ += c;
  }
}

void SmallGenerator::rfe_layer(const at::Tensor& features, int64_t l, int64_t n, float* pooled) const {
  Scratch& s = scratch();
  const int64_t layers = static_cast<int64_t>(stems_.size()), d_r = d_r_;
  const auto x = features.contiguous(at::MemoryFormat::ChannelsLast);  // (N, H, W, C_l) in memory
  int64_t h = pool_sizes_[l][0], w = pool_sizes_[l][1];
  if (x.size(0) != n || x.size(1) != stems_[l].in() || x.size(2) != h || x.size(3) != w) {
    throw std::invalid_argument("SmallGenerator: layer " + std::to_string(l) + " features of shape " +
                                shape_repr(x.sizes()));
  }
  float* map = Scratch::take(s.map, n * h * w * d_r);
  float* next = Scratch::take(s.next, n * h * w * d_r);
  stems_[l](floats(x), n * h * w, map);
  relu(map, n * h * w * d_r);
  for (int64_t k = 0; k < repeats_[l]; ++k) {
    const int64_t oh = (h - 1) / 2 + 1, ow = (w - 1) / 2 + 1;
    float* cols = Scratch::take(s.cols, n * oh * ow * 9 * d_r);
    im2col_3x3s2(map, n, h, w, d_r, oh, ow, cols);
    shared_(cols, n * oh * ow, next);
    relu(next, n * oh * ow * d_r);
    std::swap(map, next);
    h = oh;
    w = ow;
  }
  const float inv = 1.0f / static_cast<float>(h * w);
  for (int64_t i = 0; i < n; ++i) {
    float* out = pooled + (i * layers + l) * d_r;
    std::fill(out, out + d_r, 0.0f);
    for (int64_t px = 0; px < h * w; ++px) add(out, map + (i * h * w + px) * d_r, d_r);
    for (int64_t c = 0; c < d_r; ++c) out[c] *= inv;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> SmallGenerator::operator()(
    const std::vector<at::Tensor>& features, ExplainResult& r) const {
  const auto t0 = Clock::now();
  Scratch& s = scratch();
  const int64_t layers = static_cast<int64_t>(stems_.size()), n = features[0].size(0), d = d_, d_r = d_r_,
                tokens = layers + 1, rows = n * tokens;
  // RFE convs and the global pool: pooled (N, L, d_r). The layers are independent: they split over the
  // call's threads (each with its own scratch), a layer's products too small to split on their own.
  float* pooled = Scratch::take(s.pooled, n * layers * d_r);
  pathrt::parallel_for(0, layers, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) rfe_layer(features[l], l, n, pooled);
  });
  const auto t1 = Clock::now();
  // RFE tail: tokens z (N, L + 1, d) = [cls, LayerNorm(project(pooled)) + position].
  float* projected = Scratch::take(s.projected, n * layers * d);
  float* z = Scratch::take(s.z, rows * d);
  project_(pooled, n * layers, projected);
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(floats(cls_), d, z + i * tokens * d);
    for (int64_t l = 0; l < layers; ++l) {
      layer_norm_row(projected + (i * layers + l) * d, floats(tail_norm_weight_), floats(tail_norm_bias_),
                     floats(position_) + l * d, tail_eps_, d, z + (i * tokens + 1 + l) * d);
    }
  }
  const auto t2 = Clock::now();
  // PDN encoder layers (pre-norm): z += out(attention(LN1(z))); z += down(GELU(mlp(LN2(z)))).
  float* h = Scratch::take(s.h, rows * d);
  float* qkv = Scratch::take(s.qkv, rows * 3 * d);
  float* attn = Scratch::take(s.attn, rows * d);
  float* x1 = Scratch::take(s.x1, rows * d);
  float* scores = Scratch::take(s.scores, tokens);
  const int64_t dh = d / attention_heads_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (const auto& e : encoder_) {
    const int64_t mlp = e.mlp.out();
    float* hidden = Scratch::take(s.hidden, rows * mlp);
    layer_norm(z, e.norm1_weight, e.norm1_bias, encoder_eps_, rows, d, h);
    e.qkv(h, rows, qkv);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t head = 0; head < attention_heads_; ++head) {
        attention_rows(qkv + i * tokens * 3 * d + head * dh, tokens, d, dh, scale, scores,
                       attn + i * tokens * d + head * dh);
      }
    }
    e.out(attn, rows, x1);
    add(x1, z, rows * d);
    layer_norm(x1, e.norm2_weight, e.norm2_bias, encoder_eps_, rows, d, h);
    e.mlp(h, rows, hidden);
    for (int64_t i = 0; i < rows; ++i) bias_act_row(hidden + i * mlp, floats(e.mlp_bias), mlp, /*apply_gelu=*/true);
    e.down(hidden, rows, z);
    add(z, x1, rows * d);
  }
  const auto t3 = Clock::now();
  // RPD decoder: final LN, the GRU from the last layer's token to the first, a head per layer.
  layer_norm(z, rpd_norm_weight_, rpd_norm_bias_, rpd_eps_, rows, d, h);
  float* gi = Scratch::take(s.gates, n * layers * 3 * d + n * 3 * d);
  float* gh = gi + n * layers * 3 * d;
  // states[l]: the GRU's state after layer l (n x d), states[layers]: the CLS token it starts from
  float* states = Scratch::take(s.state, (layers + 1) * n * d);
  for (int64_t i = 0; i < n; ++i) {
    input_gates_(h + (i * tokens + 1) * d, d, layers, gi + i * layers * 3 * d, 3 * d);
    std::copy_n(h + i * tokens * d, d, states + (layers * n + i) * d);
  }
  // Head l reads only state l, which the GRU makes from the last layer to the first: one thread runs the
  // chain while the other runs each head as its state comes, deepest first, and the chain's thread then
  // joins the heads left (both chunks on one thread, in turn, without a helper). Decoder at batch 1,
  // interleaved processes on 2 cores: embedded 40-55 -> 37-45 us, ResNet-18@64 72-75 -> 65-71 (the chain
  // first, then the heads split over the threads).
  auto head = cpu_empty({n, total_channels_});
  float* logits = head.data_ptr<float>();
  std::atomic<int64_t> ready{layers}, next_head{layers - 1};  // states[l] is final for l >= ready
  const auto run_heads = [&] {
    float* hidden = Scratch::take(scratch().hidden, n * d);
    for (int64_t l = next_head.fetch_sub(1); l >= 0; l = next_head.fetch_sub(1)) {
      while (ready.load(std::memory_order_acquire) > l) cpu_relax();
      const Head& hd = heads_[l];
      hd.hidden(states + l * n * d, n, hidden);
      for (int64_t i = 0; i < n; ++i) bias_act_row(hidden + i * d, floats(hd.hidden_bias), d, /*apply_gelu=*/true);
      hd.logits(hidden, d, n, logits + offsets_[l], total_channels_);
    }
  };
  pathrt::parallel_for(0, 2, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t l = layers - 1; c == 0 && l >= 0; --l) {
        const float* state = states + (l + 1) * n * d;
        hidden_gates_(state, n, gh);
        for (int64_t i = 0; i < n; ++i) {
          gru_row(gi + (i * layers + l) * 3 * d, gh + i * 3 * d, state + i * d, d, states + (l * n + i) * d);
        }
        ready.store(l, std::memory_order_release);
      }
      run_heads();
    }
  });
  auto [scores_out, masks, packed, counts] = daq_threshold_pack_cpu(head);
  const auto t4 = Clock::now();
  r.rfe_convs_us = elapsed_us(t0, t1);
  r.rfe_tail_us = elapsed_us(t1, t2);
  r.encoder_us = elapsed_us(t2, t3);
  r.decoder_us = elapsed_us(t3, t4);
  return {head, scores_out, masks, packed, counts};
}

}  // namespace pathrt
