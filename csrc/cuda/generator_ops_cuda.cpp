// Registers the CUDA kernels of the fused generator ops (schemas: pathrt/runtime/ops.py; the same
// steps as csrc/cpu/generator_ops.cpp): GEMMs through ATen (cuBLAS), the rest in
// generator_kernels.cu with the element math of pathrt/generator_math.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "pathrt/cuda_launchers.h"
#include "pathrt/cuda_ops.h"
#include "pathrt/generator_checks.h"

namespace pathrt {
namespace {

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.contiguous());
  return out;
}

at::Tensor rfe_tail_cuda(at::TensorList maps, const at::Tensor& cls, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& norm_weight, const at::Tensor& norm_bias, const at::Tensor& position,
                         double eps) {
  check_rfe_tail(maps, cls, weight, bias, norm_weight, norm_bias, position);
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t layers = static_cast<int64_t>(maps.size()), n = maps[0].size(0), d = weight.size(0),
                d_r = weight.size(1);
  auto pooled = at::empty({n, layers, d_r}, weight.options());
  for (int64_t l = 0; l < layers; ++l) {
    const auto m = maps[l].contiguous(at::MemoryFormat::ChannelsLast);
    C10_CUDA_CHECK(launch_mean_pool_cl(m.data_ptr<float>(), pooled.data_ptr<float>() + l * d_r, n,
                                       m.size(2) * m.size(3), d_r, layers * d_r, stream));
  }
  auto tokens = at::addmm(bias, pooled.view({n * layers, d_r}), weight.t());
  auto normed = at::empty_like(tokens);
  const auto nw = norm_weight.contiguous(), nb = norm_bias.contiguous(), pc = position.contiguous();
  C10_CUDA_CHECK(launch_layer_norm_rows(tokens.data_ptr<float>(), nullptr, nw.data_ptr<float>(), nb.data_ptr<float>(),
                                        pc.data_ptr<float>(), layers, static_cast<float>(eps), n * layers, d,
                                        normed.data_ptr<float>(), stream));
  return at::cat({cls.reshape({1, 1, d}).expand({n, 1, d}), normed.view({n, layers, d})}, 1);
}

at::Tensor pdn_encoder_layer_cuda(const at::Tensor& x, at::TensorList params, int64_t heads, double eps) {
  check_pdn_encoder_layer(x, params, heads);
  TORCH_CHECK_VALUE(x.size(1) <= kMaxAttentionTokens, "pathrt::pdn_encoder_layer: the CUDA kernel takes at most ",
                    kMaxAttentionTokens, " tokens, got ", x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), rows = n * t;
  const float e = static_cast<float>(eps);
  const auto p = contiguous_all(params);
  auto residual = x.contiguous().view({rows, d});  // read only: LN1 gets no input bias
  auto h = at::empty({rows, d}, x.options());
  C10_CUDA_CHECK(launch_layer_norm_rows(residual.data_ptr<float>(), nullptr, p[0].data_ptr<float>(),
                                        p[1].data_ptr<float>(), nullptr, 1, e, rows, d, h.data_ptr<float>(), stream));
  const auto qkv = at::addmm(p[3], h, p[2].t());
  auto attn = at::empty({rows, d}, x.options());
  C10_CUDA_CHECK(launch_attention(qkv.data_ptr<float>(), attn.data_ptr<float>(), n, t, d, heads, stream));
  auto x1 = at::addmm(residual, attn, p[4].t());
  C10_CUDA_CHECK(launch_layer_norm_rows(x1.data_ptr<float>(), p[5].data_ptr<float>(), p[6].data_ptr<float>(),
                                        p[7].data_ptr<float>(), nullptr, 1, e, rows, d, h.data_ptr<float>(), stream));
  auto hidden = at::mm(h, p[8].t());
  C10_CUDA_CHECK(launch_bias_act(hidden.data_ptr<float>(), p[9].data_ptr<float>(), rows, hidden.size(1), true, stream));
  auto y = at::addmm(x1, hidden, p[10].t());
  C10_CUDA_CHECK(launch_bias_act(y.data_ptr<float>(), p[11].data_ptr<float>(), rows, d, false, stream));
  return y.view({n, t, d});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rpd_decode_cuda(const at::Tensor& z,
                                                                                       at::TensorList params,
                                                                                       at::TensorList heads,
                                                                                       double eps) {
  check_rpd_decode(z, params, heads);
  const c10::cuda::CUDAGuard guard(z.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = z.size(0), layers = z.size(1) - 1, d = z.size(2);
  const auto p = contiguous_all(params);
  const auto h = contiguous_all(heads);
  auto zc = z.contiguous();  // read only: the final LN gets no input bias
  auto zn = at::empty_like(zc);
  C10_CUDA_CHECK(launch_layer_norm_rows(zc.data_ptr<float>(), nullptr, p[0].data_ptr<float>(), p[1].data_ptr<float>(),
                                        nullptr, 1, static_cast<float>(eps), n * (layers + 1), d,
                                        zn.data_ptr<float>(), stream));
  const auto gi = at::addmm(p[4], zn.narrow(1, 1, layers).reshape({n * layers, d}), p[2].t()).contiguous();
  auto state = zn.select(1, 0).contiguous();
  std::vector<at::Tensor> logits(layers);
  for (int64_t l = layers - 1; l >= 0; --l) {
    const auto gh = at::addmm(p[5], state, p[3].t());
    auto next = at::empty({n, d}, z.options());
    C10_CUDA_CHECK(launch_gru(gi.data_ptr<float>(), gh.data_ptr<float>(), state.data_ptr<float>(),
                              next.data_ptr<float>(), n, layers, l, d, stream));
    state = next;
    auto hidden = at::mm(state, h[4 * l].t());
    C10_CUDA_CHECK(launch_bias_act(hidden.data_ptr<float>(), h[4 * l + 1].data_ptr<float>(), n, d, true, stream));
    logits[l] = at::addmm(h[4 * l + 3], hidden, h[4 * l + 2].t());
  }
  auto head = at::cat(logits, 1);
  auto [scores, masks, packed, counts] = daq_threshold_pack_cuda(head);
  return {head, scores, masks, packed, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(pathrt, CUDA, m) {
  m.impl("rfe_tail", &rfe_tail_cuda);
  m.impl("pdn_encoder_layer", &pdn_encoder_layer_cuda);
  m.impl("rpd_decode", &rpd_decode_cuda);
}

}  // namespace pathrt
