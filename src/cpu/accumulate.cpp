// dst += src elementwise: gradient accumulation across micro-steps (ZeRO-2/3
// shards, and fp32 gradients under dist.grad_reduce_dtype = fp32).
#include "cpu_ops.h"

namespace srgpt::cpu {

template <typename D, typename S>
void accumulate_into(D* dst, const S* src, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); ++i) accumulate(&dst[i], Math<D>(load(src[i])));
}

template void accumulate_into(bf16*, const bf16*, size_t);
template void accumulate_into(float*, const float*, size_t);
template void accumulate_into(double*, const double*, size_t);
template void accumulate_into(float*, const bf16*, size_t);

}  // namespace srgpt::cpu
