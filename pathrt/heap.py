"""Keeping the C heap from growing across chunks of a long explain run.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which the
per-chunk feature maps come from the heap, where they fragment it: measured on VGG-11@64, 4,096
images explained chunk by chunk grew the process by 75 MB more than one chunk needed, with nothing
kept (`pathrt bench --memory`). A fixed threshold keeps large tensors in their own mappings, which
go back to the system when freed. The `pathrt` command sets it; library users may call
`limit_heap_growth()` once (it changes the allocator of the whole process) or set the environment
variable MALLOC_MMAP_THRESHOLD_=131072.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def limit_heap_growth(threshold: int = 128 << 10) -> bool:
    """Fixes glibc's mmap threshold at `threshold` bytes; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold) == 1)
