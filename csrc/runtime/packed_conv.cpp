// PackedConv (pathrt/packed_conv.h): torch's mkldnn prepacked convolution ops through the dispatcher, and
// the batched GEMM conv for small output maps.
#include "pathrt/packed_conv.h"

#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/direct_conv.h"
#include "pathrt/epilogue.h"
#include "pathrt/kernels.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/TensorGeometry.h>
#include <ATen/core/dispatch/Dispatcher.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <array>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

namespace pathrt {

namespace {

using Scalars = c10::List<std::optional<c10::Scalar>>;

const c10::OperatorHandle* find(const char* name, const char* overload) {
  const auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  return handle.has_value() ? new c10::OperatorHandle(*handle) : nullptr;  // lives as long as the process
}

const c10::OperatorHandle* reorder_op() {
  static const auto* op = find("mkldnn::_reorder_convolution_weight", "");
  return op;
}
const c10::OperatorHandle* pointwise_op() {
  static const auto* op = find("mkldnn::_convolution_pointwise", "");
  return op;
}
const c10::OperatorHandle* binary_op() {
  static const auto* op = find("mkldnn::_convolution_pointwise", "binary");
  return op;
}

const std::vector<int64_t> kOnes = {1, 1};
// Below this many multiply-adds per call at::conv2d is as fast. Measured at batch 1 on one thread
// (at::conv2d on channels-last against packed): the embedded model's 0.9M-4.7M convs 46 / 40 us
// (3->32 at 32x32), 68 / 69 (32->64 at 16x16), 95 / 68 (64->128 at 8x8), 221 / 80 (128->256 at 4x4);
// its batch-1 plain pass 0.61-0.66 ms with 8M here, 0.56-0.58 with 0.5M, ResNet-18@64's 4.1 / 3.8;
// batch 64 within noise. (An earlier 8M came from 2-thread timings of other shapes: 4.7M 59 vs 73 us.)
constexpr int64_t kMinPackedMacs = int64_t{1} << 19;

}  // namespace

namespace {

// Output pixels per image of a conv of x with weight.
int64_t map_pixels(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  return conv_output_size(x.size(2), weight.size(2), stride[0], padding[0]) *
         conv_output_size(x.size(3), weight.size(3), stride[1], padding[1]);
}

// Whether direct_conv_weight can block `weight` for the direct conv.
bool direct_weight(const at::Tensor& weight) {
  return weight.dim() == 4 && weight.is_cpu() && weight.scalar_type() == at::kFloat && weight.size(0) % 16 == 0;
}

}  // namespace

bool gemm_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const int64_t pixels = map_pixels(x, weight, stride, padding);
  return x.size(0) >= kMinGemmImages && x.size(0) * pixels >= kMinGemmRows &&
         (pixels <= kGemmPixels || (pixels <= kGemmPixelsLargeWeight && weight.numel() >= kLargeWeight));
}

bool direct_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride,
                      c10::IntArrayRef padding) {
  if (!direct_weight(weight) || x.dim() != 4 || !x.is_cpu() || x.scalar_type() != at::kFloat) return false;
  return direct_conv_fits(x.size(0), x.size(0) * map_pixels(x, weight, stride, padding) * weight.numel());
}

bool pointwise_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride,
                         c10::IntArrayRef padding) {
  return weight.size(2) == 1 && weight.size(3) == 1 && stride[0] == 1 && stride[1] == 1 && padding[0] == 0 &&
         padding[1] == 0 && x.size(0) * x.size(2) * x.size(3) >= kMinPointwiseRows;
}

