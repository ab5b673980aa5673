#pragma once
// bfloat16 storage type and the three fp32 -> bf16 roundings srgpt uses:
// round-to-nearest-even, truncation and stochastic rounding (SR).
#include <cstdint>
#include <cstring>

#include "srgpt/hd.h"

namespace srgpt {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

SRGPT_HD uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

SRGPT_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

SRGPT_HD float bf16_to_float(bf16 h) { return bits_float(uint32_t(h.bits) << 16); }

SRGPT_HD bool float_is_nan_bits(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0; }

// A NaN keeps its sign and becomes a quiet NaN (truncating its payload could
// otherwise turn it into an infinity).
SRGPT_HD bf16 nan_to_bf16(uint32_t u) { return bf16{uint16_t((u >> 16) | 0x0040u)}; }

SRGPT_HD bf16 float_to_bf16_rn(float f) {
  uint32_t u = float_bits(f);
  if (float_is_nan_bits(u)) return nan_to_bf16(u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// Stochastic rounding: add 16 random bits below the bf16 mantissa, truncate.
// Rounds up with probability equal to the discarded fraction, so
// E[SR(x)] = x; representable values (low half zero), +-0 and +-Inf are
// unchanged because the addition cannot carry out of the low half.
SRGPT_HD bf16 float_to_bf16_sr(float f, uint32_t random_bits) {
  uint32_t u = float_bits(f);
  if (float_is_nan_bits(u)) return nan_to_bf16(u);
  if ((u & 0x7f800000u) == 0x7f800000u) return bf16{uint16_t(u >> 16)};
  u += random_bits & 0xffffu;
  return bf16{uint16_t(u >> 16)};
}

}  // namespace srgpt
