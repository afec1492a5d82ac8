// Argument checks of the fused deployed-path ops (daq_threshold_pack, masked_bias_relu,
// pathway_conv2d), shared by the CPU and CUDA registrations. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE
// surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

#include "pathrt/epilogue.h"

namespace pathrt {

// A 4-D tensor is treated as channels-last when it is contiguous in that format and not in NCHW
// (tensors that are both, e.g. H = W = 1, count as NCHW). The Python fakes use the same rule.
inline bool channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat dense_format(const at::Tensor& x) {
  return channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat,
                   "pathrt::daq_threshold_pack: logits must be float32, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() == 2, "pathrt::daq_threshold_pack: logits must be 2-D (N, K), got shape ",
                    logits.sizes(), "; concatenate the per-layer head logits with torch.cat(dim=1)");
}

inline void check_same_device(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& t,
                              const char* name) {
  TORCH_CHECK_VALUE(!t.has_value() || t->device() == x.device(), op, ": ", name, " is on ",
                    t.has_value() ? t->device() : x.device(), " but x is on ", x.device());
}

inline void check_channel_mask(const char* op, const at::Tensor& mask, int64_t n, int64_t c,
                               const char* name, bool float_allowed) {
  const bool ok_type = mask.scalar_type() == at::kBool || (float_allowed && mask.scalar_type() == at::kFloat);
  TORCH_CHECK_TYPE(ok_type, op, ": ", name, " must be bool", float_allowed ? " or float32" : "", ", got ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == n && mask.size(1) == c, op, ": ", name,
                    " must have shape (", n, ", ", c, ") (one row per sample), got ", mask.sizes());
}

inline void check_masked_bias_relu(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                   const at::Tensor& mask, const c10::optional<at::Tensor>& fill = c10::nullopt) {
  constexpr const char* op = "pathrt::masked_bias_relu";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  check_channel_mask(op, mask, x.size(0), x.size(1), "mask", true);
  check_same_device(op, x, mask, "mask");
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, op, ": bias must be float32, got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == x.size(1), op, ": bias must have shape (",
                      x.size(1), "), got ", bias->sizes());
    check_same_device(op, x, bias, "bias");
  }
  if (fill.has_value()) {
    TORCH_CHECK_VALUE(fill->scalar_type() == at::kFloat && fill->dim() == 1 && fill->size(0) == x.size(1), op,
                      ": fill must be float32 of shape (", x.size(1), ",), got ", fill->scalar_type(), " ",
                      fill->sizes());
    check_same_device(op, x, fill, "fill");
  }
}

// Shapes of one pathway_conv2d call, checked.
struct ConvGeometry {
  int64_t n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, ho, wo;
};

inline ConvGeometry check_pathway_conv2d(const at::Tensor& x, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const c10::optional<at::Tensor>& residual,
                                         const c10::optional<at::Tensor>& in_mask,
                                         const c10::optional<at::Tensor>& out_mask, at::IntArrayRef stride,
                                         at::IntArrayRef padding) {
  constexpr const char* op = "pathrt::pathway_conv2d";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, op,
                   ": x and weight must be float32, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4 && weight.dim() == 4, op, ": x (N, C_in, H, W) and weight (C_out, C_in, kH, kW) "
                    "must be 4-D, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight expects ", weight.size(1),
                    " input channels, x has ", x.size(1));
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && stride[0] > 0 && stride[1] > 0 &&
                    padding[0] >= 0 && padding[1] >= 0, op, ": stride must be 2 positive ints and padding "
                    "2 non-negative ints, got ", stride, " and ", padding);
  ConvGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(2), weight.size(3),
                 stride[0], stride[1], padding[0], padding[1], 0, 0};
  g.ho = conv_output_size(g.h, g.kh, g.sh, g.ph);
  g.wo = conv_output_size(g.w, g.kw, g.sw, g.pw);
  TORCH_CHECK_VALUE(g.ho > 0 && g.wo > 0, op, ": the kernel ", weight.sizes(), " does not fit the padded input ",
                    x.sizes());
  check_same_device(op, x, weight, "weight");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == g.c_out, op,
                      ": bias must be float32 of shape (", g.c_out, "), got ", bias->scalar_type(), " ",
                      bias->sizes());
    check_same_device(op, x, bias, "bias");
  }
  if (residual.has_value()) {
    TORCH_CHECK_VALUE(residual->scalar_type() == at::kFloat && residual->sizes() ==
                      at::IntArrayRef({g.n, g.c_out, g.ho, g.wo}), op, ": residual must be float32 of shape (",
                      g.n, ", ", g.c_out, ", ", g.ho, ", ", g.wo, "), got ", residual->scalar_type(), " ",
                      residual->sizes());
    check_same_device(op, x, residual, "residual");
  }
  if (in_mask.has_value()) {
    check_channel_mask(op, *in_mask, g.n, g.c_in, "in_mask", false);
    check_same_device(op, x, in_mask, "in_mask");
  }
  if (out_mask.has_value()) {
    check_channel_mask(op, *out_mask, g.n, g.c_out, "out_mask", false);
    check_same_device(op, x, out_mask, "out_mask");
  }
  return g;
}

}  // namespace pathrt
