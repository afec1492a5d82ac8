// The pool of large CPU buffers (pathrt/buffer_pool.h): a c10::Allocator that wraps torch's.
#include "pathrt/buffer_pool.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace pathrt {

namespace {

thread_local int scope_depth = 0;

struct Block {
  size_t bytes;
  bool free;
  uint64_t used;  // the scope count when it was last taken
};

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* base) : base_(base), base_raw_deleter_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t bytes) override {
    if (scope_depth == 0 || bytes < kMinPooledBytes) return base_->allocate(bytes);
    void* data = take(bytes);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate's pointers (oneDNN's, through ideep) come back here, pooled or not.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // The end of a thread's outermost scope: free the blocks that neither this scope nor the one
  // before it took.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++scopes_;
    for (auto it = blocks_.begin(); it != blocks_.end();) {
      if (it->second.free && it->second.used + 2 < scopes_) {
        c10::free_cpu(it->first);
        it = blocks_.erase(it);
      } else {
        ++it;
      }
    }
  }

  BufferPoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    BufferPoolStats s;
    for (const auto& [data, block] : blocks_) {
      s.held_bytes += block.bytes;
      s.free_bytes += block.free ? block.bytes : 0;
    }
    s.blocks = blocks_.size();
    return s;
  }

 private:
  // The smallest free block of `bytes` to 1.25 x `bytes`, else a new one.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      Block* best = nullptr;
      void* best_data = nullptr;
      for (auto& [data, block] : blocks_) {
        if (block.free && block.bytes >= bytes && block.bytes <= bytes + bytes / 4 &&
            (best == nullptr || block.bytes < best->bytes)) {
          best = &block;
          best_data = data;
        }
      }
      if (best != nullptr) {
        best->free = false;
        best->used = scopes_;
        return best_data;
      }
    }
    void* data = c10::alloc_cpu(bytes);  // outside the lock: it faults its pages in later, on first touch
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_.emplace(data, Block{bytes, false, scopes_});
    return data;
  }

  static void release(void* data);

  c10::Allocator* base_;
  c10::DeleterFnPtr base_raw_deleter_;
  std::mutex mutex_;
  std::unordered_map<void*, Block> blocks_;
  uint64_t scopes_ = 0;
};

PoolAllocator* pool = nullptr;  // set once, never destroyed: tensors may outlive everything else

void PoolAllocator::release(void* data) {
  {
    std::lock_guard<std::mutex> lock(pool->mutex_);
    if (const auto it = pool->blocks_.find(data); it != pool->blocks_.end()) {
      it->second.free = true;
      return;
    }
  }
  pool->base_raw_deleter_(data);  // a raw allocation the base allocator made
}

bool install() {
  static std::once_flag once;
  std::call_once(once, [] {
    c10::Allocator* base = c10::GetCPUAllocator();
    if (base->raw_deleter() == nullptr) return;  // its raw pointers could not be handed back
    pool = new PoolAllocator(base);
    c10::SetCPUAllocator(pool);
  });
  return pool != nullptr && c10::GetCPUAllocator() == pool;
}

}  // namespace

BufferScope::BufferScope() {
  if (scope_depth > 0 || install()) ++scope_depth;
}

BufferScope::~BufferScope() {
  if (scope_depth > 0 && --scope_depth == 0) pool->trim();
}

BufferPoolStats buffer_pool_stats() {
  if (pool == nullptr) return {};
  auto s = pool->stats();
  s.installed = c10::GetCPUAllocator() == pool;
  return s;
}

}  // namespace pathrt
