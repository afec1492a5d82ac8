"""Keeping the C heap from growing across chunks of a long explain run.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which the
per-chunk feature maps come from the heap, where they fragment it: measured on VGG-11@64, 4,096
images explained chunk by chunk grew the process by 75 MB more than one chunk needed, with nothing
kept (`pathrt bench --memory`). A fixed threshold keeps large tensors in their own mappings, which
go back to the system when freed. Library users may call `limit_heap_growth()` once (it changes
the allocator of the whole process) or set the environment variable MALLOC_MMAP_THRESHOLD_=131072.

It has a price: every large tensor becomes a fresh mapping, zeroed page by page by the kernel on
first touch. Measured on the trained embedded model: 600 generator training steps took 187 s
instead of 81 s, and explaining blocks of 64 digits ran at 590 instead of 960 images/s (1 thread).
So only `pathrt explain`, whose chunk loop over a large folder is where the heap grew, sets it, and only
in the command's own process: `pathrt train`, `demo`, `evaluate` and the rest keep glibc's adaptive
threshold, and so does a program that calls `pathrt.cli.main(["explain", ...])` (the test suite did,
and its later in-process training then ran 2x slower).
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
