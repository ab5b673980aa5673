#pragma once
// Counter-based random bits for stochastic rounding: a pure function of
// (seed, step, element index, stream). No generator state exists, so the
// bits do not depend on thread count, launch shape or device, and a resumed
// run draws exactly the bits the uninterrupted run would have drawn.
#include <cstdint>

#include "srgpt/hd.h"

namespace srgpt {

// The three tensors an optimizer step rounds; each takes its own 16-bit
// field of the element's random bits (bf16 SR needs 16 bits).
enum SrStream : uint32_t { kSrWeights = 0, kSrAdamM = 1, kSrAdamV = 2 };

// SplitMix64's finalizer: a bijective avalanche mix of 64 bits.
SRGPT_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// The key of one optimizer step: it does not depend on the element, so a
// caller computes it once (per step, or per GPU thread) rather than per
// element; the compilers do not hoist it out of the element loop on their
// own.
SRGPT_HD uint64_t sr_step_key(uint64_t seed, uint64_t step) {
  return mix64(mix64(seed ^ 0x9e3779b97f4a7c15ull) ^ (step * 0xd1b54a32d192ed03ull));
}

// 64 random bits for element `index` in the step with key `step_key`: one
// mix per element serves all three roundings.
SRGPT_HD uint64_t sr_element_bits(uint64_t step_key, uint64_t index) { return mix64(step_key ^ index); }

// A stream's 16-bit field of an element's random bits.
SRGPT_HD uint32_t sr_field(uint64_t element_bits, uint32_t stream) {
  return uint32_t(element_bits >> (16 * stream)) & 0xffffu;
}

SRGPT_HD uint32_t sr_random_bits(uint64_t seed, uint64_t step, uint64_t index, uint32_t stream) {
  return sr_field(sr_element_bits(sr_step_key(seed, step), index), stream);
}

}  // namespace srgpt