at::Tensor pointwise_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& residual, bool relu, const at::Tensor& out) {
  const auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), o = weight.size(0);
  const auto y =
      out.defined() ? out : at::empty({n, o, h, w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(y.sizes() == at::IntArrayRef({n, o, h, w}) && y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "pointwise_conv2d: out must be a channels-last (N, O, H, W) tensor");
  auto rows = y.permute({0, 2, 3, 1}).view({n * h * w, o});
  at::mm_out(rows, input.permute({0, 2, 3, 1}).view({n * h * w, c}), weight.reshape({o, c}).t());
  return conv_epilogue(y, {}, o, bias, residual, relu, {});
}

bool dot_conv_pays(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  return x.size(0) < kMinGemmImages && map_pixels(x, weight, stride, padding) <= kGemmPixels;
}

at::Tensor kept_weight(const at::Tensor& weight, const at::Tensor& keep_out, const at::Tensor& keep_in) {
  const auto w = weight.contiguous(at::MemoryFormat::ChannelsLast);  // (O, kh, kw, C) in memory
  const int64_t o = w.size(0), c = w.size(1), taps = w.size(2) * w.size(3);
  if (!keep_out.defined() && !keep_in.defined()) return w.permute({0, 2, 3, 1}).reshape({o, taps * c});
  const auto out_idx = keep_out.defined() ? keep_out.contiguous() : at::arange(o, keep_in.options());
  const auto in_idx = keep_in.defined() ? keep_in.contiguous() : at::Tensor();
  const int64_t kout = out_idx.numel(), kin = in_idx.defined() ? in_idx.numel() : c;
  auto rows = at::empty({kout, taps * kin}, w.options());
  const float* wp = w.data_ptr<float>();
  const int64_t* op = out_idx.data_ptr<int64_t>();
  const int64_t* ip = in_idx.defined() ? in_idx.data_ptr<int64_t>() : nullptr;
  float* rp = rows.data_ptr<float>();
  pathrt::parallel_for(0, kout, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, taps * kin)), [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      if (ip == nullptr) {  // every input: the output's row as it is (a gather through an index ran 3x slower)
        std::memcpy(rp + a * taps * c, wp + op[a] * taps * c, sizeof(float) * taps * c);
        continue;
      }
      for (int64_t t = 0; t < taps; ++t) {
        const float* src = wp + (op[a] * taps + t) * c;
        float* dst = rp + (a * taps + t) * kin;
        for (int64_t j = 0; j < kin; ++j) dst[j] = src[ip[j]];
      }
    }
  });
  return rows;
}

bool is_input_major(const at::Tensor& weight) {
  const int64_t sizes[] = {weight.size(1), weight.size(2), weight.size(3), weight.size(0)};
  const int64_t strides[] = {weight.stride(1), weight.stride(2), weight.stride(3), weight.stride(0)};
  return at::geometry_is_contiguous(sizes, strides);  // is_contiguous's rule, on the (C, kh, kw, O) order
}

at::Tensor kept_inputs(const at::Tensor& input_major, const at::Tensor& keep_in) {
  const int64_t o = input_major.size(0), c = input_major.size(1), taps = input_major.size(2) * input_major.size(3);
  TORCH_CHECK(is_input_major(input_major), "kept_inputs: the weight is not input-major");
  const auto in_idx = keep_in.contiguous();
  const int64_t kin = in_idx.numel();
  auto matrix = at::empty({taps * kin, o}, input_major.options());
  const float* wp = input_major.data_ptr<float>();  // (C, kh, kw, O) in memory
  const int64_t* ip = in_idx.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(ip, ip + kin, [c](int64_t i) { return i >= 0 && i < c; }),
              "kept_inputs: an input channel out of range");
  float* mp = matrix.data_ptr<float>();
  pathrt::parallel_for(0, taps * kin, std::max<int64_t>(1, (int64_t{1} << 14) / o), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // row r: tap r / kin of kept input r % kin
      const int64_t t = r / kin, j = r % kin;
      std::memcpy(mp + r * o, wp + (ip[j] * taps + t) * o, sizeof(float) * static_cast<size_t>(o));
    }
  });
  return matrix;
}

// conv_epilogue over channels-last pixels [p0, p1) (`plane` per sample): out's channel keep[j]
// (channel j when keep is null) = act(y's channel j + bias + residual), 0 where the sample's mask row
// (null: none) removes it; with keep, out's other channels 0. (Placing y's channels first and then one
// vectorized pass over out's rows was no faster: the pass is bound by memory, 20-30 GB/s.)
PATHRT_CLONES static void conv_epilogue_pixels(const float* y, int64_t kout, const int64_t* keep, int64_t channels,
                                               const float* bias, const float* residual, bool relu, const bool* mask,
                                               int64_t p0, int64_t p1, int64_t plane, float* out) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* src = y + p * kout;
    const float* res = residual != nullptr ? residual + p * channels : nullptr;
    const bool* m = mask != nullptr ? mask + p / plane * channels : nullptr;
    float* dst = out + p * channels;
    if (keep != nullptr) {
      std::fill(dst, dst + channels, 0.0f);
      for (int64_t j = 0; j < kout; ++j) {
        const int64_t o = keep[j];
        const float v = bias_act(src[j], bias[o], res != nullptr ? res[o] : 0.0f, relu);
        dst[o] = m == nullptr || m[o] ? v : 0.0f;
      }
      continue;
    }
