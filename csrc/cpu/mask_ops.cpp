// CPU kernels of pathrt::pack_masks and pathrt::pairwise_iou (schemas: pathrt/runtime/ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "pathrt/mask_checks.h"
#include "pathrt/bitops.h"
#include "pathrt/call_pool.h"

namespace pathrt {
namespace {

at::Tensor pack_masks_cpu(const at::Tensor& masks) {
  check_masks(masks);
  const auto bytes = masks.contiguous().view(at::kByte);
  const int64_t n = bytes.size(0), k = bytes.size(1), nbytes = packed_bytes(k);
  auto out = at::empty({n, nbytes}, masks.options().dtype(at::kByte));
  const uint8_t* src = bytes.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  pathrt::parallel_for(0, n * nbytes, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t row = idx / nbytes, byte = idx % nbytes;
      const int64_t first = byte * 8;
      const int64_t count = k - first < 8 ? k - first : 8;
      dst[idx] = pack_byte(src + row * k + first, count);
    }
  });
  return out;
}

// Per-row popcounts, so each pair needs only one AND-popcount pass.
__attribute__((target_clones("popcnt", "default")))
void row_counts(const uint8_t* rows, int64_t n, int64_t nbytes, int64_t* counts) {
  for (int64_t i = 0; i < n; ++i) counts[i] = row_popcount(rows + i * nbytes, nbytes);
}

__attribute__((target_clones("popcnt", "default")))
void iou_block(const uint8_t* a, const uint8_t* b, const int64_t* ca, const int64_t* cb,
               int64_t i_begin, int64_t i_end, int64_t m, int64_t nbytes, float* out) {
  for (int64_t i = i_begin; i < i_end; ++i) {
    const uint8_t* row_a = a + i * nbytes;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t inter = and_popcount(row_a, b + j * nbytes, nbytes);
      out[i * m + j] = iou_from_counts(ca[i], cb[j], inter);
    }
  }
}

at::Tensor pairwise_iou_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_packed_pair(a, b);
  const auto ac = a.contiguous(), bc = b.contiguous();
  const int64_t n = ac.size(0), m = bc.size(0), nbytes = ac.size(1);
  auto out = at::empty({n, m}, a.options().dtype(at::kFloat));
  auto ca = at::empty({n}, a.options().dtype(at::kLong));
  auto cb = at::empty({m}, a.options().dtype(at::kLong));
  row_counts(ac.data_ptr<uint8_t>(), n, nbytes, ca.data_ptr<int64_t>());
  row_counts(bc.data_ptr<uint8_t>(), m, nbytes, cb.data_ptr<int64_t>());
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, m * nbytes));
  pathrt::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    iou_block(ac.data_ptr<uint8_t>(), bc.data_ptr<uint8_t>(), ca.data_ptr<int64_t>(),
              cb.data_ptr<int64_t>(), begin, end, m, nbytes, out.data_ptr<float>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pathrt, CPU, m) {
  m.impl("pack_masks", &pack_masks_cpu);
  m.impl("pairwise_iou", &pairwise_iou_cpu);
}

}  // namespace pathrt
