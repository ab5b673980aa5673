// dst += src elementwise: ZeRO-2/3 add each micro-step's reduced gradient
// chunk into the rank's gradient shard.
#include "cpu_ops.h"

namespace srgpt::cpu {

template <typename S>
void accumulate_into(S* dst, const S* src, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); ++i) accumulate(&dst[i], load(src[i]));
}

SRGPT_CPU_INSTANTIATE(accumulate_into)

}  // namespace srgpt::cpu
