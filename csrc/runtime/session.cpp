// ExplainSession (pathrt/session.h): bundle loading and the native explain path. The executor is
// the C++ twin of pathrt/runtime/fast_path.py (PlanRunner) and generator_ops.FusedGenerator: the
// same steps, the same conv strategies (per-sample sparse, union, dense) and the same kernels.
#include "pathrt/session.h"

#include <ATen/Parallel.h>
#include <ATen/TensorUtils.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "pathrt/buffer_pool.h"
#include "pathrt/call_pool.h"
#include "pathrt/cpu_dispatch.h"
#include "pathrt/cpu_empty.h"
#include "pathrt/digest.h"
#include "pathrt/fused_checks.h"
#include "pathrt/generator_math.h"
#include "pathrt/huge_pages.h"
#include "pathrt/kernels.h"
#include "pathrt/packed_conv.h"
#include "pathrt/pool.h"
#include "pathrt/small_generator.h"
#include "pathrt/small_linear.h"
#include "pathrt/threads.h"

namespace pathrt {

namespace {

constexpr int64_t kBundleVersion = 3;  // x-version of pathrt/bundle.schema.json
constexpr uint64_t kMaxHeaderBytes = 64ull << 20;   // the JSON header (safetensors allows 100 MB)
constexpr uint64_t kMaxBundleBytes = 16ull << 30;   // refuse larger files before reading them
constexpr int64_t kMaxDim = int64_t{1} << 31;
constexpr int64_t kMaxValues = 100000;
// What a legitimate bundle holds (as pathrt.schemas bounds Python artifacts): the dry run and every
// call allocate from these, so a hostile plan cannot ask for an enormous image or feature map.
constexpr int64_t kMaxImageChannels = 16;
constexpr int64_t kMaxSide = 1024;
// Linear steps through SmallLinear (Step::small): weights of up to 1M values (the packed copy, 4 MB, is
// kept beside the weight; VGG's classifier reads its own in place, few_rows_linear_cpu), products of up to 16 rows.
constexpr int64_t kSmallLinearMaxWeights = int64_t{1} << 20, kSmallLinearMaxRows = 2 * SmallGenerator::kMaxBatch;

enum class Op { Conv, Linear, Relu, MaxPool, AvgPool, AdaptiveAvgPool, Flatten, Add, Affine, Activation };
// The plan ops, conv strategies and strategy measures of the plan contract (pathrt/bundle.schema.json;
// tests/test_plan_contract.py holds these tables to it).
const std::map<std::string, Op>& plan_ops() {
  static const std::map<std::string, Op> ops = {
      {"conv2d", Op::Conv}, {"linear", Op::Linear}, {"relu", Op::Relu}, {"max_pool2d", Op::MaxPool},
      {"avg_pool2d", Op::AvgPool}, {"adaptive_avg_pool2d", Op::AdaptiveAvgPool}, {"flatten", Op::Flatten},
      {"add", Op::Add}, {"affine", Op::Affine}, {"activation", Op::Activation}};
  return ops;
}
// The elementwise activations of `activation` steps (pathrt.runtime.fast_path.ACTIVATIONS).
enum class Activation { Silu, Gelu, GeluTanh, LeakyRelu, Hardswish, Relu6, Tanh };
const std::map<std::string, Activation>& activations() {
  static const std::map<std::string, Activation> kinds = {
      {"silu", Activation::Silu}, {"gelu", Activation::Gelu}, {"gelu_tanh", Activation::GeluTanh},
      {"leaky_relu", Activation::LeakyRelu}, {"hardswish", Activation::Hardswish}, {"relu6", Activation::Relu6},
      {"tanh", Activation::Tanh}};
  return kinds;
}
enum class Strategy { Dense, Union, Sparse };
const std::map<std::string, Strategy>& strategies() {
  static const std::map<std::string, Strategy> names = {
      {"dense", Strategy::Dense}, {"union", Strategy::Union}, {"sparse", Strategy::Sparse}};
  return names;
}
enum class Measure { MeanKeptProduct, UnionKeptProduct };
const std::map<std::string, Measure>& measures() {
  static const std::map<std::string, Measure> names = {
      {"mean_kept_product", Measure::MeanKeptProduct}, {"union_kept_product", Measure::UnionKeptProduct}};
  return names;
}
// One rule of the bundle's conv-strategy policy: run `strategy` when `measure` <= `limit`, for convs
// whose output has at least `min_batch_pixels` pixels over the batch.
struct StrategyRule {
  Strategy strategy;
  Measure measure;
  double limit;
  int64_t min_batch_pixels = 0;
};

struct Step {
  Op op = Op::Relu;
  std::vector<int64_t> inputs;
  int64_t output = 0;
  at::Tensor weight, bias;
  PackedConv conv;  // the dense conv: weight prepacked at load, bias, residual and ReLU fused
  // The weight input-major, for pathway_conv2d at a few pixels, when the input alone is masked (each
  // ResNet block's first conv): it then reads only the kept inputs' weights, contiguously. ResNet-18@64
  // at batch 1, 2x2 512->512 with 208 inputs kept, 1 thread: 503 -> 187 us (oneDNN's dense conv: 444).
  at::Tensor input_major;
  // A linear's weight packed for SmallLinear, when it has at most kSmallLinearMaxWeights values: its
  // products of up to kSmallLinearMaxRows rows (the joint tail of a batch of up to 8: plain and pathway
  // rows) run there instead of at::linear, whose MKL GEMM spent ~0.5 ms on ResNet-18's 2 x 512 -> 1000
  // classifier at batch 1 inside a session call (SmallLinear: ~0.1 ms).
  SmallLinear small;
  bool relu = false, residual = false, flatten_input = false, pathway_pass = false, ceil_mode = false;
  int64_t pathway = -1, in_mask = -1, out_mask = -1, start_dim = 1;
  Activation activation = Activation::Silu;
  double alpha = 0.0;  // LeakyReLU's negative slope
  std::vector<int64_t> kernel, stride, padding, output_size;
  // The step's name in torch.profiler ranges (pathrt profile's per-step rows: pathrt.plain.<label>,
  // pathrt.pathway.<label>, pathrt.tail.<label> for the joint tail on both passes): the target's module
  // for a conv or linear, else the op and the step's index. Set at load; a range's name is joined
  // only while a profiler records.
  std::string label;
};

std::string read_bundle(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw BundleError("cannot open bundle " + path + ": no such file or no permission");
  const std::streamoff size = file.tellg();
  if (size < 0 || static_cast<uint64_t>(size) > kMaxBundleBytes) {
    throw BundleError("bundle " + path + " is larger than 16 GiB or unreadable");
  }
  std::string data(static_cast<size_t>(size), '\0');
  file.seekg(0);
  if (!file.read(data.data(), size)) throw BundleError("cannot read bundle " + path);
  return data;
}

int64_t checked_numel(const std::vector<int64_t>& shape, int64_t limit, const std::string& name) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d != 0 && n > limit / d) throw BundleError("tensor " + name + " is larger than its bundle");
    n *= d;
  }
  return n;
}

