// Registers the CUDA kernels of the mask ops with the dispatcher (schemas: pathrt/runtime/ops.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pathrt/bitops.h"
#include "pathrt/cuda_launchers.h"
#include "pathrt/mask_checks.h"

namespace pathrt {
namespace {

at::Tensor pack_masks_cuda(const at::Tensor& masks) {
  check_masks(masks);
  const c10::cuda::CUDAGuard guard(masks.device());
  const auto bytes = masks.contiguous().view(at::kByte);
  const int64_t n = bytes.size(0), k = bytes.size(1);
  auto out = at::empty({n, packed_bytes(k)}, masks.options().dtype(at::kByte));
  C10_CUDA_CHECK(launch_pack_masks(bytes.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), n, k,
                                   c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor pairwise_iou_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_packed_pair(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const auto ac = a.contiguous(), bc = b.contiguous();
  const int64_t n = ac.size(0), m = bc.size(0);
  auto out = at::empty({n, m}, a.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_pairwise_iou(ac.data_ptr<uint8_t>(), bc.data_ptr<uint8_t>(),
                                     out.data_ptr<float>(), n, m, ac.size(1),
                                     c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pathrt, CUDA, m) {
  m.impl("pack_masks", &pack_masks_cuda);
  m.impl("pairwise_iou", &pairwise_iou_cuda);
}

}  // namespace pathrt
