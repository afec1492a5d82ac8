#include "pathrt/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>

namespace pathrt {

at::Tensor huge_page_empty(at::IntArrayRef shape) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20, kPage = 4096;
  const uintptr_t numel = static_cast<uintptr_t>(c10::multiply_integers(shape));
  const uintptr_t length = (numel * sizeof(float) + kPage - 1) / kPage * kPage;
  void* raw = length < kHugePage ? MAP_FAILED
                                 : mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return at::empty(shape, at::kFloat);
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw), aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(raw, aligned - start);  // the mapping's slack before and after the aligned range
  munmap(reinterpret_cast<void*>(aligned + length), start + kHugePage - aligned);
  void* p = reinterpret_cast<void*>(aligned);
  madvise(p, length, MADV_HUGEPAGE);
  return at::from_blob(p, shape, [length](void* q) { munmap(q, length); }, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace pathrt
