#pragma once
// The cross-rank sum of an element, as both communicators compute it: the
// ranks' contributions added in rank order in fp32 (fp64 for f64 data) and
// rounded once to the storage type. One definition for the MPI
// communicator's host loop and the NCCL communicator's kernel, so replicas
// get the same bits whichever reduces (additions only: no FMA contraction
// can change them).
#include <cstddef>

#include "srgpt/bf16.h"
#include "srgpt/hd.h"

namespace srgpt {

SRGPT_HD float widen_for_sum(bf16 x) { return bf16_to_float(x); }
SRGPT_HD float widen_for_sum(float x) { return x; }
SRGPT_HD double widen_for_sum(double x) { return x; }
SRGPT_HD void store_sum(float sum, bf16* out) { *out = float_to_bf16_rn(sum); }
SRGPT_HD void store_sum(float sum, float* out) { *out = sum; }
SRGPT_HD void store_sum(double sum, double* out) { *out = sum; }

// out[i] = the sum over r = 0..ranks-1 of contributions[r * length + i].
template <typename T>
SRGPT_HD void sum_element_in_rank_order(const T* contributions, T* out, size_t length, size_t ranks, size_t i) {
  auto sum = widen_for_sum(contributions[i]);
  for (size_t r = 1; r < ranks; ++r) sum += widen_for_sum(contributions[r * length + i]);
  store_sum(sum, out + i);
}

}  // namespace srgpt