// Reads the safetensors layout: 8-byte little-endian header length, JSON header, data. Every
// tensor must be F32 and lie, with its declared size, inside the data section. Each tensor from 2 MB on
// lies on 2 MB pages (huge_page_empty): the batch-1 kernels stream these weights.
std::map<std::string, at::Tensor> read_tensors(const std::string& data, const Json& header, uint64_t data_start) {
  std::map<std::string, at::Tensor> tensors;
  const uint64_t data_len = data.size() - data_start;
  for (const auto& [name, entry] : header.items("the safetensors header")) {
    if (name == "__metadata__") continue;
    if (entry.at("dtype").as_string("dtype") != "F32") {
      throw BundleError("tensor " + name + " has dtype " + entry.at("dtype").as_string("dtype") +
                        "; bundles hold float32 (F32) tensors only");
    }
    const auto shape = entry.at("shape").int_list("shape", 0, 0, kMaxDim);
    if (shape.size() > 8) throw BundleError("tensor " + name + " has more than 8 dimensions");
    const auto offsets = entry.at("data_offsets").int_list("data_offsets", 2, 0, static_cast<int64_t>(data_len));
    if (offsets[0] > offsets[1]) throw BundleError("tensor " + name + " has data_offsets out of order");
    const int64_t numel = checked_numel(shape, static_cast<int64_t>(data_len / 4) + 1, name);
    if (numel * 4 != offsets[1] - offsets[0]) {
      throw BundleError("tensor " + name + ": its shape needs " + std::to_string(numel * 4) + " bytes but its data "
                        "offsets span " + std::to_string(offsets[1] - offsets[0]));
    }
    auto t = huge_page_empty(shape);
    if (numel > 0) std::memcpy(t.data_ptr<float>(), data.data() + data_start + offsets[0], numel * 4);
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

// A view of x's storage with these sizes and strides from storage element `offset`, made without the
// dispatcher: inside a session call a view op (flatten, narrow) or at::from_blob took 1-6 us (dispatch, cold
// after the kernels around it), a TensorImpl of x's storage well under one.
at::Tensor raw_view(const at::Tensor& x, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset) {
  auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(x.storage()), x.key_set(), x.dtype());
  impl->set_sizes_and_strides(sizes, strides, offset);
  return at::Tensor(std::move(impl));
}

// at::narrow(x, dim, start, length) as a raw_view (a narrow is always a view: x's strides, a later start).
at::Tensor narrow_view(const at::Tensor& x, int64_t dim, int64_t start, int64_t length) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes[dim] = length;
  return raw_view(x, sizes, x.strides(), x.storage_offset() + start * x.stride(dim));
}

// at::flatten(x, start_dim) as a raw_view where it is one (the flattened dims' strides allow it, as
// at::flatten's own view): ResNet-18@64's batch-1 joint tail flattens a (2, 512, 1, 1) channels-last map,
// 6.4 us through at::flatten inside the call.
at::Tensor flatten_from(const at::Tensor& x, int64_t start_dim) {
  const int64_t d = start_dim < 0 ? start_dim + x.dim() : start_dim;
  if (x.dim() <= 1 || d < 0 || d >= x.dim()) return at::flatten(x, start_dim);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + d);
  shape.push_back(c10::multiply_integers(x.sizes().slice(d)));
  const auto strides = at::detail::computeStride(x.sizes(), x.strides(), shape);
  return strides ? raw_view(x, shape, *strides, x.storage_offset()) : at::flatten(x, start_dim);
}

at::Tensor channel_mask(const at::Tensor& y, const at::Tensor& mask) {
  return y * mask.to(y.scalar_type()).view({mask.size(0), mask.size(1), 1, 1});
}

// x channels-last: a float NCHW batch of images transposed by plain loops, ATen's strided copy took
// 0.55 ms for ResNet-18@64's batch of 64 (3 MB); anything else as x.contiguous.
at::Tensor to_channels_last(const at::Tensor& x) {
  if (x.dim() != 4 || x.scalar_type() != at::kFloat || !x.is_contiguous() ||
      x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto out = cpu_empty(x.sizes(), at::kFloat, at::MemoryFormat::ChannelsLast);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  pathrt::parallel_for(0, n * h, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, w * c)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r / h, y = r % h;
      float* row = dst + r * w * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        const float* plane_row = src + ((s * c + ch) * h + y) * w;
        for (int64_t i = 0; i < w; ++i) row[i * c + ch] = plane_row[i];
      }
    }
  });
  return out;
}

// A channels-last tensor's channels `keep`, in one pass over the pixels. index_select along the channels
// of a channels-last tensor wrote NCHW through a generic gather: 0.9 ms for ResNet-18@64's layer 1 at batch
// 64, against 0.2.
at::Tensor gather_channels(const at::Tensor& x, const at::Tensor& keep) {
  const auto in = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c = in.size(1), k = keep.numel(), pixels = in.size(0) * in.size(2) * in.size(3);
  auto out = cpu_empty({in.size(0), k, in.size(2), in.size(3)}, at::kFloat, at::MemoryFormat::ChannelsLast);
  const float* src = in.data_ptr<float>();
  const int64_t* idx = keep.data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  pathrt::parallel_for(0, pixels, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, k)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t j = 0; j < k; ++j) dst[p * k + j] = src[p * c + idx[j]];
    }
  });
  return out;
}

// Per-layer statistics of one batch's masks, computed on first use (as fast_path._MaskStats) in one
// pass over the bool masks: each sample's kept fraction and the union of kept channels. Plain loops:
// at batch 1 the ATen version (cast, mean, any, nonzero, item) cost more than the convs it chose for.
class MaskStats {
 public:
  explicit MaskStats(const std::vector<at::Tensor>& masks) : masks_(masks), layers_(masks.size()) {}

  int64_t batch() const { return masks_[0].size(0); }

  // Mean over the batch of kept(in) x kept(out) per sample (a side without a mask counts as 1).
  double mean_kept_product(int64_t in_layer, int64_t out_layer) {
    const std::vector<double>* a = in_layer >= 0 ? &layer(in_layer).density : nullptr;
    const std::vector<double>* b = out_layer >= 0 ? &layer(out_layer).density : nullptr;
    const size_t n = a ? a->size() : b->size();
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += (a ? (*a)[i] : 1.0) * (b ? (*b)[i] : 1.0);
    return n ? sum / static_cast<double>(n) : 0.0;
  }

  // Kept channels of the union over the batch; undefined when every channel is kept.
  at::Tensor union_index(int64_t l) {
    if (l < 0) return {};
    Layer& stats = layer(l);
    if (!stats.index_made) {
      if (static_cast<int64_t>(stats.kept.size()) != masks_[l].size(1)) {
        stats.index = at::tensor(stats.kept, at::kLong);
      }
      stats.index_made = true;
    }
    return stats.index;
  }

  double union_fraction(int64_t l) {
    if (l < 0) return 1.0;
    return static_cast<double>(layer(l).kept.size()) / static_cast<double>(masks_[l].size(1));
  }

 private:
  struct Layer {
    bool done = false, index_made = false;
    std::vector<double> density;  // per sample
    std::vector<int64_t> kept;    // channels kept by any sample
    at::Tensor index;
  };

  Layer& layer(int64_t l) {
    Layer& stats = layers_[l];
    if (!stats.done) {
      const auto m = masks_[l].contiguous();
      const int64_t n = m.size(0), c = m.size(1);
      const bool* p = m.data_ptr<bool>();
      std::vector<char> any(c, 0);
      stats.density.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        int64_t count = 0;
        for (int64_t j = 0; j < c; ++j) {
          count += p[i * c + j];
          any[j] |= static_cast<char>(p[i * c + j]);
        }
        stats.density[i] = static_cast<double>(count) / static_cast<double>(c);
      }
      for (int64_t j = 0; j < c; ++j) {
        if (any[j]) stats.kept.push_back(j);
      }
      stats.done = true;
    }
    return stats;
  }

  const std::vector<at::Tensor>& masks_;
  std::vector<Layer> layers_;
};

bool ends_in_relu(const Step& s) { return s.op == Op::Relu || s.relu; }

// A conv step's output pixels over the batch (N x H_out x W_out) for input x.
int64_t conv_pixels(const Step& s, const at::Tensor& x) {
  return x.size(0) * ((x.size(2) + 2 * s.padding[0] - s.weight.size(2)) / s.stride[0] + 1) *
         ((x.size(3) + 2 * s.padding[1] - s.weight.size(3)) / s.stride[1] + 1);
}

using Clock = std::chrono::steady_clock;
double elapsed_ms(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// Softmax of row (k values) at column c; NaN when the row holds one, as at::softmax. Its exponentials are
// generator_math.h's branch-free exp_approx in a simd loop, one clone per ISA level: std::exp in double
// took 10 us of ResNet-18's batch-1 call for its two rows of 1000 classes.
PATHRT_CLONES float softmax_at(const float* row, int64_t k, int64_t c) {
  float top = row[0];
  for (int64_t j = 1; j < k; ++j) top = std::max(top, row[j]);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < k; ++j) sum += exp_approx(row[j] - top);
  return exp_approx(row[c] - top) / sum;
}

