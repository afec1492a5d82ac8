// The call pool: helper threads that spin only while a session call runs, so that the call's narrow
// parallel loops (pathrt's own kernels: direct conv, dot products, masks) start on the other cores
// in ~1 us instead of the 40-80 us an OpenMP team takes to wake once it sleeps (OMP_WAIT_POLICY=PASSIVE
// or the pathrt command's short GOMP_SPINCOUNT, kept so that an idle or shared host is not burnt).
// Measured on ResNet-18@64 at batch 1, 2 threads: OMP_WAIT_POLICY=ACTIVE (spinning everywhere) ran the
// session call in 4.6-5.1 ms against 6.4-7.2 under the pathrt command's policy. The pool gets that
// within a call and sleeps between calls.
//
// Contention: a helper that is descheduled while it holds a chunk makes the caller wait. When the
// caller waits well past its own chunks' time, it blocks instead of spinning, the pool stops for
// the rest of the call and is suspended for a back-off (50 ms doubling to 2 s) before calls use it
// again. A call whose calling thread left its CPU (preempted, or blocked on a descheduled peer) and ran
// on one for under 0.6 of its time (other runnable work wanted the cores) starts the same back-off;
// during it `contended()` holds and the session runs its steps on one thread, OpenMP's too. PATHRT_CALL_POOL=0
// turns it off (every loop then runs on at::parallel_for, as before).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>
#include <thread>

namespace pathrt {

// Activates the calling thread's pool for one scope: `threads` - 1 helpers (made on first use and
// kept with the thread) spin for work until the scope ends. No-op for threads <= 1, when the pool
// is off, inside another scope, or while suspended after a late helper.
class CallScope {
 public:
  explicit CallScope(int threads);
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  bool active_ = false;
};

// While alive, the calling thread's pool (if its scope is active) sleeps, so that a step running on
// OpenMP's team (oneDNN, MKL) owns the cores. ThreadLimit holds one when it widens past one thread.
class PoolPause {
 public:
  PoolPause();
  ~PoolPause();
  PoolPause(const PoolPause&) = delete;
  PoolPause& operator=(const PoolPause&) = delete;

 private:
  bool paused_ = false;
};

namespace call_pool {

// The threads a pathrt::parallel_for on this thread would use through the pool now; 0 when it
// would fall back to at::parallel_for.
int width();

// Runs f over [begin, end) in contiguous chunks of at least `grain` on the caller and the helpers;
// rethrows the first exception a chunk threw after every claimed chunk has finished.
void run(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f);

// Whether the calling thread's pool is in a back-off after a late helper or a contended call: other
// work shares the cores, and a session call then runs on one thread.
bool contended();

// Counters of this process's pools, for tests and diagnostics.
struct Stats {
  bool enabled = true;  // PATHRT_CALL_POOL is not 0
  int64_t jobs = 0, helper_chunks = 0, late = 0, suspended_scopes = 0, contended_scopes = 0;
};
Stats stats();

}  // namespace call_pool

// at::parallel_for's contract (f gets disjoint [b, e) chunks covering [begin, end), each at least
// `grain` long but the last; no chunk runs when begin >= end) on the call pool when it is usable,
// else on at::parallel_for. f must not depend on which thread or how many chunks run it.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end - begin > grain && call_pool::width() > 1) {
    call_pool::run(begin, end, grain, f);
    return;
  }
  at::parallel_for(begin, end, grain, f);
}

// The threads a pathrt::parallel_for would use now: the pool's width when usable, else OpenMP's
// (pathrt::max_threads).
int parallel_width();

// One pause of a spin-wait loop.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace pathrt