#pragma omp simd
    for (int64_t o = 0; o < kout; ++o) {
      const float v = src[o] + bias[o] + (res != nullptr ? res[o] : 0.0f);
      dst[o] = m == nullptr || m[o] ? (relu ? relu_select(v) : v) : 0.0f;
    }
  }
}

at::Tensor conv_epilogue(const at::Tensor& y, const at::Tensor& keep, int64_t channels, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, const at::Tensor& mask) {
  const auto in = y.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t kout = in.size(1), plane = in.size(2) * in.size(3), pixels = in.size(0) * plane;
  const auto b = bias.defined() ? bias.contiguous() : at::zeros({channels}, in.options());
  const auto r = residual.defined() ? residual.contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const auto m = mask.defined() ? mask.contiguous() : at::Tensor();
  const auto k = keep.defined() ? keep.contiguous() : at::Tensor();
  auto out = keep.defined() ? at::empty({in.size(0), channels, in.size(2), in.size(3)}, in.options(),
                                        at::MemoryFormat::ChannelsLast)
                            : in;
  const float* yp = in.data_ptr<float>();
  const int64_t* kp = k.defined() ? k.data_ptr<int64_t>() : nullptr;
  const float* bp = b.data_ptr<float>();
  const float* rp = r.defined() ? r.data_ptr<float>() : nullptr;
  const bool* mp = m.defined() ? m.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  pathrt::parallel_for(0, pixels, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, channels)),
                       [&](int64_t p0, int64_t p1) {
                         conv_epilogue_pixels(yp, kout, kp, channels, bp, rp, relu, mp, p0, p1, plane, op);
                       });
  return out;
}

namespace {

// The kernel offsets [first, last) along one axis whose input coordinate, for output coordinate o, lies
// inside the map (a contiguous range: the coordinate grows with the offset).
std::pair<int64_t, int64_t> inside_taps(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t size) {
  int64_t first = 0, last = kernel;
  while (first < last && conv_input_coord(o, first, stride, pad, size) < 0) ++first;
  while (last > first && conv_input_coord(o, last - 1, stride, pad, size) < 0) --last;
  return {first, last};
}

}  // namespace

