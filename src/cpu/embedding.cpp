// Token + position embedding, forward and backward.
#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu_ops.h"

namespace srgpt::cpu {

template <typename S>
void embedding_forward(S* out, const int32_t* tokens, const S* wte, const S* wpe, int B, int T, int C) {
  const int64_t rows = int64_t(B) * T;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const S* token_row = wte + size_t(tokens[n]) * C;
    const S* position_row = wpe + size_t(n % T) * C;
    S* out_row = out + size_t(n) * C;
    for (int c = 0; c < C; ++c) out_row[c] = store<S>(load(token_row[c]) + load(position_row[c]));
  }
}

template <typename S>
void embedding_backward(S* dwte, S* dwpe, const S* dout, const int32_t* tokens, int B, int T, int C) {
  using M = Math<S>;
  const int64_t rows = int64_t(B) * T;

  // Group the rows by token (rows ascending within a group): each token's
  // gradient row is then summed by one thread in a fixed order and added to
  // dwte once, so a frequent token is not rounded once per occurrence.
  std::vector<int64_t> order(rows);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return tokens[a] < tokens[b]; });
  std::vector<int64_t> group_starts;
  for (int64_t i = 0; i < rows; ++i)
    if (i == 0 || tokens[order[i]] != tokens[order[i - 1]]) group_starts.push_back(i);
  group_starts.push_back(rows);
  const int64_t groups = int64_t(group_starts.size()) - 1;

#pragma omp parallel
  {
    std::vector<M> sum(C);
#pragma omp for schedule(dynamic, 8)
    for (int64_t g = 0; g < groups; ++g) {
      std::fill(sum.begin(), sum.end(), M(0));
      for (int64_t i = group_starts[g]; i < group_starts[g + 1]; ++i) {
        const S* row = dout + size_t(order[i]) * C;
        for (int c = 0; c < C; ++c) sum[c] += load(row[c]);
      }
      S* target = dwte + size_t(tokens[order[group_starts[g]]]) * C;
      for (int c = 0; c < C; ++c) accumulate(&target[c], sum[c]);
    }

#pragma omp for schedule(static)
    for (int t = 0; t < T; ++t) {
      std::fill(sum.begin(), sum.end(), M(0));
      for (int b = 0; b < B; ++b) {
        const S* row = dout + (size_t(b) * T + t) * C;
        for (int c = 0; c < C; ++c) sum[c] += load(row[c]);
      }
      S* target = dwpe + size_t(t) * C;
      for (int c = 0; c < C; ++c) accumulate(&target[c], sum[c]);
    }
  }
}

SRGPT_CPU_INSTANTIATE(embedding_forward)
SRGPT_CPU_INSTANTIATE(embedding_backward)

}  // namespace srgpt::cpu
