// Threads of the native explain path. A parallel region wakes the other OpenMP threads: ~1 us when
// they still spin (OMP_WAIT_POLICY=ACTIVE, or within GOMP_SPINCOUNT of the last region), 40-80 us
// when they sleep (the pathrt command lets them spin briefly, then sleep, for shared hosts), more
// than many of a batch-1 explanation's ops take on one thread. So the session runs each step on one
// thread unless its work pays for the wake-up: `parallel_work` measures the wake-up after serial
// work once per process and thread count and turns it into a work threshold.
#pragma once

#include <cstdint>
#include <optional>

#include "pathrt/call_pool.h"

namespace pathrt {

// Sets the OpenMP and MKL thread counts of the calling thread for one scope (both are per calling
// thread, so concurrent callers do not interfere) and restores them after; threads <= 0 keeps them.
// Cheap (no at::init_num_threads, which re-applies torch.set_num_threads' count when it was called):
// call that once per call on the calling thread first. Wider than one thread, it pauses the calling
// thread's call pool (pathrt/call_pool.h) for the scope: OpenMP's team then owns the cores.
class ThreadLimit {
 public:
  explicit ThreadLimit(int threads);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int previous_ = 0, mkl_previous_ = -1;
  std::optional<PoolPause> pause_;
};

// The OpenMP threads a parallel region on this thread would use now. Not at::get_num_threads: on a
// thread's first use that re-applies torch's count (lazy init) and would undo a ThreadLimit.
int max_threads();

// Median wall time of an empty parallel region on `threads` threads after 300 us of work on the calling
// thread alone, in microseconds (measured on first use per thread count, then cached for the process).
double wake_cost_us(int threads);

// The least work (multiply-add equivalents) for which a step runs on `threads` threads rather than
// one: kWorkPerWakeUs per microsecond of wake-up; 0 on one thread.
int64_t parallel_work(int threads);

}  // namespace pathrt
