// Registers the CUDA kernels of the fused deployed-path ops (schemas: pathrt/runtime/ops.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "pathrt/cuda_launchers.h"
#include "pathrt/cuda_ops.h"
#include "pathrt/fused_checks.h"

namespace pathrt {
namespace {

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor contiguous_or_empty(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> daq_threshold_pack_cuda(const at::Tensor& logits) {
  check_logits(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto lc = logits.contiguous();
  const int64_t n = lc.size(0), k = lc.size(1);
  auto scores = at::empty({n, k}, lc.options());
  auto masks = at::empty({n, k}, lc.options().dtype(at::kBool));
  auto packed = at::empty({n, packed_bytes(k)}, lc.options().dtype(at::kByte));
  auto counts = at::empty({n}, lc.options().dtype(at::kLong));
  C10_CUDA_CHECK(launch_daq_threshold_pack(lc.data_ptr<float>(), scores.data_ptr<float>(), masks.data_ptr<bool>(),
                                           packed.data_ptr<uint8_t>(),
                                           reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), n, k,
                                           c10::cuda::getCurrentCUDAStream()));
  return {scores, masks, packed, counts};
}

namespace {

void run_masked_bias_relu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                          const c10::optional<at::Tensor>& fill, at::Tensor& out) {
  const auto m = mask.to(at::kFloat).contiguous();
  const auto b = contiguous_or_empty(bias);
  const auto f = contiguous_or_empty(fill);
  C10_CUDA_CHECK(launch_masked_bias_relu(x.data_ptr<float>(), data_or_null<float>(b), m.data_ptr<float>(),
                                         data_or_null<float>(f), out.data_ptr<float>(), x.size(0), x.size(1),
                                         x.size(2) * x.size(3), c10::cuda::getCurrentCUDAStream()));
}

at::Tensor masked_bias_relu_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                 const c10::optional<at::Tensor>& fill) {
  check_masked_bias_relu(x, bias, mask, fill);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  run_masked_bias_relu(xc, bias, mask, fill, out);
  return out.contiguous(dense_format(x));  // the kernel works in NCHW; keep x's layout as the CPU op does
}

void masked_bias_relu_inplace_cuda(at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                   const c10::optional<at::Tensor>& fill) {
  check_masked_bias_relu(x, bias, mask, fill);
  TORCH_CHECK_VALUE(x.is_contiguous(), "pathrt::masked_bias_relu_: x must be NCHW-contiguous for the in-place "
                    "variant on CUDA; use pathrt::masked_bias_relu");
  const c10::cuda::CUDAGuard guard(x.device());
  run_masked_bias_relu(x, bias, mask, fill, x);
}

at::Tensor pathway_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_mask,
                               const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool relu) {
  const ConvGeometry g = check_pathway_conv2d(x, weight, bias, residual, in_mask, out_mask, stride, padding);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous(), wc = weight.contiguous();
  const auto bc = contiguous_or_empty(bias), rc = contiguous_or_empty(residual);
  const auto im = contiguous_or_empty(in_mask), om = contiguous_or_empty(out_mask);
  auto out = at::empty({g.n, g.c_out, g.ho, g.wo}, xc.options());
  const ConvShape shape{g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.ho, g.wo};
  C10_CUDA_CHECK(launch_pathway_conv2d(xc.data_ptr<float>(), wc.data_ptr<float>(), data_or_null<float>(bc),
                                       data_or_null<float>(rc), data_or_null<bool>(im), data_or_null<bool>(om),
                                       out.data_ptr<float>(), shape, relu, c10::cuda::getCurrentCUDAStream()));
  return out.contiguous(dense_format(x));
}

}  // namespace

TORCH_LIBRARY_IMPL(pathrt, CUDA, m) {
  m.impl("daq_threshold_pack", &daq_threshold_pack_cuda);
  m.impl("masked_bias_relu", &masked_bias_relu_cuda);
  m.impl("masked_bias_relu_", &masked_bias_relu_inplace_cuda);
  m.impl("pathway_conv2d", &pathway_conv2d_cuda);
}

}  // namespace pathrt
