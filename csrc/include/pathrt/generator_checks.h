// Argument checks of the fused generator ops, shared by the CPU and CUDA registrations (the Python
// fakes in pathrt/runtime/generator_ops.py check the same). ValueError / TypeError in Python.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pathrt {

inline void check_param(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                        const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "pathrt::", op, ": ", name, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, "pathrt::", op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, "pathrt::", op, ": ", name, " is on ", t.device(), ", expected ", device);
}

inline void check_rfe_tail(at::TensorList maps, const at::Tensor& cls, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                           const at::Tensor& position) {
  TORCH_CHECK_VALUE(!maps.empty(), "pathrt::rfe_tail: needs at least one layer map");
  TORCH_CHECK_VALUE(weight.dim() == 2, "pathrt::rfe_tail: weight must be 2-D (d, d_r), got shape ", weight.sizes());
  const int64_t d = weight.size(0), d_r = weight.size(1), n = maps[0].dim() == 4 ? maps[0].size(0) : -1;
  const auto device = maps[0].device();
  for (size_t i = 0; i < maps.size(); ++i) {
    const auto& m = maps[i];
    TORCH_CHECK_TYPE(m.scalar_type() == at::kFloat, "pathrt::rfe_tail: maps[", i, "] must be float32, got ",
                     m.scalar_type());
    TORCH_CHECK_VALUE(m.dim() == 4 && m.size(0) == n && m.size(1) == d_r && m.size(2) * m.size(3) > 0,
                      "pathrt::rfe_tail: maps[", i, "] must be (N=", n, ", d_r=", d_r,
                      ", H>0, W>0) like maps[0], got ", m.sizes());
    TORCH_CHECK_VALUE(m.device() == device, "pathrt::rfe_tail: all maps must be on one device");
  }
  check_param("rfe_tail", "cls", cls.reshape({-1}), {d}, device);
  check_param("rfe_tail", "weight", weight, {d, d_r}, device);
  check_param("rfe_tail", "bias", bias, {d}, device);
  check_param("rfe_tail", "norm_weight", norm_weight, {d}, device);
  check_param("rfe_tail", "norm_bias", norm_bias, {d}, device);
  check_param("rfe_tail", "position", position, {static_cast<int64_t>(maps.size()), d}, device);
}

// Order of params: generator_ops.PDN_PARAMS.
inline void check_pdn_encoder_layer(const at::Tensor& x, at::TensorList params, int64_t heads) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "pathrt::pdn_encoder_layer: x must be float32, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(1) > 0, "pathrt::pdn_encoder_layer: x must be (N, T>0, d), got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(params.size() == 12, "pathrt::pdn_encoder_layer: needs 12 parameters (norm1, in_proj, "
                    "out_proj, norm2, linear1, linear2: weight and bias each), got ", params.size());
  const int64_t d = x.size(2);
  TORCH_CHECK_VALUE(heads >= 1 && d % heads == 0, "pathrt::pdn_encoder_layer: heads must divide d = ", d, ", got ",
                    heads);
  const int64_t ff = params[8].dim() == 2 ? params[8].size(0) : -1;
  const std::vector<std::vector<int64_t>> shapes = {{d}, {d}, {3 * d, d}, {3 * d}, {d, d}, {d}, {d}, {d},
                                                    {ff, d}, {ff}, {d, ff}, {d}};
  const char* names[] = {"norm1.weight", "norm1.bias", "in_proj_weight", "in_proj_bias", "out_proj.weight",
                         "out_proj.bias", "norm2.weight", "norm2.bias", "linear1.weight", "linear1.bias",
                         "linear2.weight", "linear2.bias"};
  for (size_t i = 0; i < 12; ++i) check_param("pdn_encoder_layer", names[i], params[i], shapes[i], x.device());
}

// Returns the channel count of every layer. Order of params: generator_ops.RPD_PARAMS; heads: 4 per layer.
inline std::vector<int64_t> check_rpd_decode(const at::Tensor& z, at::TensorList params, at::TensorList heads) {
  TORCH_CHECK_TYPE(z.scalar_type() == at::kFloat, "pathrt::rpd_decode: z must be float32, got ", z.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 3 && z.size(1) >= 2, "pathrt::rpd_decode: z must be (N, L+1, d) with L >= 1 (CLS "
                    "first), got shape ", z.sizes());
  const int64_t layers = z.size(1) - 1, d = z.size(2);
  TORCH_CHECK_VALUE(params.size() == 6, "pathrt::rpd_decode: needs 6 parameters (norm weight/bias, weight_ih, "
                    "weight_hh, bias_ih, bias_hh), got ", params.size());
  const std::vector<std::vector<int64_t>> shapes = {{d}, {d}, {3 * d, d}, {3 * d, d}, {3 * d}, {3 * d}};
  const char* names[] = {"norm.weight", "norm.bias", "weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  for (size_t i = 0; i < 6; ++i) check_param("rpd_decode", names[i], params[i], shapes[i], z.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(heads.size()) == 4 * layers, "pathrt::rpd_decode: needs 4 head tensors "
                    "per layer for ", layers, " layers, got ", heads.size());
  std::vector<int64_t> channels;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t c = heads[4 * l + 2].dim() == 2 ? heads[4 * l + 2].size(0) : 0;
    TORCH_CHECK_VALUE(c > 0, "pathrt::rpd_decode: head ", l, " has no output channels");
    check_param("rpd_decode", "head weight 1", heads[4 * l], {d, d}, z.device());
    check_param("rpd_decode", "head bias 1", heads[4 * l + 1], {d}, z.device());
    check_param("rpd_decode", "head weight 2", heads[4 * l + 2], {c, d}, z.device());
    check_param("rpd_decode", "head bias 2", heads[4 * l + 3], {c}, z.device());
    channels.push_back(c);
  }
  return channels;
}

}  // namespace pathrt