// r's explained classes (the argmax of the plain logits, the first NaN counting as the largest, as
// at::argmax) and their softmax probability under both passes (Y, O), a row at a time: at batch 1
// the ATen ops this replaces (argmax, two softmaxes, gathers) took ~25 us.
void explained_class(ExplainResult& r) {
  const int64_t n = r.logits.size(0), k = r.logits.size(1);
  const auto pathway = r.pathway_logits.contiguous();
  r.classes = cpu_empty({n}, at::kLong);
  r.y = cpu_empty({n});
  r.o = cpu_empty({n});
  const float* lp = r.logits.data_ptr<float>();
  const float* pp = pathway.data_ptr<float>();
  int64_t* cp = r.classes.data_ptr<int64_t>();
  float* yp = r.y.data_ptr<float>();
  float* op = r.o.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, k));
  pathrt::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = lp + i * k;
      int64_t c = 0;
      for (int64_t j = 1; j < k && !std::isnan(row[c]); ++j) {
        if (row[j] > row[c] || std::isnan(row[j])) c = j;
      }
      cp[i] = c;
      yp[i] = softmax_at(row, k, c);
      op[i] = softmax_at(pp + i * k, k, c);
    }
  });
}

}  // namespace

struct ExplainSession::Impl {
  SessionInfo info;
  std::vector<Step> steps;
  int64_t output = 0, num_values = 0;
  std::set<int64_t> chain, saved;
  bool chain_relu = false;
  std::vector<StrategyRule> policy;  // in order; none applies: dense
  std::vector<int64_t> plain_last_read, pathway_last_read;  // per value: the last step that reads it
  // The joint tail: steps [joint_from, end) read one value made before them (joint_input), which both
  // passes make, and no mask; they run once, in the pathway phase, on both passes' joint_input stacked.
  // A classifier's weights are then read once per call (VGG-11@64's 3 linears, 117 MB after the pool
  // fold; at batch 1 on 2 cores 16 ms through MKL's GEMM, 4.7 through few_rows_linear_cpu).
  // Without such a tail, joint_from is the step count and joint_input the output.
  int64_t joint_from = 0, joint_input = 0;
  // generator: its tensors, its convs packed for oneDNN (the ATen path) and the small-batch path
  GeneratorWeights gen;
  std::vector<PackedConv> stems;  // 1x1 convs
  PackedConv shared;              // the shared 3x3/2 conv
  std::optional<SmallGenerator> small;  // made after the dry run has checked the tensors' shapes
  int64_t generator_work = 0;  // multiply-adds per image

  // The threads of one call: steps with at least `min_work` run on `count`, the others on one.
  struct Threads {
    int count = 1;
    int64_t min_work = 0;
    int width(int64_t work) const { return work >= min_work ? count : 1; }
  };

  // A step's work in multiply-add equivalents: a conv's or linear's multiply-adds, kElementWork per
  // element of an elementwise or pooling step (memory-bound: ~10x a multiply-add in a GEMM kernel). A
  // conv counts at least kWeightWork per weight: on a few pixels it is bound by reading its weight, ~10
  // multiply-adds' time per float (one core reads 21 GB/s and multiply-adds ~50 G/s), and two threads
  // read it nearly twice as fast (ResNet-18@64's 2x2 512->512 convs at batch 1 through dot_conv_pays:
  // plain pass 3.58 ms with them on one thread, 3.27 on two).
  static int64_t work(const Step& s, const std::vector<at::Tensor>& values) {
    constexpr int64_t kElementWork = 16, kWeightWork = 10;
    const at::Tensor& x = values[s.inputs[0]];
    switch (s.op) {
      case Op::Conv: return std::max(conv_pixels(s, x), kWeightWork) * s.weight.numel();
      case Op::Linear: return x.size(0) * s.weight.numel();
      default: return x.numel() * kElementWork;
    }
  }

  // Whether a dense step runs on pathrt's own kernels with the call pool on: then it stays on this
  // thread's OpenMP count of one and its loops take the pool's helpers, which answer in ~1 us, rather
  // than OpenMP's team, which sleeps (ResNet-18@64's 2x2 512->512 convs at batch 1 widened to it).
  static bool on_call_pool(const Step& s, const std::vector<at::Tensor>& values) {
    return s.op == Op::Conv && call_pool::width() > 1 && s.conv.own_kernels(values[s.inputs[0]]);
  }

  static int dense_width(const Threads& threads, const Step& s, const std::vector<at::Tensor>& values) {
    return on_call_pool(s, values) ? 1 : threads.width(work(s, values));
  }

  // x W^T + b (then ReLU) for a linear step: SmallLinear's packed weight for a few float rows; a weight too
  // large for a packed copy read in place for up to kDotMaxPixels rows (few_rows_linear_cpu); else at::linear.
  static at::Tensor linear(const Step& s, const at::Tensor& x) {
    const bool float_rows = x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(1) == s.weight.size(1);
    if (float_rows && s.small.out() == 0 && x.size(0) <= kDotMaxPixels && s.weight.size(1) % kFewRowsAlign == 0 &&
        s.weight.is_contiguous()) {
      const auto xc = x.contiguous();
      auto y = cpu_empty({xc.size(0), s.weight.size(0)});
      few_rows_linear_cpu(xc.data_ptr<float>(), xc.size(0), s.weight.data_ptr<float>(), s.weight.size(0),
                          s.weight.size(1), s.bias.defined() ? s.bias.data_ptr<float>() : nullptr, s.relu,
                          y.data_ptr<float>());
      return y;
    }
    if (!float_rows || s.small.out() == 0 || x.size(0) > kSmallLinearMaxRows) {
      auto y = at::linear(x, s.weight, s.bias);
      return s.relu ? y.relu_() : y;
    }
    const auto xc = x.contiguous();
    auto y = cpu_empty({xc.size(0), s.small.out()});
    s.small(xc.data_ptr<float>(), xc.size(0), y.data_ptr<float>());
    if (s.relu) {  // as relu_: a NaN stays
      float* p = y.data_ptr<float>();
      for (int64_t i = 0; i < y.numel(); ++i) p[i] = p[i] < 0.0f ? 0.0f : p[i];
    }
    return y;
  }

  at::Tensor dense(const Step& s, const std::vector<at::Tensor>& values) const {
    const at::Tensor& x = values[s.inputs[0]];
    switch (s.op) {
      case Op::Conv: return s.conv(x, s.bias, s.residual ? values[s.inputs[1]] : at::Tensor(), s.relu);
      case Op::Linear: return linear(s, s.flatten_input ? flatten_from(x, 1) : x);
      case Op::Relu: return at::relu(x);
      case Op::MaxPool: return max_pool2d_cpu(x, s.kernel, s.stride, s.padding, s.ceil_mode);
      case Op::AvgPool: return avg_pool2d_cpu(x, s.kernel, s.stride, s.padding, s.ceil_mode);
      case Op::AdaptiveAvgPool: return adaptive_avg_pool2d_cpu(x, s.output_size);
      case Op::Flatten: return flatten_from(x, s.start_dim);
      case Op::Add: return x + values[s.inputs[1]];
      case Op::Affine: return at::addcmul(s.bias.view({1, -1, 1, 1}), x, s.weight.view({1, -1, 1, 1}));
      case Op::Activation:
        switch (s.activation) {
          case Activation::Silu: return at::silu(x);
          case Activation::Gelu: return at::gelu(x);
          case Activation::GeluTanh: return at::gelu(x, "tanh");
          case Activation::LeakyRelu: return at::leaky_relu(x, s.alpha);
          case Activation::Hardswish: return at::hardswish(x);
          case Activation::Relu6: return at::hardtanh(x, 0.0, 6.0);
          case Activation::Tanh: return at::tanh(x);
        }
    }
    throw BundleError("unknown plan op");
  }

  at::Tensor mask(const Step& s, const at::Tensor& y, const at::Tensor& m, bool fresh) const {
    if (!ends_in_relu(s)) return channel_mask(y, m);
    if (fresh && y.is_contiguous(y.suggest_memory_format())) {
      auto out = y;
      masked_bias_relu_inplace_cpu(out, std::nullopt, m);
      return out;
    }
    return masked_bias_relu_cpu(y, std::nullopt, m);
  }

