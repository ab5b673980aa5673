// Fused softmax + cross-entropy loss + its gradient, in place over the logits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "srgpt/error.h"

namespace srgpt::cpu {

template <typename S>
void cross_entropy_forward_backward(Math<S>* losses, S* logits, const int32_t* targets, int N, int V, int Vp,
                                    float dloss) {
  using M = Math<S>;
  if (V <= 0 || V > Vp) fail("cross entropy: vocabulary size {} must be in [1, padded vocabulary {}]", V, Vp);
  // Checked up front, so a bad target leaves every buffer untouched.
  for (int n = 0; n < N; ++n)
    if (targets[n] < 0 || targets[n] >= V)
      fail("cross entropy: target token {} at row {} is outside the vocabulary [0, {})", targets[n], n, V);

#pragma omp parallel
  {
    std::vector<M> exps(V);
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      S* row = logits + size_t(n) * Vp;
      M max_logit = load(row[0]);
      for (int j = 1; j < V; ++j) max_logit = std::max(max_logit, load(row[j]));
      M sum = 0;
      for (int j = 0; j < V; ++j) {
        exps[j] = std::exp(load(row[j]) - max_logit);
        sum += exps[j];
      }
      const int target = targets[n];
      losses[n] = max_logit + std::log(sum) - load(row[target]);
      const M scale = M(dloss) / sum;
      for (int j = 0; j < V; ++j) row[j] = store<S>(exps[j] * scale);
      row[target] = store<S>((exps[target] / sum - M(1)) * M(dloss));
      std::fill(row + V, row + Vp, store<S>(M(0)));
    }
  }
}

SRGPT_CPU_INSTANTIATE(cross_entropy_forward_backward)

}  // namespace srgpt::cpu
