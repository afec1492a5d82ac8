// Large CPU buffers kept across explain calls. glibc serves an allocation above its mmap threshold
// (which adapts up to 32 MB) with fresh pages, which fault on first touch, and unmaps them when it is
// freed: 0.42 ms per MB here. VGG-11@64's batch-64 call allocates 33-67 MB activations in both passes
// and lost about 40 ms of 370 to those faults. Inside a BufferScope, the calling thread's CPU tensors
// of at least `kMinPooledBytes` take a block freed by an earlier call of the same size (up to a quarter
// larger) and give it back when freed; other allocations, and every other thread's, go to torch's
// allocator as before. When the outermost scope of a thread ends, the free blocks that neither it nor
// the scope before it used go back to the system: the pool holds the recent calls' large buffers, as
// ONNX Runtime's arena does, not the largest call's forever.
#pragma once

#include <cstddef>

namespace pathrt {

constexpr size_t kMinPooledBytes = size_t{16} << 20;  // smaller blocks: glibc's heap reuses them itself

// While one exists on a thread (scopes nest), that thread's large CPU allocations use the pool. The
// first scope installs the pool as torch's CPU allocator, wrapping the one it finds (allocations
// outside scopes pass straight through).
class BufferScope {
 public:
  BufferScope();
  ~BufferScope();
  BufferScope(const BufferScope&) = delete;
  BufferScope& operator=(const BufferScope&) = delete;
};

struct BufferPoolStats {
  size_t held_bytes = 0, free_bytes = 0, blocks = 0;  // held: in use and free
  bool installed = false;  // false when another allocator outranked the pool (it then never pools)
};
BufferPoolStats buffer_pool_stats();

}  // namespace pathrt