  // Runs the steps before the joint tail: its input (the logits without a tail), pooled pathway-layer
  // features and the values the pathway pass reuses.
  at::Tensor plain(const at::Tensor& x, std::vector<at::Tensor>& features, std::vector<at::Tensor>& keep,
                   const Threads& threads) const {
    std::vector<at::Tensor> values(num_values);
    values[0] = to_channels_last(x);
    for (size_t i = 0; i < static_cast<size_t>(joint_from); ++i) {
      const Step& s = steps[i];
      RECORD_FUNCTION("pathrt.plain." + s.label, std::vector<c10::IValue>());
      const ThreadLimit limit(dense_width(threads, s, values));
      values[s.output] = dense(s, values);
      if (s.pathway >= 0) features[s.pathway] = rfe_pool(values[s.output], static_cast<size_t>(s.pathway));
      for (const int64_t v : s.inputs) {
        if (plain_last_read[v] == static_cast<int64_t>(i) && !saved.count(v) && v != output) values[v].reset();
      }
    }
    for (const int64_t v : saved) keep[v] = values[v];
    return values[joint_input];
  }

  // at::cat({a, b}, 0), as two copies of their memory when both are float and contiguous in one format
  // (then sample-major). The embedded model's batch-1 joint tail stacks two (1, 256, 4, 4) channels-last
  // inputs: at::cat ~8 us (timed inside the call, most of it reading the pathway rows from the other
  // core's cache), its pathway phase 0.125-0.126 -> 0.122-0.124 ms with the copies (alternating builds).
  static at::Tensor stack_rows(const at::Tensor& a, const at::Tensor& b) {
    const auto format = dense_format(a);
    if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || a.sizes().slice(1) != b.sizes().slice(1) ||
        !a.is_contiguous(format) || !b.is_contiguous(format)) {
      return at::cat({a, b}, 0);
    }
    std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end());
    shape[0] += b.size(0);
    auto both = cpu_empty(shape, at::kFloat, format);
    std::memcpy(both.data_ptr<float>(), a.data_ptr<float>(), sizeof(float) * a.numel());
    std::memcpy(both.data_ptr<float>() + a.numel(), b.data_ptr<float>(), sizeof(float) * b.numel());
    return both;
  }

  // The joint tail on both passes' input stacked (plain rows first): both passes' logits, stacked.
  at::Tensor joint_tail(const at::Tensor& plain_input, const at::Tensor& pathway_input, const Threads& threads) const {
    std::vector<at::Tensor> values(num_values);
    values[joint_input] = stack_rows(plain_input, pathway_input);
    for (size_t i = static_cast<size_t>(joint_from); i < steps.size(); ++i) {
      const Step& s = steps[i];
      RECORD_FUNCTION("pathrt.tail." + s.label, std::vector<c10::IValue>());
      const ThreadLimit limit(dense_width(threads, s, values));
      values[s.output] = dense(s, values);
      for (const int64_t v : s.inputs) {
        if (plain_last_read[v] == static_cast<int64_t>(i) && v != output) values[v].reset();
      }
    }
    return values[output];
  }

  // The RFE's input pooling of pathway layer l, done in the plain pass right after the layer is
  // computed, while its output is still in cache (the generator's largest memory traffic).
  at::Tensor rfe_pool(const at::Tensor& x, size_t l) const {
    const int64_t h = x.size(2), w = x.size(3), ph = gen.pool_sizes[l][0], pw = gen.pool_sizes[l][1];
    if (h == ph && w == pw) return x;
    if (h % ph == 0 && w % pw == 0) return avg_pool2d_cpu(x, {h / ph, w / pw}, {h / ph, w / pw}, {0, 0}, false);
    return at::adaptive_avg_pool2d(x, {ph, pw});
  }

  // Pooled pathway-layer features -> (head logits, scores, masks, packed, counts).
  // Records the generator's phases in `r` (microseconds).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> generator(
      const std::vector<at::Tensor>& features, ExplainResult& r) const {
    const auto t0 = Clock::now();
    // The shared 3x3/2 block: layers whose maps have the same size at the same repeat go through one
    // conv call together (one batch of N x layers), which halves the generator's conv calls. A map is
    // slot `slot[l]` of the batch `joint[l]`: the stems write into the first repeat's batches, and a
    // group that fills a whole batch in order is that batch, so the maps are joined without copies
    // (at::cat's were 0.3 ms of the embedded model's 3.3 ms of generator convs at batch 64).
    const size_t layers = features.size();
    const int64_t n = features[0].size(0), most = *std::max_element(gen.repeats.begin(), gen.repeats.end());
    std::vector<at::Tensor> maps(layers), joint(layers);
    std::vector<size_t> slot(layers, 0);
    const auto same_size = [&](const std::vector<at::Tensor>& of, int64_t k) {
      std::map<std::pair<int64_t, int64_t>, std::vector<size_t>> groups;
      for (size_t l = 0; l < layers; ++l) {
        if (gen.repeats[l] > k) groups[{of[l].size(2), of[l].size(3)}].push_back(l);
      }
      return groups;
    };
    for (const auto& [size, members] : same_size(features, -1)) {  // every layer
      const int64_t rows = static_cast<int64_t>(members.size()) * n;
      const auto batch = at::empty({rows, stems[members[0]].weight().size(0), size.first, size.second},
                                   features[0].options().memory_format(at::MemoryFormat::ChannelsLast));
      for (size_t i = 0; i < members.size(); ++i) {
        const size_t l = members[i];
        std::tie(maps[l], joint[l], slot[l]) = std::tuple{batch.narrow(0, static_cast<int64_t>(i) * n, n), batch, i};
        stems[l].into(features[l], gen.stem_biases[l], true, maps[l]);
      }
    }
    for (int64_t k = 0; k < most; ++k) {
      for (const auto& [size, members] : same_size(maps, k)) {
        const auto& first = joint[members[0]];
        bool whole = first.size(0) == static_cast<int64_t>(members.size()) * n;
        std::vector<at::Tensor> inputs;
        for (size_t i = 0; i < members.size(); ++i) {
          whole = whole && joint[members[i]].is_same(first) && slot[members[i]] == i;
          inputs.push_back(maps[members[i]]);
        }
        const auto input = whole ? first : inputs.size() == 1 ? inputs[0] : at::cat(inputs, 0);
        const auto y = shared(input, gen.shared_bias, {}, true);
        for (size_t i = 0; i < members.size(); ++i) {
          const size_t l = members[i];
          std::tie(maps[l], joint[l], slot[l]) = std::tuple{y.narrow(0, static_cast<int64_t>(i) * n, n), y, i};
        }
      }
    }
    const auto t1 = Clock::now();
    const auto& tail = gen.tail;
    auto z = rfe_tail_cpu(maps, gen.cls, tail[0], tail[1], tail[2], tail[3], tail[4], gen.tail_eps);
    const auto t2 = Clock::now();
    for (const auto& params : gen.encoder) z = pdn_encoder_layer_cpu(z, params, gen.attention_heads, gen.encoder_eps);
    const auto t3 = Clock::now();
    auto out = rpd_decode_cpu(z, gen.rpd, gen.heads, gen.rpd_eps);
    const auto t4 = Clock::now();
    r.rfe_convs_us = 1e3 * elapsed_ms(t0, t1);
    r.rfe_tail_us = 1e3 * elapsed_ms(t1, t2);
    r.encoder_us = 1e3 * elapsed_ms(t2, t3);
    r.decoder_us = 1e3 * elapsed_ms(t3, t4);
    return out;
  }

  // How a pathway-pass conv runs, and the share of the dense conv's multiply-adds it computes (the
  // measure of the rule that chose it: each rule's measure is its strategy's FLOP fraction; 1 for dense).
  struct Choice {
    Strategy strategy = Strategy::Dense;
    double kept = 1.0;
  };

  // The bundle's policy: the first rule whose measure is at most its limit, else dense (as PlanRunner._choose).
  // `pixels`: the conv's output pixels over the batch (N x H_out x W_out).
  Choice choose(const Step& s, MaskStats& stats, int64_t pixels) const {
    if (s.in_mask < 0 && s.out_mask < 0) return {};
    for (const auto& rule : policy) {
      if (pixels < rule.min_batch_pixels) continue;
      const double value = rule.measure == Measure::MeanKeptProduct
                               ? stats.mean_kept_product(s.in_mask, s.out_mask)
                               : stats.union_fraction(s.in_mask) * stats.union_fraction(s.out_mask);
      // Union runs as sparse at one sample (its union is its own channels) and on at most kDotMaxPixels
      // pixels, where the sparse kernel reads each sample's kept weights in place (as PlanRunner._choose,
      // bundle_format.UNION_AS_SPARSE_MAX_PIXELS).
      if (value <= rule.limit) {
        const bool as_sparse = stats.batch() == 1 || pixels <= kDotMaxPixels;
        return {rule.strategy == Strategy::Union && as_sparse ? Strategy::Sparse : rule.strategy, value};
      }
    }
    return {};
  }

  at::Tensor union_conv(const Step& s, at::Tensor x, const at::Tensor& residual, const std::vector<at::Tensor>& masks,
                        MaskStats& stats) const {
    const auto keep_in = stats.union_index(s.in_mask), keep_out = stats.union_index(s.out_mask);
    const at::Tensor mask = s.pathway >= 0 ? masks[s.pathway] : at::Tensor();
    const int64_t kh = s.weight.size(2), kw = s.weight.size(3);
    // Every output and no mask (a block's first conv): the conv's own epilogue adds the bias and the
    // residual and applies the ReLU (ResNet-18@64's union convs at batch 64: 0.15-0.45 ms less each).
    const bool fused = !keep_out.defined() && !mask.defined();
    at::Tensor y;
    if (gemm_conv_pays(x, s.weight, s.stride, s.padding)) {  // x's kept channels go straight into the im2col
      // (kh * kw * kin, kout); every output kept: from the input-major copy when the step has one
      const auto matrix = !keep_out.defined() && keep_in.defined() && s.input_major.defined()
                              ? kept_inputs(s.input_major, keep_in)
                              : kept_weight(s.conv.weight(), keep_out, keep_in).t();
      if (fused) return gemm_conv2d(x, matrix, keep_in, kh, kw, s.bias, residual, s.relu, s.stride, s.padding);
      y = gemm_conv2d(x, matrix, keep_in, kh, kw, {}, {}, false, s.stride, s.padding);
    } else {
      if (keep_in.defined()) x = gather_channels(x, keep_in);
      const auto rows = kept_weight(s.conv.weight(), keep_out, keep_in);  // (kout, kh * kw * kin)
      const auto weight = rows.view({rows.size(0), kh, kw, x.size(1)}).permute({0, 3, 1, 2});  // channels-last
      if (fused && packed_convs_available()) {
        return onednn_conv2d(x, weight, s.bias, residual, s.relu, s.stride, s.padding);
      }
      y = at::conv2d(x, weight, {}, s.stride, s.padding);
    }
    return conv_epilogue(y, keep_out, s.weight.size(0), s.bias, residual, s.relu, mask);
  }

  at::Tensor pathway(std::vector<at::Tensor>& values, const std::vector<at::Tensor>& masks, const Threads& threads) const {
    std::set<int64_t> dirty;
    for (const int64_t v : chain) {
      if (values[v].defined()) dirty.insert(v);
    }
    const auto clean = [&](int64_t v) {
      if (dirty.erase(v)) {
        values[v] = chain_relu ? masked_bias_relu_cpu(values[v], std::nullopt, masks[0]) : channel_mask(values[v], masks[0]);
      }
    };
    MaskStats stats(masks);
    clean(output);  // a model that ends inside its first pathway layer's chain
    for (size_t i = 0; i < static_cast<size_t>(joint_from); ++i) {
      const Step& s = steps[i];
      if (!s.pathway_pass) continue;
      RECORD_FUNCTION("pathrt.pathway." + s.label, std::vector<c10::IValue>());
      std::optional<ThreadLimit> limit;
      at::Tensor y;
      if (s.op == Op::Conv) {
        const int64_t pixels = conv_pixels(s, values[s.inputs[0]]);
        const auto [strategy, kept] = choose(s, stats, pixels);
        const auto kept_work = static_cast<int64_t>(kept * static_cast<double>(pixels * s.weight.numel()));
        limit.emplace(strategy == Strategy::Dense && on_call_pool(s, values) ? 1 : threads.width(kept_work));
        const at::Tensor in_mask = s.in_mask >= 0 ? masks[s.in_mask] : at::Tensor();
        const at::Tensor out_mask = s.out_mask >= 0 ? masks[s.out_mask] : at::Tensor();
        if (strategy != Strategy::Sparse || !in_mask.defined()) clean(s.inputs[0]);
        if (s.residual) clean(s.inputs[1]);
        const at::Tensor residual = s.residual ? values[s.inputs[1]] : at::Tensor();
        const auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
        if (strategy == Strategy::Sparse) {
          const bool few = s.input_major.defined() && pixels <= kDotMaxPixels;
          y = pathway_conv2d_cpu(values[s.inputs[0]], few ? s.input_major : s.weight, opt(s.bias), opt(residual), opt(in_mask),
                                 opt(out_mask), s.stride, s.padding, s.relu, s.conv.blocked());
        } else if (strategy == Strategy::Union) {
          y = union_conv(s, values[s.inputs[0]], residual, masks, stats);
        } else if (s.pathway >= 0 && s.relu) {
          y = s.conv(values[s.inputs[0]], {}, residual, false);
          masked_bias_relu_inplace_cpu(y, opt(s.bias), masks[s.pathway]);
        } else {
          y = dense(s, values);
          if (s.pathway >= 0) y = mask(s, y, masks[s.pathway], true);
        }
      } else {
        limit.emplace(threads.width(work(s, values)));
        for (const int64_t v : s.inputs) clean(v);
        y = dense(s, values);
        if (s.pathway >= 0) y = mask(s, y, masks[s.pathway], s.op != Op::Flatten);
      }
      values[s.output] = y;
      for (const int64_t v : s.inputs) {
        if (pathway_last_read[v] == static_cast<int64_t>(i) && v != output) values[v].reset();
      }
    }
    return values[joint_input];
  }

  // One call. Each step, and the generator as a whole, runs on OpenMP's team of all threads only when
  // its work pays for waking it (pathrt/threads.h); the other steps run on this thread, where pathrt's
  // own kernels share their loops with the call pool's spinning helpers (pathrt/call_pool.h). While the
  // pool reports other work on the cores (call_pool::contended), every step runs on this thread.
  ExplainResult run(const at::Tensor& images) const {
    const int count = call_pool::contended() ? 1 : max_threads();
    const Threads threads{count, parallel_work(count)};
    const CallScope helpers(count);
    const ThreadLimit serial(1);
    std::vector<at::Tensor> features(info.channels.size()), values(num_values);
    ExplainResult r;
    r.threads = count;
    // Each phase is a torch.profiler range too (pathrt profile's trace shows them; free when off).
    const auto t0 = Clock::now();
    at::Tensor plain_tail_input;  // the logits when there is no joint tail
    {
      RECORD_FUNCTION("pathrt.session.plain", std::vector<c10::IValue>());
      plain_tail_input = plain(images, features, values, threads);
    }
    const auto t1 = Clock::now();
    at::Tensor head;
    {
      RECORD_FUNCTION("pathrt.session.generator", std::vector<c10::IValue>());
      if (small && images.size(0) <= SmallGenerator::kMaxBatch) {
        std::tie(head, r.scores, r.masks, r.packed, r.counts) = (*small)(features, r);
      } else {
        const ThreadLimit limit(threads.width(images.size(0) * generator_work));
        std::tie(head, r.scores, r.masks, r.packed, r.counts) = generator(features, r);
      }
    }
    const auto t2 = Clock::now();
    {
      RECORD_FUNCTION("pathrt.session.pathway", std::vector<c10::IValue>());
      // Each pathway layer's mask, contiguous: a narrow_view of r.masks, copied only when it has several
      // rows (a narrow took ~1-2 us; 8 of them, 14 us of ResNet-18@64's batch-1 pathway phase; at::from_blob
      // ~0.8).
      std::vector<at::Tensor> masks;
      int64_t offset = 0;
      for (const int64_t c : info.channels) {
        masks.push_back(narrow_view(r.masks, 1, offset, c).contiguous());
        offset += c;
      }
      auto pathway_tail_input = pathway(values, masks, threads);
      if (joint_from < static_cast<int64_t>(steps.size())) {
        const auto both = joint_tail(plain_tail_input, pathway_tail_input, threads);
        const int64_t n = images.size(0);
        r.logits = narrow_view(both, 0, 0, n);
        r.pathway_logits = narrow_view(both, 0, n, n).contiguous();
      } else {
        r.logits = plain_tail_input;
        r.pathway_logits = pathway_tail_input.contiguous();
      }
    }
    const auto t3 = Clock::now();
    r.plain_ms = elapsed_ms(t0, t1);
    r.generator_ms = elapsed_ms(t1, t2);
    r.pathway_ms = elapsed_ms(t2, t3);
    r.logits = r.logits.contiguous();
    explained_class(r);
    return r;
  }
};

