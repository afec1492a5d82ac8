// Argument checks shared by the CPU and CUDA registrations of the mask ops. TORCH_CHECK_VALUE /
// TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

namespace pathrt {

inline void check_masks(const at::Tensor& masks) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kByte,
                   "pathrt::pack_masks: masks must be bool or uint8, got ", masks.scalar_type(),
                   "; convert with masks.bool()");
  TORCH_CHECK_VALUE(masks.dim() == 2, "pathrt::pack_masks: masks must be 2-D (N, K), got shape ",
                    masks.sizes(), "; flatten the per-layer masks with torch.cat(dim=1)");
}

inline void check_packed_pair(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK_TYPE(a.scalar_type() == at::kByte && b.scalar_type() == at::kByte,
                   "pathrt::pairwise_iou: packed masks must be uint8 (from pathrt::pack_masks), got ",
                   a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2,
                    "pathrt::pairwise_iou: packed masks must be 2-D (N, B) and (M, B), got shapes ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE(a.size(1) == b.size(1),
                    "pathrt::pairwise_iou: packed masks must have the same number of bytes per row, "
                    "got ", a.size(1), " and ", b.size(1), "; pack masks of the same pathway spec");
  TORCH_CHECK_VALUE(a.device() == b.device(), "pathrt::pairwise_iou: a and b are on different devices (",
                    a.device(), ", ", b.device(), ")");
}

}  // namespace pathrt