at::Tensor gemm_conv2d(const at::Tensor& x, const at::Tensor& weight_matrix, const at::Tensor& keep_in, int64_t kh,
                       int64_t kw, const at::Tensor& bias, const at::Tensor& residual, bool relu,
                       c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), wd = input.size(3);
  const auto in_idx = keep_in.defined() ? keep_in.contiguous() : at::Tensor();
  const int64_t kin = in_idx.defined() ? in_idx.numel() : c;
  const int64_t* ip = in_idx.defined() ? in_idx.data_ptr<int64_t>() : nullptr;
  const int64_t o = weight_matrix.size(1);
  TORCH_CHECK(weight_matrix.size(0) == kh * kw * kin, "gemm_conv2d: the weight matrix does not fit the kept inputs");
  const int64_t ho = conv_output_size(h, kh, stride[0], padding[0]), wo = conv_output_size(wd, kw, stride[1], padding[1]);
  // From kMinWindowImages images on, the output pixels are grouped by their kernel window inside the
  // input, (dy0, dy1, dx0, dx1): on the small maps this conv takes, most taps of a padded kernel read
  // zeros (at 2x2 with a 3x3 kernel, 5 of each pixel's 9), and each group's GEMM runs over its window's
  // taps only. Below it, one GEMM over every tap (padding as zero columns) reads the weights once.
  const bool windows = n >= kMinWindowImages;
  std::map<std::array<int64_t, 4>, std::vector<int64_t>> groups;
  for (int64_t oy = 0; oy < ho; ++oy) {
    const auto [y0, y1] = windows ? inside_taps(oy, kh, stride[0], padding[0], h) : std::pair{int64_t{0}, kh};
    for (int64_t ox = 0; ox < wo; ++ox) {
      const auto [x0, x1] = windows ? inside_taps(ox, kw, stride[1], padding[1], wd) : std::pair{int64_t{0}, kw};
      groups[{y0, y1, x0, x1}].push_back(oy * wo + ox);
    }
  }
  auto out = at::empty({n, ho, wo, o}, input.options());
  const float* xp = input.data_ptr<float>();
  for (const auto& [window, members] : groups) {
    const auto [y0, y1, x0, x1] = window;
    const int64_t pixels = static_cast<int64_t>(members.size()), rows = n * pixels;
    const int64_t width = (x1 - x0) * kin, depth = (y1 - y0) * width;
    auto cols = at::empty({rows, depth}, input.options());
    float* cp = cols.data_ptr<float>();
    pathrt::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, depth)),
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r) {
                             const int64_t s = r / pixels, p = members[r % pixels], oy = p / wo, ox = p % wo;
                             float* dst = cp + r * depth;
                             for (int64_t dy = y0; dy < y1; ++dy) {
                               const int64_t iy = conv_input_coord(oy, dy, stride[0], padding[0], h);
                               for (int64_t dx = x0; dx < x1; ++dx, dst += kin) {
                                 const int64_t ix = conv_input_coord(ox, dx, stride[1], padding[1], wd);
                                 if (iy < 0 || ix < 0) {
                                   std::fill(dst, dst + kin, 0.0f);
                                   continue;
                                 }
                                 const float* pixel = xp + ((s * h + iy) * wd + ix) * c;
                                 if (ip == nullptr) {
                                   std::memcpy(dst, pixel, static_cast<size_t>(kin) * sizeof(float));
                                 } else {
                                   for (int64_t j = 0; j < kin; ++j) dst[j] = pixel[ip[j]];
                                 }
                               }
                             }
                           }
                         });
    // One group of every pixel writes the output in place; the others go through y and are placed after.
    const bool whole = groups.size() == 1;
    auto y = whole ? out.view({rows, o}) : at::empty({rows, o}, input.options());
    if (depth == 0) {
      y.zero_();
    } else if (x0 == 0 && x1 == kw) {  // whole kernel rows: the window's weights are one block of rows
      at::mm_out(y, cols, weight_matrix.narrow(0, y0 * kw * kin, depth));
    } else {  // one block of weight rows per kernel row of the window, accumulated
      for (int64_t dy = y0; dy < y1; ++dy) {
        const auto block = cols.narrow(1, (dy - y0) * width, width);
        const auto weights = weight_matrix.narrow(0, (dy * kw + x0) * kin, width);
        if (dy == y0) {
          at::mm_out(y, block, weights);
        } else {
          y.addmm_(block, weights);
        }
      }
    }
    if (whole) break;
    const float* yp = y.data_ptr<float>();
    float* op = out.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = r / pixels, p = members[r % pixels];
      std::memcpy(op + (s * ho * wo + p) * o, yp + r * o, static_cast<size_t>(o) * sizeof(float));
    }
  }
  return conv_epilogue(out.permute({0, 3, 1, 2}), {}, o, bias, residual, relu, {});
}

// The weight packed per input shape, most recently used first.
struct PackedConv::Cache {
  std::mutex mutex;
  std::list<std::pair<std::vector<int64_t>, at::Tensor>> entries;
  std::once_flag blocked_once;
  at::Tensor blocked;  // a weight of kLargeWeight floats or more, blocked on its first direct conv
};

bool packed_convs_available() {
  return at::hasMKLDNN() && reorder_op() != nullptr && pointwise_op() != nullptr && binary_op() != nullptr;
}

namespace {

at::Tensor reorder(const at::Tensor& weight, const std::vector<int64_t>& padding, const std::vector<int64_t>& stride,
                   at::OptionalIntArrayRef input_size) {
  return reorder_op()
      ->typed<at::Tensor(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                         at::OptionalIntArrayRef)>()
      .call(weight, padding, stride, kOnes, 1, input_size);
}

}  // namespace

PackedConv::PackedConv(const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding)
    : plain_(weight.contiguous(at::MemoryFormat::ChannelsLast)), stride_(std::move(stride)),
      padding_(std::move(padding)), cache_(std::make_shared<Cache>()) {
  if (weight.scalar_type() != at::kFloat || weight.dim() != 4) return;
  if (direct_weight(weight) && weight.numel() < kLargeWeight) direct_ = direct_conv_weight(weight);
  if (!packed_convs_available()) return;
  try {
    reorder(weight.contiguous(), padding_, stride_, std::nullopt);  // can oneDNN take this weight at all?
    packed_ = true;
  } catch (const c10::Error&) {
    // a weight oneDNN cannot take runs through at::conv2d, whose errors name the shape problem
  }
}