namespace {

const at::Tensor& tensor(const std::map<std::string, at::Tensor>& tensors, const std::string& name) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) throw BundleError("the bundle lacks tensor " + name);
  return it->second;
}

template <typename T>
T parse_name(const std::map<std::string, T>& names, const std::string& name, const char* what) {
  const auto it = names.find(name);
  if (it == names.end()) throw BundleError(std::string("bundle plan: unknown ") + what + " '" + name + "' (written by a newer pathrt?)");
  return it->second;
}

Op parse_op(const std::string& op) { return parse_name(plan_ops(), op, "op"); }

std::vector<StrategyRule> parse_policy(const Json& rules) {
  std::vector<StrategyRule> policy;
  const auto& list = rules.as_array("conv_strategies");
  if (list.size() > 8) throw BundleError("bundle: more than 8 conv_strategies");
  for (const auto& rule : list) {
    const double limit = rule.at("limit").as_number("conv_strategies limit");
    if (!(limit >= 0 && limit <= 1)) throw BundleError("bundle: a conv_strategies limit outside [0, 1]");
    policy.push_back({parse_name(strategies(), rule.at("name").as_string("conv_strategies name"), "conv strategy"),
                      parse_name(measures(), rule.at("measure").as_string("conv_strategies measure"), "measure"),
                      limit, 0});
    if (const Json* pixels = rule.find("min_batch_pixels")) {
      policy.back().min_batch_pixels = pixels->as_int("conv_strategies min_batch_pixels", 0, int64_t{1} << 30);
    }
  }
  return policy;
}

