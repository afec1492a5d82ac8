// One kernel built three times (AVX-512, AVX2 + FMA, the compiler's baseline) and the best build for
// this CPU chosen once, when the library loads. PATHRT_CPU_KERNELS=avx2 or =baseline caps the choice,
// so the tests run every build on an AVX-512 machine.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

// Loops left to the compiler's vectorizer, built per ISA level and picked by the loader (GCC's
// target_clones; PATHRT_CPU_KERNELS does not cap these).
#define PATHRT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace pathrt {

template <typename Fn>
Fn for_this_cpu(Fn avx512, Fn avx2, Fn baseline) {
  __builtin_cpu_init();  // needed before __builtin_cpu_supports in a static initializer
  const char* cap = std::getenv("PATHRT_CPU_KERNELS");
  const std::string level = cap ? cap : "";
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (__builtin_cpu_supports("avx512f") && level.empty()) return avx512;
  return has_avx2 && level != "baseline" ? avx2 : baseline;
}

// The kernels that stream a weight from beyond the L2 prefetch it kPrefetchAhead floats (2 KB) ahead of
// their loads, a 64-byte line (kLineFloats) at a time.
constexpr int64_t kLineFloats = 16, kPrefetchAhead = 512;

// __builtin_prefetch's locality for a weight read once per call: into the L2 and beyond (prefetcht1), not
// the L1, whose lines the kernel's pixel rows need.
constexpr int kIntoL2 = 2;

// Prefetches the lines of the `floats` floats from p on, into every cache level (kLocality 3) or as kIntoL2.
template <int kLocality = 3>
[[gnu::always_inline]] inline void prefetch_lines(const float* p, int64_t floats) {
  for (int64_t line = 0; line < floats; line += kLineFloats) __builtin_prefetch(p + line, 0, kLocality);
}

}  // namespace pathrt
