// Weights that the batch-1 kernels stream from beyond the L2 on 2 MB pages.
#pragma once

#include <ATen/ATen.h>

namespace pathrt {

// An uninitialised float tensor of `shape`, contiguous. From 2 MB on it is mapped on its own, 2 MB aligned,
// and advised onto 2 MB pages (MADV_HUGEPAGE; where the kernel refuses, 4 KB pages): glibc's heap and
// torch's allocator hand out memory faulted in 4 KB pages, where the streaming kernels' prefetches stop at
// every page's TLB miss (the host's transparent huge pages are `madvise`, as is common). Smaller tensors
// come from at::empty.
at::Tensor huge_page_empty(at::IntArrayRef shape);

}  // namespace pathrt
