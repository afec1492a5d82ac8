// Weights that the batch-1 kernels stream from beyond the L2 on 2 MB pages.
#pragma once

#include <ATen/ATen.h>

namespace pathrt {

// An uninitialised float tensor of `shape`, contiguous. From 2 MB on it is mapped on its own, 2 MB aligned,
// and advised onto 2 MB pages (MADV_HUGEPAGE; where the kernel refuses, 4 KB pages): glibc's heap and
// torch's allocator hand out memory faulted in 4 KB pages, where the streaming kernels' prefetches stop at
// every page's TLB miss (the host's transparent huge pages are `madvise`, as is common). Smaller tensors
// come from at::empty. A bundle's tensors, VGG-11@64 at batch 1, two sessions alternating in one process,
// pathway phase (its classifier read in place), 10th percentiles of 2 runs: 8.57 -> 8.24 and 8.05 -> 7.58 ms
// against 4 KB pages. The direct conv's blocked and the pathway's input-major copies, ResNet-18@64 at batch
// 1, old and new builds alternating: its call 2.63-2.65 -> 2.57-2.58 ms.
at::Tensor huge_page_empty(at::IntArrayRef shape);

}  // namespace pathrt
