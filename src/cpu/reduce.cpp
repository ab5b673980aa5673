// Whole-buffer reductions: loss sums, squared norms, finiteness.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"

namespace srgpt::cpu {

namespace {

// Fixed-size chunks summed in parallel, partials added in chunk order: the
// result is the same for any thread count.
constexpr size_t kChunk = size_t(1) << 14;
// Independent accumulators inside a chunk let the loop vectorise without
// reassociating any one sum.
constexpr int kLanes = 8;

template <typename Term>
double chunked_sum(size_t n, Term term) {
  const int64_t chunks = int64_t((n + kChunk - 1) / kChunk);
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const size_t begin = size_t(chunk) * kChunk, end = std::min(n, begin + kChunk);
    double lanes[kLanes] = {};
    size_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += term(i + l);
    for (int l = 0; i < end; ++i, ++l) lanes[l] += term(i);
    double sum = 0;
    for (double lane : lanes) sum += lane;
    partial[chunk] = sum;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

template <typename A>
double sum_accum(const A* x, size_t n) {
  return chunked_sum(n, [x](size_t i) { return double(x[i]); });
}

template <typename S>
double sum_squares(const S* x, size_t n) {
  return chunked_sum(n, [x](size_t i) {
    double v = load(x[i]);
    return v * v;
  });
}

template <typename S>
bool all_finite(const S* x, size_t n) {
  bool finite = true;
#pragma omp parallel for schedule(static) reduction(&& : finite)
  for (int64_t i = 0; i < int64_t(n); ++i) finite = finite && std::isfinite(load(x[i]));
  return finite;
}

template double sum_accum<float>(const float*, size_t);
template double sum_accum<double>(const double*, size_t);
SRGPT_CPU_INSTANTIATE(sum_squares)
SRGPT_CPU_INSTANTIATE(all_finite)

}  // namespace srgpt::cpu
