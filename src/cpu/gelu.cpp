// GELU on its own: recomputes the activation matmul_forward's epilogue
// produced, from the stored pre-activation, with the same expression.
#include "cpu_ops.h"
#include "srgpt/gelu_math.h"

namespace srgpt::cpu {

template <typename S>
void gelu_forward(S* out, const S* pre, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); ++i) out[i] = store<S>(gelu_tanh(load(pre[i])));
}

SRGPT_CPU_INSTANTIATE(gelu_forward)

}  // namespace srgpt::cpu