at::Tensor PackedConv::packed_for(const at::Tensor& input) const {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
#ifdef _OPENMP
  shape.push_back(omp_get_max_threads());  // oneDNN's choice of layout depends on the thread count too
#endif
  const std::vector<int64_t> input_size(shape.begin(), shape.begin() + input.dim());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  auto& entries = cache_->entries;
  for (auto it = entries.begin(); it != entries.end(); ++it) {
    if (it->first == shape) {
      entries.splice(entries.begin(), entries, it);
      return entries.front().second;
    }
  }
  entries.emplace_front(shape, reorder(plain_, padding_, stride_, input_size));
  if (entries.size() > kMaxPackedShapes) entries.pop_back();
  return entries.front().second;
}

const at::Tensor& PackedConv::direct_weight_for_call() const {
  if (direct_.defined()) return direct_;
  std::call_once(cache_->blocked_once, [this] { cache_->blocked = direct_conv_weight(plain_); });
  return cache_->blocked;
}

PackedConv::Kernel PackedConv::kernel_for(const at::Tensor& x) const {
  if (direct_conv_pays(x, plain_, stride_, padding_)) return Kernel::Direct;
  if (dot_conv_pays(x, plain_, stride_, padding_)) return Kernel::Dot;
  // oneDNN's per-call setup outweighs its faster kernel on the smallest convs (the generator's above
  // SmallGenerator's batches): those run through at::conv2d.
  const int64_t macs = x.size(0) * x.size(2) * x.size(3) * plain_.numel() / (stride_[0] * stride_[1]);
  if (!packed_ || macs < kMinPackedMacs) return Kernel::Conv2d;
  if (gemm_conv_pays(x, plain_, stride_, padding_)) return Kernel::Gemm;
  if (pointwise_conv_pays(x, plain_, stride_, padding_)) return Kernel::Pointwise;
  return Kernel::OneDnn;
}

bool PackedConv::own_kernels(const at::Tensor& x) const {
  const Kernel kernel = kernel_for(x);
  return kernel == Kernel::Direct || kernel == Kernel::Dot;
}

at::Tensor PackedConv::operator()(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& residual,
                                  bool relu) const {
  const std::optional<at::Tensor> b = bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
  switch (kernel_for(x)) {
    case Kernel::Direct:
      return direct_conv2d(x, direct_weight_for_call(), bias, residual, relu, stride_, padding_);
    case Kernel::Conv2d: {
      auto y = at::conv2d(x, plain_, b, stride_, padding_);
      if (residual.defined()) y.add_(residual);
      return relu ? y.relu_() : y;
    }
    case Kernel::Dot:  // plain_'s channels-last rows, read in place
      return pathway_conv2d_cpu(x, plain_, b, residual.defined() ? std::optional<at::Tensor>(residual) : std::nullopt,
                                std::nullopt, std::nullopt, stride_, padding_, relu);
    case Kernel::Gemm:
      return gemm_conv2d(x, kept_weight(plain_, {}, {}).t(), {}, plain_.size(2), plain_.size(3), bias, residual, relu,
                         stride_, padding_);
    case Kernel::Pointwise:
      return pointwise_conv2d(x, plain_, bias, residual, relu);
    case Kernel::OneDnn:
      break;
  }
  return onednn_conv2d(x, packed_for(x), bias, residual, relu, stride_, padding_);
}

void PackedConv::into(const at::Tensor& x, const at::Tensor& bias, bool relu, const at::Tensor& out) const {
  if (kernel_for(x) == Kernel::Pointwise) {
    pointwise_conv2d(x, plain_, bias, {}, relu, out);
  } else {
    out.copy_((*this)(x, bias, {}, relu));
  }
}

at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& residual, bool relu, c10::IntArrayRef stride, c10::IntArrayRef padding) {
  const std::optional<at::Tensor> b = bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
  const auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  if (residual.defined()) {
    return binary_op()
        ->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, std::string_view,
                           std::optional<c10::Scalar>, std::optional<std::string_view>, Scalars,
                           std::optional<std::string_view>)>()
        .call(input, residual.contiguous(at::MemoryFormat::ChannelsLast), weight, b, padding, stride, kOnes,
              1, "add", std::nullopt, relu ? std::optional<std::string_view>("relu") : std::nullopt, Scalars(),
              std::nullopt);
  }
  return pointwise_op()
      ->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::IntArrayRef,
                         c10::IntArrayRef, c10::IntArrayRef, int64_t, std::string_view, Scalars,
                         std::optional<std::string_view>)>()
      .call(input, weight, b, padding, stride, kOnes, 1, relu ? "relu" : "none", Scalars(), std::nullopt);
}

}  // namespace pathrt
