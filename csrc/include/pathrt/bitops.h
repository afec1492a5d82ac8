// Bit arithmetic shared by the CPU and CUDA kernels of pathrt._C.
//
// Everything here is __host__ __device__ so that the CPU path (which the tests run) and the
// CUDA path (which CI compiles but cannot run) execute the same arithmetic.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PATHRT_HD __host__ __device__ __forceinline__
#else
#define PATHRT_HD inline __attribute__((always_inline))  // inlined into the (vectorized) loops
#endif

namespace pathrt {

// Number of bytes that hold `k` packed bits.
PATHRT_HD int64_t packed_bytes(int64_t k) { return (k + 7) / 8; }

PATHRT_HD int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

// Loads 8 bytes from a possibly unaligned address.
PATHRT_HD uint64_t load_word(const uint8_t* p) {
  uint64_t w;
  memcpy(&w, p, sizeof(w));
  return w;
}

// The 8 mask values (nonzero = kept) in the bytes of `bytes` (little-endian) as bits: byte j -> bit j.
// Each byte's bits fold into its bit 0; the multiply then gathers bit 0 of byte j into bit 56 + j (its
// partial products land on distinct bits, so nothing carries).
PATHRT_HD uint8_t pack_word(uint64_t bytes) {
  bytes |= bytes >> 4;
  bytes |= bytes >> 2;
  bytes |= bytes >> 1;
  return static_cast<uint8_t>((bytes & 0x0101010101010101ull) * 0x0102040810204080ull >> 56);
}

// Packs up to 8 mask values (nonzero = kept) into one byte, little-endian: value j -> bit j.
PATHRT_HD uint8_t pack_byte(const uint8_t* values, int64_t count) {
  if (count == 8) return pack_word(load_word(values));
  uint8_t byte = 0;
  for (int64_t j = 0; j < count; ++j) {
    byte |= static_cast<uint8_t>(values[j] != 0) << j;
  }
  return byte;
}

// Popcount of one packed row of `nbytes` bytes.
PATHRT_HD int64_t row_popcount(const uint8_t* a, int64_t nbytes) {
  int64_t count = 0;
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) count += popcount64(load_word(a + i));
  for (; i < nbytes; ++i) count += popcount64(a[i]);
  return count;
}

// Popcount of the bitwise AND of two packed rows.
PATHRT_HD int64_t and_popcount(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  int64_t count = 0;
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) count += popcount64(load_word(a + i) & load_word(b + i));
  for (; i < nbytes; ++i) count += popcount64(static_cast<uint8_t>(a[i] & b[i]));
  return count;
}

// IoU from set sizes: |a and b| / |a or b|; two empty sets are identical, so their IoU is 1.
PATHRT_HD float iou_from_counts(int64_t count_a, int64_t count_b, int64_t intersection) {
  const int64_t uni = count_a + count_b - intersection;
  return uni == 0 ? 1.0f : static_cast<float>(intersection) / static_cast<float>(uni);
}

}  // namespace pathrt