// The tensors named by a list of the bundle's generator.tensors (exactly `size` of them).
std::vector<at::Tensor> named(const std::map<std::string, at::Tensor>& tensors, const Json& names, size_t size,
                              const char* what) {
  const auto& list = names.as_array(what);
  if (list.size() != size) throw BundleError(std::string("bundle generator: ") + what + " must name " + std::to_string(size) + " tensors");
  std::vector<at::Tensor> out;
  for (const auto& name : list) out.push_back(tensor(tensors, name.as_string(what)));
  return out;
}

// A required key whose value is a pathway layer or null (-1).
int64_t optional_layer(const Json& entry, const char* key, int64_t layers) {
  const Json& v = entry.at(key);
  return v.is_null() ? -1 : v.as_int(key, 0, layers - 1);
}

// The longest joint tail (see Impl::joint_from) that holds a conv or linear, whose input the pathway pass
// makes too; none: joint_from = the step count, joint_input = the output.
void find_joint_tail(ExplainSession::Impl& impl) {
  const int64_t count = static_cast<int64_t>(impl.steps.size());
  std::vector<int64_t> maker(impl.num_values, -1);  // the step that makes each value
  for (int64_t i = 0; i < count; ++i) maker[impl.steps[i].output] = i;
  impl.joint_from = count;
  impl.joint_input = impl.output;
  bool weighted = false;
  for (int64_t t = count - 1; t >= 0; --t) {
    const Step& s = impl.steps[t];
    if (!s.pathway_pass || s.pathway >= 0 || s.in_mask >= 0 || s.out_mask >= 0 || impl.chain.count(s.output) ||
        impl.saved.count(s.output)) {
      break;
    }
    weighted = weighted || s.op == Op::Conv || s.op == Op::Linear;
    std::set<int64_t> outside;  // what steps [t, count) read from before t
    for (int64_t i = t; i < count; ++i) {
      for (const int64_t v : impl.steps[i].inputs) {
        if (maker[v] < t) outside.insert(v);
      }
    }
    if (outside.size() != 1 || !weighted) continue;
    const int64_t v = *outside.begin();
    if (maker[v] < 0 || !impl.steps[maker[v]].pathway_pass || impl.chain.count(v)) continue;
    impl.joint_from = t;
    impl.joint_input = v;
  }
  impl.info.joint_tail_steps = count - impl.joint_from;
}

void load_plan(ExplainSession::Impl& impl, const Json& plan, const std::map<std::string, at::Tensor>& tensors) {
  const int64_t layers = static_cast<int64_t>(impl.info.channels.size());
  std::set<int64_t> defined = {0};
  for (const auto& entry : plan.at("steps").as_array("steps")) {
    Step s;
    s.op = parse_op(entry.at("op").as_string("op"));
    s.inputs = entry.at("inputs").int_list("inputs", 0, 0, kMaxValues - 1);
    s.output = entry.at("output").as_int("output", 1, kMaxValues - 1);
    const size_t arity = (s.op == Op::Add || (s.op == Op::Conv && entry.at("residual").as_bool("residual"))) ? 2 : 1;
    if (s.inputs.size() != arity) throw BundleError("bundle plan: a step has the wrong number of inputs");
    for (const int64_t v : s.inputs) {
      if (!defined.count(v)) throw BundleError("bundle plan: a step reads value " + std::to_string(v) + " before it is made");
    }
    if (!defined.insert(s.output).second) throw BundleError("bundle plan: value " + std::to_string(s.output) + " is made twice");
    s.pathway = optional_layer(entry, "pathway", layers);
    s.in_mask = optional_layer(entry, "in_mask", layers);
    s.out_mask = optional_layer(entry, "out_mask", layers);
    s.pathway_pass = entry.at("pathway_pass").as_bool("pathway_pass");
    if (s.op == Op::Conv || s.op == Op::Linear) {
      s.weight = tensor(tensors, entry.at("weight").as_string("weight"));
      if (const Json* b = entry.find("bias")) s.bias = tensor(tensors, b->as_string("bias"));
      s.relu = entry.at("relu").as_bool("relu");
      if (s.weight.dim() != (s.op == Op::Conv ? 4 : 2)) throw BundleError("bundle plan: a weight has the wrong rank");
      if (s.bias.defined() && (s.bias.dim() != 1 || s.bias.size(0) != s.weight.size(0))) {
        throw BundleError("bundle plan: a bias does not match its weight");
      }
    }
    if (s.op == Op::Conv) {
      s.residual = entry.at("residual").as_bool("residual");
      s.stride = entry.at("stride").int_list("stride", 2, 1, 1 << 16);
      s.padding = entry.at("padding").int_list("padding", 2, 0, 1 << 16);
      if (s.padding[0] >= s.weight.size(2) || s.padding[1] >= s.weight.size(3)) {
        throw BundleError("bundle plan: a conv pads by its kernel size or more");
      }
      s.conv = PackedConv(s.weight, s.stride, s.padding);
      if (s.pathway_pass && s.in_mask >= 0 && s.out_mask < 0 && s.weight.size(0) % kInputMajorBlock == 0) {
        auto major = huge_page_empty({s.weight.size(1), s.weight.size(2), s.weight.size(3), s.weight.size(0)});
        s.input_major = major.copy_(s.weight.permute({1, 2, 3, 0})).permute({3, 0, 1, 2});
      }
    } else if (s.op == Op::Linear) {
      if (s.weight.numel() <= kSmallLinearMaxWeights) s.small = SmallLinear(s.weight, s.bias);
      if (const Json* f = entry.find("flatten_input")) s.flatten_input = f->as_bool("flatten_input");
    } else if (s.op == Op::MaxPool || s.op == Op::AvgPool) {
      s.kernel = entry.at("kernel_size").int_list("kernel_size", 2, 1, 1 << 16);
      s.stride = entry.at("stride").int_list("stride", 2, 1, 1 << 16);
      s.padding = entry.at("padding").int_list("padding", 2, 0, 1 << 16);
      s.ceil_mode = entry.at("ceil_mode").as_bool("ceil_mode");
    } else if (s.op == Op::AdaptiveAvgPool) {
      s.output_size = entry.at("output_size").int_list("output_size", 2, 1, kMaxSide);
    } else if (s.op == Op::Flatten) {
      s.start_dim = entry.at("start_dim").as_int("start_dim", 1, 3);
    } else if (s.op == Op::Affine) {
      s.weight = tensor(tensors, entry.at("weight").as_string("weight"));
      s.bias = tensor(tensors, entry.at("bias").as_string("bias"));
      if (s.weight.dim() != 1 || s.bias.dim() != 1 || s.bias.size(0) != s.weight.size(0)) {
        throw BundleError("bundle plan: an affine step needs per-channel scale and shift of one length");
      }
    } else if (s.op == Op::Activation) {
      const auto kind = activations().find(entry.at("kind").as_string("kind"));
      if (kind == activations().end()) throw BundleError("bundle plan: an activation of unknown kind");
      s.activation = kind->second;
      s.alpha = entry.at("alpha").as_number("alpha");
      if (!(s.alpha >= -1000 && s.alpha <= 1000)) throw BundleError("bundle plan: an activation alpha outside [-1000, 1000]");
    }
    impl.num_values = std::max(impl.num_values, s.output + 1);
    s.label = entry.at("op").as_string("op") + "." + std::to_string(impl.steps.size());
    if (const Json* w = entry.find("weight")) {  // "target.<module>.weight"
      const std::string& name = w->as_string("weight");
      const size_t first = name.find('.'), last = name.rfind('.');
      if (first != std::string::npos && last > first) s.label = name.substr(first + 1, last - first - 1);
    }
    impl.steps.push_back(std::move(s));
  }
  if (impl.steps.empty()) throw BundleError("bundle plan: no steps");
  impl.output = plan.at("output").as_int("output", 0, kMaxValues - 1);
  if (!defined.count(impl.output)) throw BundleError("bundle plan: the output value is never made");
  for (const int64_t v : plan.at("chain").int_list("chain", 0, 0, kMaxValues - 1)) impl.chain.insert(v);
  for (const int64_t v : plan.at("saved").int_list("saved", 0, 0, kMaxValues - 1)) {
    if (!defined.count(v)) throw BundleError("bundle plan: a saved value is never made");
    impl.saved.insert(v);
  }
  impl.chain_relu = plan.at("chain_relu").as_bool("chain_relu");
  std::vector<bool> seen(layers, false);
  for (const auto& s : impl.steps) {
    if (s.pathway >= 0) seen[s.pathway] = true;
  }
  if (std::find(seen.begin(), seen.end(), false) != seen.end()) {
    throw BundleError("bundle plan: a pathway layer has no step");
  }
  impl.plain_last_read.assign(impl.num_values, -1);
  impl.pathway_last_read.assign(impl.num_values, -1);
  for (size_t i = 0; i < impl.steps.size(); ++i) {
    for (const int64_t v : impl.steps[i].inputs) {
      impl.plain_last_read[v] = static_cast<int64_t>(i);
      if (impl.steps[i].pathway_pass) impl.pathway_last_read[v] = static_cast<int64_t>(i);
    }
  }
  find_joint_tail(impl);
}

