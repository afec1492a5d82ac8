// The call pool (pathrt/call_pool.h): per calling thread, helpers that spin only inside a CallScope.
#include "pathrt/call_pool.h"

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pathrt/threads.h"

extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace pathrt {
namespace {

using Clock = std::chrono::steady_clock;

// The job word: generation (32 bits) | chunks (16) | next chunk to claim (16). One word, so that a
// claim (a compare-exchange) fails for a helper holding a stale view of an earlier job.
constexpr uint64_t kIndexBits = 16, kMaxChunks = (uint64_t{1} << kIndexBits) - 1;
// A helper that found no chunk for this long within a call parks until the next job, so that a long
// serial stretch of the call does not burn a core a neighbour could use (VGG-11@64's batch 1 beside
// two busy processes: 49-51 ms spinning throughout, 43-45 parked after 100 us). A parked helper takes
// tens of microseconds to wake: 300 us spans the embedded model's batch-1 generator (~220 us; its
// pathway phase 0.47 ms after a 100 us spin, 0.40-0.41 after 300, 0.38-0.40 without the pool).
constexpr auto kIdleSpin = std::chrono::microseconds(300);
constexpr int kChunksPerThread = 4;  // dynamic chunks, so a helper that starts late takes fewer
constexpr auto kFirstBackoff = std::chrono::milliseconds(50), kMaxBackoff = std::chrono::milliseconds(2000);
// How long the caller waits past its own chunks before it calls a helper late: twice its longest
// chunk plus kLateSlack (a helper woken or interrupted once is not late); kLateAlone when it ran none.
constexpr auto kLateSlack = std::chrono::microseconds(100), kLateAlone = std::chrono::microseconds(1000);
// A call met other work on the cores when its calling thread left its CPU (a context switch) and ran on
// one for less than kContendedShare of the call's wall time. Left how: preempted (involuntary switches:
// another runnable thread wanted its core), or blocked waiting on a peer that was descheduled (voluntary
// ones: an OpenMP barrier's futex, which oneDNN's statically split convs hit). On this host's kernel
// (6.18, EEVDF), beside one busy process per core, the calls of ResNet-18@64 and VGG-11@64 at batch 1 on
// 2 threads ran on a CPU for a median 0.35-0.52 of their time and mostly left it voluntarily (0-1
// involuntary switches, 1-4 voluntary): counting preemptions alone (2 or more, the rule before) never saw
// them, and they ran on 2 threads at 8.0-8.9 and 21-33 ms against 4.3 and 12.8 on one (quiet: 2.7 and
// 7.0 on 2). Quiet calls ran on a CPU for 0.91 and more of their time at batch 1, 0.78 and more at batch
// 64 (VGG-11@64, up to 35 voluntary switches at its OpenMP barriers), hence the share: a count alone sent
// VGG-11@64's next batch-64 calls to one thread (385 -> 711 ms).
constexpr int64_t kContendedSwitches = 1;
constexpr double kContendedShare = 0.6;

std::atomic<int64_t> jobs{0}, helper_chunks{0}, late_waits{0}, suspended_scopes{0}, contended_scopes{0};

// The calling thread's CPU time so far, in seconds.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Context switches of the calling thread so far, involuntary and voluntary (0 where the OS does not
// count them).
int64_t context_switches() {
#ifdef RUSAGE_THREAD
  rusage usage{};
  if (getrusage(RUSAGE_THREAD, &usage) == 0) return usage.ru_nivcsw + usage.ru_nvcsw;
#endif
  return 0;
}

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("PATHRT_CALL_POOL");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return on;
}

class Pool {
 public:
  explicit Pool(int helpers) {
    for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { helper(); });
  }

  ~Pool() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int helpers() const { return static_cast<int>(threads_.size()); }

  // Helpers spin for jobs (one notify if any sleeps).
  void spin() {
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    spinning_.store(true, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { const std::lock_guard<std::mutex> lock(mutex_); }
      wake_.notify_all();
    }
  }

  // Helpers go to sleep after the chunk they hold.
  void rest() { spinning_.store(false, std::memory_order_release); }

  // Runs f's chunks on this thread and the spinning helpers. `late` is set when a helper held a chunk
  // well past the caller's own (the job finished all the same: the caller blocked until it did).
  void run(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f, bool& late) {
    const int64_t n = end - begin;
    const int64_t chunks = std::min<int64_t>({(n + grain - 1) / grain, int64_t{kChunksPerThread} * (helpers() + 1),
                                              static_cast<int64_t>(kMaxChunks)});
    fn_ = f;
    begin_ = begin;
    size_ = n;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    caller_waiting_.store(false, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & 0xffffffffu;
    state_.store(generation_ << 32 | static_cast<uint64_t>(chunks) << kIndexBits, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {  // a helper parked after kIdleSpin without work
      { const std::lock_guard<std::mutex> lock(mutex_); }
      wake_.notify_all();
    }
    jobs.fetch_add(1, std::memory_order_relaxed);
    Clock::duration longest{0};
    bool ran = false;
    for (;;) {
      const auto start = Clock::now();
      if (!claim_and_run()) break;
      longest = std::max(longest, Clock::now() - start);
      ran = true;
    }
    const auto patience = ran ? 2 * longest + kLateSlack : Clock::duration(kLateAlone);
    const auto waiting = Clock::now();
    while (done_.load(std::memory_order_acquire) != chunks) {
      if (Clock::now() - waiting > patience) {
        late = true;
        wait_blocked(chunks);
        break;
      }
      cpu_relax();
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims the job's next chunk and runs it; false when none is left.
  bool claim_and_run() {
    uint64_t s = state_.load(std::memory_order_acquire);
    uint64_t index = 0, chunks = 0;
    for (;;) {
      index = s & kMaxChunks;
      chunks = s >> kIndexBits & kMaxChunks;
      if (index >= chunks) return false;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
    }
    // The job's fields are this job's: it cannot end before this chunk is done.
    const int64_t lo = begin_ + static_cast<int64_t>(static_cast<uint64_t>(size_) * index / chunks);
    const int64_t hi = begin_ + static_cast<int64_t>(static_cast<uint64_t>(size_) * (index + 1) / chunks);
    try {
      const c10::ParallelGuard guard(true);  // a nested at::parallel_for runs inline
      fn_(lo, hi);
    } catch (...) {
      fail(std::current_exception());
    }
    done_.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }

  // Keeps the first error and stops further claims; the unclaimed chunks count as done.
  void fail(std::exception_ptr e) {
    {
      const std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::move(e);
    }
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t index = s & kMaxChunks, chunks = s >> kIndexBits & kMaxChunks;
      if (index >= chunks) return;
      if (state_.compare_exchange_weak(s, s - index + chunks, std::memory_order_acq_rel, std::memory_order_acquire)) {
        done_.fetch_add(static_cast<int64_t>(chunks - index), std::memory_order_seq_cst);
        return;
      }
    }
  }

  // The caller's wait for a late helper: blocked, so the helper can have this core.
  void wait_blocked(int64_t chunks) {
    caller_waiting_.store(true, std::memory_order_seq_cst);
    std::unique_lock<std::mutex> lock(mutex_);
    while (done_.load(std::memory_order_seq_cst) != chunks) done_cv_.wait_for(lock, std::chrono::milliseconds(1));
  }

  void helper() {
    // This thread's own OpenMP and MKL counts: one (a nested region or GEMM in a chunk stays here).
    at::init_num_threads();
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(1);
    auto idle_since = Clock::now();
    for (uint32_t polls = 1; !stop_.load(std::memory_order_acquire); ++polls) {
      if (!spinning_.load(std::memory_order_acquire)) {
        sleep(false);
        idle_since = Clock::now();
        continue;
      }
      if (claim_and_run()) {
        helper_chunks.fetch_add(1, std::memory_order_relaxed);
        if (caller_waiting_.load(std::memory_order_seq_cst)) {
          { const std::lock_guard<std::mutex> lock(mutex_); }
          done_cv_.notify_all();
        }
        idle_since = Clock::now();
        continue;
      }
      cpu_relax();
      if (polls % 64 == 0 && Clock::now() - idle_since > kIdleSpin) {
        sleep(true);
        idle_since = Clock::now();
      }
    }
  }

  // Sleeps until the pool spins again or, with `parked`, until a new job or a new call scope.
  void sleep(bool parked) {
    const uint64_t job = state_.load(std::memory_order_seq_cst) >> 32, epoch = epoch_.load(std::memory_order_seq_cst);
    const auto woken = [&] {
      if (stop_.load() || !spinning_.load(std::memory_order_seq_cst)) return stop_.load();
      return !parked || state_.load(std::memory_order_seq_cst) >> 32 != job ||
             epoch_.load(std::memory_order_seq_cst) != epoch;
    };
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (!woken()) wake_.wait(lock);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }

  std::vector<std::thread> threads_;
  std::atomic<bool> spinning_{false}, stop_{false}, caller_waiting_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> epoch_{0};  // call scopes begun: wakes parked helpers
  std::mutex mutex_, error_mutex_;
  std::condition_variable wake_, done_cv_;
  // The job: published by the release store of state_, read by a claimer after its acquire claim.
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  uint64_t generation_ = 0;
  c10::function_ref<void(int64_t, int64_t)> fn_;
  int64_t begin_ = 0, size_ = 0;
  std::exception_ptr error_;
};

// The calling thread's pool and scope state.
struct Caller {
  std::unique_ptr<Pool> pool;
  pid_t pid = 0;
  bool active = false, late = false, used = false, in_job = false;
  int pauses = 0;
  int64_t switches_at_start = 0;
  double cpu_at_start = 0.0;
  Clock::time_point started{};
  Clock::time_point suspended_until{};
  Clock::duration backoff = kFirstBackoff;

  ~Caller() {
    if (pid != getpid()) (void)pool.release();  // a forked child has no helper threads to join
  }

  Pool& pool_for(int threads) {
    if (pool && pid != getpid()) (void)pool.release();
    if (!pool || pool->helpers() != threads - 1) {
      pool.reset();
      pool = std::make_unique<Pool>(threads - 1);
      pid = getpid();
    }
    return *pool;
  }

  bool usable() const { return active && !late && pauses == 0 && !in_job; }
  bool suspended() const { return Clock::now() < suspended_until; }

  // A late helper was descheduled with a chunk (other work shares the cores): no helper for the rest
  // of this call, and none for a back-off that doubles while it keeps happening.
  void end_job(bool helper_late) {
    in_job = false;
    if (!helper_late) return;
    late_waits.fetch_add(1, std::memory_order_relaxed);
    late = true;
    pool->rest();
    suspend();
  }

  // No helper, and one thread for the session's steps (call_pool::contended), for a back-off that
  // doubles while calls keep meeting other work.
  void suspend() {
    suspended_until = Clock::now() + backoff;
    backoff = std::min<Clock::duration>(2 * backoff, kMaxBackoff);
  }
};

thread_local Caller caller;

}  // namespace

CallScope::CallScope(int threads) {
  Caller& c = caller;
  if (threads <= 1 || !enabled() || c.active || c.in_job) return;
  if (c.suspended()) {
    suspended_scopes.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Pool& pool = c.pool_for(threads);
  c.active = true;
  c.late = c.used = false;
  c.switches_at_start = context_switches();
  c.cpu_at_start = cpu_seconds();
  c.started = Clock::now();
  if (c.pauses == 0) pool.spin();
  active_ = true;
}

CallScope::~CallScope() {
  if (!active_) return;
  Caller& c = caller;
  c.pool->rest();
  c.active = false;
  const double wall = std::chrono::duration<double>(Clock::now() - c.started).count();
  if (context_switches() - c.switches_at_start >= kContendedSwitches &&
      cpu_seconds() - c.cpu_at_start < kContendedShare * wall) {
    contended_scopes.fetch_add(1, std::memory_order_relaxed);
    if (!c.late) c.suspend();
  } else if (c.used && !c.late) {
    c.backoff = kFirstBackoff;
  }
}

PoolPause::PoolPause() {
  Caller& c = caller;
  if (!c.active || c.late) return;
  if (c.pauses++ == 0) c.pool->rest();
  paused_ = true;
}

PoolPause::~PoolPause() {
  if (!paused_) return;
  Caller& c = caller;
  if (--c.pauses == 0 && c.active && !c.late) c.pool->spin();
}

namespace call_pool {

int width() {
  const Caller& c = caller;
  return c.usable() ? c.pool->helpers() + 1 : 0;
}

bool contended() { return enabled() && caller.suspended(); }

void run(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f) {
  Caller& c = caller;
  c.in_job = c.used = true;
  bool late = false;
  try {
    c.pool->run(begin, end, std::max<int64_t>(1, grain), f, late);
  } catch (...) {
    c.end_job(late);
    throw;
  }
  c.end_job(late);
}

Stats stats() {
  return {enabled(), jobs.load(), helper_chunks.load(), late_waits.load(), suspended_scopes.load(),
          contended_scopes.load()};
}

}  // namespace call_pool

int parallel_width() {
  const int w = call_pool::width();
  return w > 0 ? w : max_threads();
}

}  // namespace pathrt
