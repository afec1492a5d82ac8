// Thread limits and the wake-up cost of a parallel region (pathrt/threads.h).
#include "pathrt/threads.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// MKL's per-thread thread count (torch's x86 builds link MKL and export it); weak, so builds
// without MKL load too.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace pathrt {

namespace {

// Work per microsecond of wake-up at which a step gains from the other threads. Measured on 2 cores
// under PASSIVE (wake-up 60-80 us) with fixed thresholds of 4M, 8M, 16M, 32M and 64M multiply-adds on
// the embedded model, VGG-11@64 and ResNet-18@64 at batches 1 and 64: 16M-32M was best or within 5%
// on every row, 4M cost 2.6x at the embedded model's batch 1 and 64M 1.2x at VGG-11's. The
// break-even is far above 2 x wake-up x a core's rate: oneDNN's and MKL's ops open several regions
// per call, and the woken thread starts its share late.
constexpr double kWorkPerWakeUs = 256e3;

}  // namespace

ThreadLimit::ThreadLimit(int threads) {
#ifdef _OPENMP
  previous_ = omp_get_max_threads();
  if (threads > 0) omp_set_num_threads(threads);
#endif
  if (threads > 0 && MKL_Set_Num_Threads_Local != nullptr) mkl_previous_ = MKL_Set_Num_Threads_Local(threads);
  if (threads > 1) pause_.emplace();
}

ThreadLimit::~ThreadLimit() {
#ifdef _OPENMP
  omp_set_num_threads(previous_);
#endif
  if (mkl_previous_ >= 0) MKL_Set_Num_Threads_Local(mkl_previous_);
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

double wake_cost_us(int threads) {
  static std::mutex mutex;
  static std::map<int, double> measured;
  if (threads <= 1) return 0.0;
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = measured.find(threads); it != measured.end()) return it->second;
  double cost = 0.0;
#ifdef _OPENMP
  const ThreadLimit limit(threads);
  constexpr int kWarmup = 8, kRegions = 31;
  constexpr auto kIdle = std::chrono::microseconds(300);
  std::vector<double> us;
  std::atomic<int> joined{0};
  for (int i = 0; i < kWarmup + kRegions; ++i) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel
    joined.fetch_add(1, std::memory_order_relaxed);  // nothing else: the cost is waking and joining the team
    const double t = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    if (i >= kWarmup) us.push_back(t);
    // Work on this thread alone for a while, as a serial step does, before the next region: with
    // a short spin (the pathrt command's GOMP_SPINCOUNT=3000) the team is asleep again and a
    // parallel step after serial ones pays the full wake-up; only threads that spin longer than
    // kIdle (ACTIVE, or libgomp's default ~3 ms) answer at once. 300 us, not longer: after 1 ms
    // PASSIVE's wake-up measured 260 us instead of 80 (deeper sleep), off kWorkPerWakeUs's calibration.
    const auto idle = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - idle < kIdle) {
    }
  }
  std::nth_element(us.begin(), us.begin() + kRegions / 2, us.end());
  cost = us[kRegions / 2];
#endif
  measured[threads] = cost;
  return cost;
}

int64_t parallel_work(int threads) {
  return threads <= 1 ? 0 : static_cast<int64_t>(kWorkPerWakeUs * wake_cost_us(threads));
}

}  // namespace pathrt