void load_generator(ExplainSession::Impl& impl, const Json& gen, const std::map<std::string, at::Tensor>& tensors) {
  const int64_t layers = static_cast<int64_t>(impl.info.channels.size());
  GeneratorWeights& w = impl.gen;
  if (gen.at("layers").as_int("generator layers", 1, 1024) != layers) {
    throw BundleError("bundle: the generator's layer count differs from the pathway spec's");
  }
  for (const auto& size : gen.at("pool_sizes").as_array("pool_sizes")) {
    w.pool_sizes.push_back(size.int_list("pool_sizes", 2, 1, 1 << 16));
  }
  w.repeats = gen.at("repeats").int_list("repeats", layers, 0, 64);
  if (static_cast<int64_t>(w.pool_sizes.size()) != layers) throw BundleError("bundle: pool_sizes per layer");
  // every tensor by the name the writer recorded (names are declared in bundle.schema.json, not here)
  const Json& names = gen.at("tensors");
  const auto& stems = names.at("stem").as_array("stem");
  const auto& head_names = names.at("head").as_array("head");
  if (static_cast<int64_t>(stems.size()) != layers || static_cast<int64_t>(head_names.size()) != layers) {
    throw BundleError("bundle generator: stem and head tensors must be named for every layer");
  }
  for (const auto& stem : stems) {
    const auto pair = named(tensors, stem, 2, "stem");
    impl.stems.emplace_back(pair[0], std::vector<int64_t>{1, 1}, std::vector<int64_t>{0, 0});
    w.stem_weights.push_back(pair[0]);
    w.stem_biases.push_back(pair[1]);
  }
  const auto shared = named(tensors, names.at("shared"), 2, "shared");
  impl.shared = PackedConv(shared[0], {2, 2}, {1, 1});
  w.shared_weight = shared[0];
  w.shared_bias = shared[1];
  w.cls = tensor(tensors, names.at("cls").as_string("cls"));
  w.tail = named(tensors, names.at("tail"), 5, "tail");
  const int64_t depth = gen.at("depth").as_int("depth", 0, 64);
  const auto& encoder = names.at("encoder").as_array("encoder");
  if (static_cast<int64_t>(encoder.size()) != depth) throw BundleError("bundle generator: encoder tensors per layer");
  for (const auto& layer : encoder) w.encoder.push_back(named(tensors, layer, 12, "encoder"));
  w.rpd = named(tensors, names.at("rpd"), 6, "rpd");
  for (const auto& head : head_names) {
    for (auto& t : named(tensors, head, 4, "head")) w.heads.push_back(std::move(t));
  }
  w.attention_heads = gen.at("heads").as_int("heads", 1, 4096);
  w.tail_eps = gen.at("tail_eps").as_number("tail_eps");
  w.encoder_eps = gen.at("encoder_eps").as_number("encoder_eps");
  w.rpd_eps = gen.at("rpd_eps").as_number("rpd_eps");
  for (const double eps : {w.tail_eps, w.encoder_eps, w.rpd_eps}) {
    if (!(eps > 0 && eps < 1)) throw BundleError("bundle generator: a LayerNorm eps outside (0, 1)");
  }
  // Multiply-adds per image: the convs over their pooled maps, every matrix once per token.
  int64_t work = 0, matrices = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t area = w.pool_sizes[l][0] * w.pool_sizes[l][1];
    work += area * impl.stems[l].weight().numel() + w.repeats[l] * area / 4 * impl.shared.weight().numel();
  }
  for (const auto* group : {&w.tail, &w.rpd, &w.heads}) {
    for (const auto& t : *group) matrices += t.dim() == 2 ? t.numel() : 0;
  }
  for (const auto& layer : w.encoder) {
    for (const auto& t : layer) matrices += t.dim() == 2 ? t.numel() : 0;
  }
  impl.generator_work = work + (layers + 1) * matrices;
}

void load_info(SessionInfo& info, const Json& meta) {
  info.arch = meta.at("arch").as_string("arch");
  for (const auto& c : meta.at("classes").as_array("classes")) info.classes.push_back(c.as_string("classes"));
  info.input_shape = meta.at("input_shape").int_list("input_shape", 3, 1, kMaxSide);
  if (info.input_shape[0] > kMaxImageChannels) throw BundleError("bundle: more than 16 input channels");
  for (const auto& layer : meta.at("pathway_spec").at("layers").as_array("pathway_spec.layers")) {
    const auto& fields = layer.as_array("a pathway_spec layer ([name, channels, height, width])");
    if (fields.size() != 4) throw BundleError("bundle: a pathway_spec layer must be [name, channels, height, width]");
    info.channels.push_back(fields[1].as_int("layer channels", 1, 1 << 20));
  }
  if (info.channels.empty()) throw BundleError("bundle: the pathway spec has no layers");
  for (const auto& v : meta.at("mean").as_array("mean")) info.mean.push_back(v.as_number("mean"));
  for (const auto& v : meta.at("std").as_array("std")) info.std.push_back(v.as_number("std"));
  const size_t in_channels = static_cast<size_t>(info.input_shape[0]);
  if (info.mean.size() != in_channels || info.std.size() != in_channels ||
      std::any_of(info.std.begin(), info.std.end(), [](double v) { return !(v > 0); })) {
    throw BundleError("bundle: mean and std need one value per input channel, std > 0");
  }
  info.target_fingerprint = meta.at("target_fingerprint").as_string("target_fingerprint");
  if (meta.at("threshold").as_number("threshold") != 0.5) throw BundleError("bundle: the session thresholds at 0.5");
}

}  // namespace

ExplainSession::ExplainSession(const std::string& bundle_path, int num_threads)
    : ExplainSession(Buffer{read_bundle(bundle_path), bundle_path}, num_threads) {}

ExplainSession::ExplainSession(Buffer bundle, int num_threads) : impl_(std::make_unique<Impl>()) {
  const auto start = Clock::now();
  if (num_threads < 0) throw InputError("num_threads must be >= 0 (0: the process default)");
  const std::string& data = bundle.data;
  const std::string& bundle_path = bundle.name;
  if (data.size() < 8) throw BundleError(bundle_path + " is too short to be a bundle (" + std::to_string(data.size()) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(data[i]);
  if (header_len > kMaxHeaderBytes || header_len > data.size() - 8) {
    throw BundleError(bundle_path + " is not a bundle: its header length " + std::to_string(header_len) +
                      " exceeds the file or 64 MiB");
  }
  try {
    const Json header = Json::parse(std::string_view(data).substr(8, header_len));
    const Json* metadata = header.find("__metadata__");
    const Json* text = metadata != nullptr ? metadata->find("pathrt") : nullptr;
    if (text == nullptr) throw BundleError("it is a safetensors file without a pathrt plan; write bundles with `pathrt bundle`");
    const Json meta = Json::parse(text->as_string("__metadata__.pathrt"));
    if (meta.at("format").as_string("format") != "pathrt.bundle") throw BundleError("its format is not pathrt.bundle");
    const int64_t version = meta.at("format_version").as_int("format_version", 0, 1 << 20);
    if (version != kBundleVersion) {
      throw BundleError("it has bundle format_version " + std::to_string(version) + "; this pathrt reads version " +
                        std::to_string(kBundleVersion) + ": write it again with `pathrt bundle`");
    }
    impl_->info.num_threads = num_threads;
    load_info(impl_->info, meta);
    impl_->policy = parse_policy(meta.at("conv_strategies"));
    const auto tensors = read_tensors(data, header, 8 + header_len);
    const std::string recorded = meta.at("tensors_fingerprint").as_string("tensors_fingerprint");
    const auto digest_start = Clock::now();
    const std::string actual = tensors_fingerprint(tensors);
    impl_->info.digest_ms = elapsed_ms(digest_start, Clock::now());
    if (actual != recorded) {
      throw BundleError("its tensors were modified after it was written (digest " + actual.substr(0, 12) +
                        "…, the bundle records " + recorded.substr(0, 12) + "…); write it again with `pathrt bundle`");
    }
    load_plan(*impl_, meta.at("plan"), tensors);
    load_generator(*impl_, meta.at("generator"), tensors);
  } catch (const BundleError& e) {
    throw BundleError("cannot load bundle " + bundle_path + ": " + e.what());
  }
  // A dry run on one zero image checks every weight shape against the plan before the first call.
  try {
    at::init_num_threads();
    const auto& shape = impl_->info.input_shape;
    impl_->run(at::zeros({1, shape[0], shape[1], shape[2]}));
  } catch (const c10::Error& e) {
    throw BundleError("bundle " + bundle_path + " is inconsistent: its tensors do not fit its plan (" +
                      e.what_without_backtrace() + ")");
  }
  try {
    impl_->small.emplace(impl_->gen);
  } catch (const BundleError& e) {
    throw BundleError("cannot load bundle " + bundle_path + ": " + e.what());
  }
  impl_->info.load_ms = elapsed_ms(start, Clock::now());
}

ExplainSession::~ExplainSession() = default;

const SessionInfo& ExplainSession::info() const { return impl_->info; }

BundleFormat bundle_format() {
  BundleFormat format;
  format.version = kBundleVersion;
  for (const auto& [name, op] : plan_ops()) format.ops.push_back(name);
  for (const auto& [name, strategy] : strategies()) format.strategies.push_back(name);
  for (const auto& [name, measure] : measures()) format.measures.push_back(name);
  return format;
}

namespace {

// torch's name of a dtype, as the Python API's messages print it ("torch.uint8").
std::string dtype_name(at::ScalarType type) {
  static const std::map<at::ScalarType, const char*> names = {
      {at::kByte, "uint8"}, {at::kChar, "int8"}, {at::kShort, "int16"}, {at::kInt, "int32"},
      {at::kLong, "int64"}, {at::kBool, "bool"}, {at::kFloat, "float32"}, {at::kDouble, "float64"},
      {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"}};
  const auto it = names.find(type);
  return "torch." + (it != names.end() ? std::string(it->second) : std::string(c10::toString(type)));
}

// Whether every value is finite: x * 0 is 0 for a finite x and NaN for an Inf or NaN, so one vectorized
// sum answers for a contiguous float32 batch (~1 us at batch 1 where isfinite + all + item took ~15);
// other layouts and dtypes answer through ATen.
bool all_finite(const at::Tensor& images) {
  if (images.scalar_type() != at::kFloat || !images.is_contiguous()) return at::isfinite(images).all().item<bool>();
  const float* p = images.data_ptr<float>();
  float zero = 0.0f;
  const int64_t n = images.numel();
#pragma omp simd reduction(+ : zero)
  for (int64_t i = 0; i < n; ++i) zero += p[i] * 0.0f;
  return zero == 0.0f;
}

// The checks of the Python API (Explainer.batches, Explainer.chunks, pathway.check_images), in its
// order and with its messages, so both APIs refuse a bad batch alike.
void check_images(const at::Tensor& images, const std::vector<int64_t>& shape) {
  if (!images.defined()) throw InputError("images is an undefined tensor");
  if (images.dim() != 4) throw InputError("images must be a (N, C, H, W) tensor, got " + shape_repr(images.sizes()));
  if (images.size(0) == 0) throw InputError("images is an empty batch (N = 0)");
  if (images.device().type() != at::kCPU) {
    throw InputError("images are on " + images.device().str() + ", the model on cpu; move them with .to('cpu')");
  }
  if (images.size(1) != shape[0] || images.size(2) != shape[1] || images.size(3) != shape[2]) {
    std::string advice = "resize them to " + std::to_string(shape[1]) + "x" + std::to_string(shape[2]) +
                         ", the target's input size";
    if (images.size(1) == shape[1] && images.size(2) == shape[2] && images.size(3) == shape[0]) {
      advice = "they look channels-last (N, H, W, C): pass images.permute(0, 3, 1, 2)";
    } else if (images.size(1) != shape[0]) {
      advice = "they have " + std::to_string(images.size(1)) + (images.size(1) == 1 ? " channel" : " channels") +
               ", the target takes " +
               std::to_string(shape[0]) +
               (images.size(1) == 1 && shape[0] == 3 ? " (grayscale to RGB: images.expand(-1, 3, -1, -1))" : "");
    }
    throw InputError("images must be (N, " + std::to_string(shape[0]) + ", " + std::to_string(shape[1]) + ", " +
                     std::to_string(shape[2]) + "), got shape " + shape_repr(images.sizes()) + "; " + advice);
  }
  if (!at::isFloatingType(images.scalar_type())) {
    throw InputError("images are " + dtype_name(images.scalar_type()) + "; pathrt explains floating-point images "
                     "normalized with target.preprocess (e.g. target.preprocess(uint8_images.float() / 255))");
  }
  if (all_finite(images)) return;
  const auto finite = at::isfinite(images).flatten(1).all(1);
  if (!finite.all().item<bool>()) {
    const auto bad = at::nonzero(finite.logical_not()).flatten();
    throw InputError(std::to_string(bad.size(0)) + " of " + std::to_string(images.size(0)) + " images contain NaN or "
                     "Inf values (first: image " + std::to_string(bad[0].item<int64_t>()) + "); drop or repair them "
                     "before explaining");
  }
}

}  // namespace

ExplainResult ExplainSession::explain(const at::Tensor& images) const {
  check_images(images, impl_->info.input_shape);
  at::init_num_threads();  // this thread's OpenMP and MKL counts from torch's setting, once per call
  ThreadLimit limit(impl_->info.num_threads);
  at::AutoGradMode no_grad(false);
  const BufferScope buffers;  // large activations reuse the blocks of the last calls (pathrt/buffer_pool.h)
  return impl_->run(images.scalar_type() == at::kFloat ? images : images.to(at::kFloat));
}

}  // namespace pathrt
